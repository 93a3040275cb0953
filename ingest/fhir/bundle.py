"""Transaction Bundles from units: batched, every entry a conditional create.

Entries that several units share (the patient's Patient, the watch's Device) appear once per
Bundle. A logical reference (``{"type", "identifier"}``) whose target travels in the same Bundle
gains its ``urn:uuid:`` (the target entry's ``fullUrl``), which the server rewrites to the
created or found resource's id; a reference to a resource outside the Bundle stays logical.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any, Final

from ingest.fhir.resources import Entry, Json, Unit

#: default of ``fhir_batch``: entries (Patients and Devices included) in one transaction. Medplum
#: refuses a transaction holding a conditional create and more than 8 entries ("requires strict
#: isolation but has too many entries"); one reading message is at most 8 (Patient, watch,
#: gateway, five Observations), so it always fits. Servers without that cap take more.
DEFAULT_BATCH: Final = 8
#: Bundle.entry order: what is referred to first (servers reorder creates anyway).
_ORDER: Final = {"Patient": 0, "Device": 1, "Observation": 2}


def distinct_entries(units: Iterable[Unit]) -> list[Entry]:
    seen: dict[tuple[str, str, str], Entry] = {}
    for u in units:
        for e in u.entries:
            seen.setdefault(e.key, e)
    return sorted(seen.values(), key=lambda e: _ORDER.get(e.resource_type, 9))


def pack(units: Sequence[Unit], max_entries: int = DEFAULT_BATCH) -> list[list[Unit]]:
    """Consecutive units (their order kept) → batches of at most ``max_entries`` distinct
    entries. A unit larger than that alone goes in a batch of its own (a unit is never split:
    its Observations refer to its Patient and Devices)."""
    if max_entries < 1:
        raise ValueError(f"max_entries must be >= 1, got {max_entries}")
    batches: list[list[Unit]] = []
    current: list[Unit] = []
    keys: set[tuple[str, str, str]] = set()
    for u in units:
        mine = {e.key for e in u.entries}
        if current and len(keys | mine) > max_entries:
            batches.append(current)
            current, keys = [], set()
        current.append(u)
        keys |= mine
    if current:
        batches.append(current)
    return batches


def _link(node: Any, urls: dict[tuple[str, str, str], str]) -> None:
    if isinstance(node, dict):
        ident = node.get("identifier")
        kind = node.get("type")
        if isinstance(kind, str) and isinstance(ident, dict) and "reference" not in node:
            url = urls.get((kind, str(ident.get("system")), str(ident.get("value"))))
            if url is not None:
                node["reference"] = url
        for value in node.values():
            _link(value, urls)
    elif isinstance(node, list):
        for item in node:
            _link(item, urls)


def transaction(units: Iterable[Unit]) -> Json:
    """One transaction Bundle of the units' distinct entries, references linked."""
    entries = distinct_entries(units)
    if not entries:
        raise ValueError("a transaction needs at least one entry")
    urls = {e.key: e.full_url for e in entries}
    out: list[Json] = []
    for e in entries:
        resource = copy.deepcopy(e.resource)
        _link(resource, urls)
        out.append({"fullUrl": e.full_url, "resource": resource,
                    "request": {"method": "POST", "url": e.resource_type,
                                "ifNoneExist": e.if_none_exist}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": out}


def keys_in(bundle: Json) -> list[tuple[str, str, str]]:
    """(resourceType, system, value) of each entry of a Bundle this module built, in order."""
    out = []
    for entry in bundle.get("entry", []):
        res = entry["resource"]
        ident = res["identifier"][0]
        out.append((res["resourceType"], ident["system"], ident["value"]))
    return out
