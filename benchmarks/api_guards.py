"""REST input guards: what the body depth check and the key check cost, against baselines
measured in the same run.

Run: ``python -m benchmarks.api_guards``. Prints, for a 1 MiB JSON body (a bulk device import of
~7,000 objects, the largest body aiohttp accepts), the time of ``contract.json_depth`` (the depth guard of REST bodies and MQTT payloads) and
of ``json.loads`` (the parse it guards) and their ratio; the same for a 1 MiB body of 500,000
nested brackets (the hostile case, which ``json.loads`` refuses with RecursionError); and the
cost of a cached key check (``KeyChecker.cached``) against one SHA-256 of the key.
"""

from __future__ import annotations

import hashlib
import json
import time

from benchmarks.timing import best_of
from ingest.keys import KeyChecker, Principal
from vitalgate.contract import json_depth

MIB = 1024 * 1024
REPEATS = 15


def device_body(size: int = MIB) -> str:
    """A bulk device import of about ``size`` bytes."""
    item = {"device_name": "E86 0000", "device_mac": "D0:61:AE:D4:58:94", "device_type": "CONSUMER",
            "device_holder": "RS Harapan", "user_code": "AMSe5Sn8Gkxj7"}
    n = size // (len(json.dumps(item)) + 2)
    return json.dumps([{**item, "device_name": f"E86 {i:04x}"} for i in range(n)])


def main() -> None:
    body = device_body()
    parse = best_of(lambda: json.loads(body), REPEATS)
    scan = best_of(lambda: json_depth(body, None), REPEATS)
    print(f"1 MiB device body ({len(body):,} chars): json.loads {parse * 1e3:.1f} ms, "
          f"json_depth {scan * 1e3:.1f} ms, ratio {scan / parse:.1f}x")
    hostile = "[" * (MIB // 2) + "]" * (MIB // 2)
    scan_h = best_of(lambda: json_depth(hostile, None), REPEATS)
    print(f"1 MiB of nested brackets: json_depth {scan_h * 1e3:.1f} ms "
          f"(json.loads raises RecursionError), ratio to the device-body parse {scan_h / parse:.1f}x")
    key = "vg_" + "x" * 43
    checker = KeyChecker(None)
    checker.remember(key, Principal("k", frozenset({"read"})))
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        checker.cached(key)
    cached = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        hashlib.sha256(key.encode()).digest()
    sha = (time.perf_counter() - t0) / n
    print(f"cached key check {cached * 1e6:.2f} us vs one SHA-256 {sha * 1e6:.2f} us, "
          f"ratio {cached / sha:.1f}x")


if __name__ == "__main__":
    main()
