"""How long to wait before connecting to a watch again, by what went wrong — as data.

``rule_for(exc)`` walks the exception and its causes (bleak-retry-connector wraps bleak's
errors) and returns the first rule that matches. Every backoff is jittered
(:class:`vitalgate.backoff.Backoff`) so several watches that dropped together do not queue up on
the adapter in the same instant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bleak.exc import BleakDeviceNotFoundError, BleakError
from bleak_retry_connector import BleakNotFoundError, BleakOutOfConnectionSlotsError

from vitalgate.backoff import Backoff


@dataclass(frozen=True, slots=True)
class RetryRule:
    name: str
    matches: Callable[[BaseException], bool]
    backoff: Backoff
    why: str


def _text(*needles: str) -> Callable[[BaseException], bool]:
    return lambda exc: isinstance(exc, BleakError) and any(n in str(exc) for n in needles)


def _type(*types: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda exc: isinstance(exc, types)


#: first match wins; the last rule catches everything else.
RETRY_POLICY: Final[tuple[RetryRule, ...]] = (
    RetryRule(
        "not-found", _type(BleakDeviceNotFoundError, BleakNotFoundError),
        Backoff(initial_s=5.0, factor=2.0, max_s=60.0, jitter=0.3),
        "the watch is out of range or not advertising: a few seconds first (it may have just "
        "rebooted), then up to a minute — the scanner reports it as soon as it advertises again",
    ),
    RetryRule(
        "no-slots", lambda exc: (isinstance(exc, BleakOutOfConnectionSlotsError)
                                 or _text("CONNECTION_LIMIT_EXCEEDED", "Connection Limit Exceeded",
                                          "connection slot", "available connection")(exc)),
        Backoff(initial_s=10.0, factor=2.0, max_s=120.0, jitter=0.5),
        "the controller has no free connection slot (HCI 0x09 Connection Limit Exceeded, or "
        "bleak-retry-connector's out-of-slots texts): the slot pool now believes it has fewer "
        "slots, and this device waits for another one's session to end",
    ),
    RetryRule(
        "in-progress", _text("InProgress", "Operation already in progress"),
        Backoff(initial_s=0.5, factor=2.0, max_s=5.0, jitter=0.5),
        "BlueZ is still busy with another connect or discovery: it frees up within a second",
    ),
    RetryRule(
        "not-ready", _text("NotReady", "not ready", "No powered Bluetooth adapters"),
        Backoff(initial_s=5.0, factor=2.0, max_s=30.0, jitter=0.3),
        "the adapter is off or resetting (bluetoothd restart, rfkill): give it seconds, not ms",
    ),
    RetryRule(
        "bluez", _text("org.bluez.Error"),
        Backoff(initial_s=2.0, factor=2.0, max_s=30.0, jitter=0.5),
        "another BlueZ failure (Failed, NotConnected, AuthenticationFailed …): short retries, "
        "capped at half a minute",
    ),
    RetryRule(
        "timeout", _type(TimeoutError, asyncio.TimeoutError),
        Backoff(initial_s=2.0, factor=2.0, max_s=60.0, jitter=0.5),
        "the watch did not answer in time (weak signal, busy measuring): back off to a minute",
    ),
    RetryRule(
        "transport", _type(EOFError, BrokenPipeError, ConnectionError),
        Backoff(initial_s=1.0, factor=2.0, max_s=30.0, jitter=0.5),
        "the D-Bus / HCI transport dropped under us: it is usually back within a second",
    ),
    RetryRule(
        "other", lambda exc: True,
        Backoff(initial_s=2.0, factor=2.0, max_s=60.0, jitter=0.5),
        "anything else (including protocol errors during set-up): retry, at most once a minute",
    ),
)


#: failures that say the adapter is full: the slot pool learns from them (gateway/ble/slots.py).
SLOT_RULES: Final = frozenset({"no-slots"})
#: failures that do not point at stale BlueZ state, so they never lead to forget_device: the
#: adapter is full or off, the device is away, or BlueZ is merely busy.
STALE_EXEMPT: Final = frozenset({"no-slots", "not-found", "not-ready", "in-progress"})


def rule_for(exc: BaseException, policy: tuple[RetryRule, ...] = RETRY_POLICY) -> RetryRule:
    """The rule for ``exc`` or, failing a specific one, for its causes; else the last rule."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for rule in policy[:-1]:
        if any(rule.matches(e) for e in chain):
            return rule
    return policy[-1]
