"""Gap tracking's cost in the group commit: ``store.commit_batch`` with and without
``ingest.gaps.observe``, same batches, same run (issue 12).

    python -m benchmarks.gap_tracking            # 40 batches of 500 readings over 500 devices
    python -m benchmarks.gap_tracking --quick    # 10 batches

Each configuration is run three times on a fresh SQLite file (synchronous=NORMAL) and the best
rate is kept; the ratio "with / without" is the figure (in-order seqs: the common case, one
stream per device, every batch touches up to 500 streams).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ingest import gaps, store
from vitalgate.contract import Reading, Vitals

T0 = 1_700_000_000_000
STREAM = "0123456789abcdef"
DEVICES = 500
PER_BATCH = 500


def _rate(track: bool, per_message: int, batches: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = store.Database(Path(tmp) / "ingest.sqlite3", synchronous="NORMAL")
        original = gaps.observe
        if not track:
            gaps.observe = lambda conn, arrivals, now: gaps.Update()  # type: ignore[assignment]
        try:
            devices = [f"d061ae{i:06x}" for i in range(DEVICES)]
            seq = dict.fromkeys(devices, 0)
            spent, n = 0.0, 0
            for b in range(batches):
                items: list[store.Item] = []
                for k in range(PER_BATCH // per_message):
                    device = devices[(b * PER_BATCH // per_message + k) % DEVICES]
                    readings = []
                    for _ in range(per_message):
                        readings.append(Reading(
                            device_id=device, seq=seq[device], ts=T0 + seq[device], stream=STREAM,
                            user_code="P" + device[-4:],
                            vitals=Vitals(heart_rate=70, spo2=97, respiratory_rate=16)))
                        seq[device] += 1
                    items.append(store.ReadingsIn("gw", device, readings, T0))
                    n += per_message
                start = time.perf_counter()
                db.write_sync(lambda c, batch=items: store.commit_batch(c, batch, now=T0, holder="bench"))
                spent += time.perf_counter() - start
            return n / spent
        finally:
            gaps.observe = original
            db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    batches = 10 if args.quick else 40
    for per_message in (1, 10):
        without = max(_rate(False, per_message, batches) for _ in range(3))
        with_ = max(_rate(True, per_message, batches) for _ in range(3))
        print(f"commit_batch, {per_message} reading(s) per message, {PER_BATCH} readings per batch"
              f" over {DEVICES} devices: with gap tracking {with_:,.0f} readings/s, without"
              f" {without:,.0f} readings/s, ratio {with_ / without:.2f}")


if __name__ == "__main__":
    main()
