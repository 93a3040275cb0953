"""The HL7 channel: what the service hands it (committed readings, emitted EWS points) becomes
built messages to enqueue, and each attempt's delivery becomes a verdict.

Which items become messages:

* every committed reading with a patient (``user_code``): one ORU^R01 per reading (device,
  event time); a reading without a patient is counted (``skipped{no_patient}``), not sent;
* every EWS point the engine emitted and that is valid (``source = vitalgate``): points posted
  by an external system (POST /ews) came from elsewhere and are not sent back out.

The ward (PV1-3) of a reading is its gateway's (settings ``roaming_groups``); of a point, the
ward of the patient's latest reading seen by this process (none after a restart until a
reading arrives). An item that cannot be built is counted by reason and logged without
patient data; it never stops the others.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final

from hl7apy.exceptions import HL7apyException

from ingest.db.readings import StoredReading
from ingest.ews_engine import EwsPoint
from ingest.hl7.oru import (
    BuildError,
    DeviceInfo,
    Hl7Message,
    OruConfig,
    ScoreItem,
    build_reading,
    build_score,
    group_readings,
)
from ingest.hl7.transport import AckPolicy, Delivery, Outcome
from ingest.outbox import Verdict

log = logging.getLogger(__name__)

NAME: Final = "hl7"
#: patients whose latest ward is remembered (for the PV1 of their scores); beyond this many
#: the least recently seen is forgotten (its next score has no PV1 until its next reading).
MAX_PATIENTS: Final = 100_000
#: rows whose AE answers are counted at once (the AE bound): one per patient in flight.
MAX_TRACKED: Final = 100_000


class Hl7Channel:
    def __init__(self, config: OruConfig, *, ward_of: Mapping[str, str] | None = None,
                 clock: Callable[[], int], policy: AckPolicy | None = None) -> None:
        self.config = config
        self.ward_of = dict(ward_of or {})
        self.clock = clock
        self.policy = policy or AckPolicy()
        #: readings and points are built in worker threads: one lock over this state
        self._lock = threading.Lock()
        self._ward_of_patient: OrderedDict[str, str] = OrderedDict()
        self._errors: OrderedDict[str, int] = OrderedDict()  # control id → AE answers
        self.built = 0
        self.skipped: dict[str, int] = {}
        self.outcomes: dict[str, int] = {o.value: 0 for o in Outcome}
        self.failed_after_errors = 0

    # ---------------------------------------------------------------- building

    def _skip(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    def readings(self, rows: Sequence[StoredReading],
                 devices: Mapping[str, DeviceInfo] | None = None) -> list[Hl7Message]:
        """Messages of committed reading rows, in row order."""
        no_patient = sum(1 for r in rows if not r.user_code)
        if no_patient:
            self._skip("no_patient", no_patient)  # rows (vitals), not readings
        now = self.clock()
        out = []
        for g in group_readings(rows, ward_of=self.ward_of, devices=devices):
            if g.ward:
                self._remember(g.user_code, g.ward)
            msg = self._build(partial(build_reading, g, self.config, now))
            if msg is not None:
                out.append(msg)
        return out

    def points(self, points: Iterable[EwsPoint]) -> list[Hl7Message]:
        """Messages of emitted EWS points."""
        now = self.clock()
        out = []
        for p in points:
            if p.source != "vitalgate":
                self._skip("external_point")
                continue
            if not p.valid:
                self._skip("invalid_point")
                continue
            with self._lock:
                ward = self._ward_of_patient.get(p.user_code)
            item = ScoreItem(p, history_id=p.id, ward=ward)
            msg = self._build(partial(build_score, item, self.config, now))
            if msg is not None:
                out.append(msg)
        return out

    def render_point(self, point: EwsPoint) -> str | None:
        """``EwsEngine.add_channel``'s render: the message text of one emitted point, or None
        (not sent; counted). Called in the engine's store transaction, in a worker thread."""
        try:
            messages = self.points([point])
        except Exception:  # never fail the engine's transaction (every channel's point) for HL7
            self._skip("error")
            log.exception("HL7: a point could not be rendered")
            return None
        return messages[0].er7 if messages else None

    def _build(self, fn: Callable[[], Hl7Message]) -> Hl7Message | None:
        try:
            msg = fn()
        except BuildError as exc:
            self._skip(exc.reason)
            log.warning("HL7: an item was not sent (%s)", exc.reason)
            return None
        except (HL7apyException, ValueError) as exc:  # a value the v2.6 structure refuses
            self._skip("invalid")
            log.warning("HL7: an item was not sent: %s", type(exc).__name__)
            return None
        with self._lock:
            self.built += 1
        return msg

    def _remember(self, user_code: str, ward: str) -> None:
        with self._lock:
            self._ward_of_patient[user_code] = ward
            self._ward_of_patient.move_to_end(user_code)
            while len(self._ward_of_patient) > MAX_PATIENTS:
                self._ward_of_patient.popitem(last=False)

    # ---------------------------------------------------------------- delivery

    def judge(self, control_id: str, delivery: Delivery) -> Verdict:
        """The outbox verdict of one attempt, counting outcomes and, per message, its AE
        answers (kept in memory: a restart gives an item its AE chances again, never fewer)."""
        self.outcomes[delivery.outcome.value] += 1
        if delivery.outcome is Outcome.APP_ERROR:
            errors = self._errors.pop(control_id, 0) + 1
            verdict = self.policy.verdict(delivery, errors)
            if verdict is Verdict.RETRY_ITEM:
                self._errors[control_id] = errors
                while len(self._errors) > MAX_TRACKED:
                    self._errors.popitem(last=False)
            else:
                self.failed_after_errors += 1
                log.warning("HL7: message %s failed after %d AE answers", control_id, errors)
            return verdict
        if delivery.outcome is not Outcome.UNAVAILABLE:
            self._errors.pop(control_id, None)
            if delivery.outcome is Outcome.REJECTED:
                log.warning("HL7: message %s rejected (AR) by the receiver", control_id)
        return self.policy.verdict(delivery, 0)

    def stats(self) -> dict[str, int]:
        return {"built": self.built, **{f"skipped_{k}": v for k, v in self.skipped.items()},
               **{f"ack_{k.replace('-', '_')}": v for k, v in self.outcomes.items()},
                "failed_after_errors": self.failed_after_errors}


def device_labels(conn: Any, device_ids: Iterable[str]) -> dict[str, DeviceInfo]:
    """Registered name and model of each device (read in the caller's connection)."""
    from ingest.db import registry
    from vitalgate.contract import mac_from_device_id

    ids = sorted(set(device_ids))
    if not ids:
        return {}
    by_mac = {mac_from_device_id(d): d for d in ids}
    return {by_mac[mac]: DeviceInfo(name=name, model=model)
            for mac, name, model in registry.labels(conn, by_mac) if mac in by_mac}
