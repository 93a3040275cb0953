"""Advertising: the E86's name ("E86 5894" = model, space, last two MAC bytes in hex) and
Yucheng's manufacturer data company id."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from e86.constants import COMPANY_ID, MODEL, NAME_PREFIX

_MAC_RE: Final = re.compile(r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")
_NAME_RE: Final = re.compile(r"^(?P<model>\S+) (?P<suffix>[0-9A-F]{4})$")


def is_e86_name(name: str | None) -> bool:
    """True for an advertised name starting with "E86" (e.g. "E86 5894")."""
    return bool(name) and name is not None and name.startswith(NAME_PREFIX)


def advertised_name(model: str, mac: str) -> str:
    """``advertised_name("E86", "D0:61:AE:D4:58:94")`` → ``"E86 5894"``."""
    if not _MAC_RE.fullmatch(mac):
        raise ValueError(f"not a MAC address: {mac!r}")
    digits = re.sub(r"[^0-9A-Fa-f]", "", mac).upper()
    return f"{model} {digits[-4:]}"


def parse_advertised_name(name: str) -> tuple[str, str] | None:
    """``"E80DL 6B56"`` → ``("E80DL", "6B56")``; None if the name has not that shape."""
    m = _NAME_RE.fullmatch(name)
    return (m["model"], m["suffix"]) if m else None


def name_matches_mac(name: str, mac: str) -> bool:
    """Whether the name's suffix is the MAC's last two bytes (a sanity check when pairing)."""
    parsed = parse_advertised_name(name)
    return parsed is not None and advertised_name(parsed[0], mac) == name


def is_yucheng(manufacturer_data: Mapping[int, bytes]) -> bool:
    """Whether the advertisement carries Yucheng's company id (0x7810, unconfirmed)."""
    return COMPANY_ID in manufacturer_data


def default_name(mac: str) -> str:
    """The name an E86 with this MAC advertises."""
    return advertised_name(MODEL, mac)
