"""How many virtual E86 watches one process sustains over bumble, through the bleak backend.

Each watch measures once per second with real-time upload on (06 03 + 06 07 per reading);
watch 0 also streams live ECG at 250 Hz (50-sample frames). One bleak central (the bumble
backend) is connected and subscribed to every watch. For N = 5, 10, 20, 40 … it measures
delivered readings/s against the expected N/s, ECG samples/s against 250, and process CPU %.
Baseline in the same run: the same frames through the protocol codec alone (encode → split to
the MTU → reassemble → decode), frames/s.

Run: python -m benchmarks.virtual_watches [--seconds 5] [--counts 5,10,20,40]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bleak import BleakClient, BleakScanner
from bleak_retry_connector import establish_connection

from e86.commands import RealtimeUpload, ecg_start_sequence
from e86.constants import Group, RealtimeKey
from e86.frame import FrameAssembler, split_for_mtu
from e86.realtime import decode_realtime
from simulators.bleak_bumble import BumbleLink
from simulators.watch import VirtualE86, encode
from simulators.watch.central import FrameCentral

ATT_PAYLOAD = 244  # MTU 247 − 3


def codec_baseline(seconds: float) -> float:
    """Frames/s through encode → split → reassemble → decode, without BLE."""
    m = encode.WatchSample(0, 72, 97, 120, 80, 36.7, 15)
    frames = [
        encode.realtime(RealtimeKey.BLOOD_PRESSURE, m).to_frame(),
        encode.ecg(range(50)).to_frame(),
    ]
    assembler = FrameAssembler()
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for frame in frames:
            for piece in split_for_mtu(bytes(frame), ATT_PAYLOAD):
                for got in assembler.feed(piece):
                    decode_realtime(got)
                    n += 1
    return n / seconds


async def run_fleet(n: int, seconds: float) -> dict[str, float]:
    async with BumbleLink() as link:
        watches = [
            VirtualE86(
                link, f"D0:61:AE:00:{i // 256:02X}:{i % 256:02X}", realtime_interval_s=1.0, seed=i
            )
            for i in range(n)
        ]
        for w in watches:
            await w.start()
        centrals: list[FrameCentral] = []
        clients: list[BleakClient] = []
        try:
            for w in watches:
                device = await BleakScanner.find_device_by_address(
                    w.address, timeout=10, backend=link.scanner_backend
                )
                assert device is not None, w.name
                client = await establish_connection(
                    BleakClient, device, w.name, backend=link.client_backend
                )
                clients.append(client)
                central = FrameCentral(client)
                await central.start()
                await central.request(RealtimeUpload(True).to_frame())
                centrals.append(central)
            for step in ecg_start_sequence():
                await centrals[0].request(step)
            counts = {"readings": 0, "ecg": 0}

            async def drain(c: FrameCentral) -> None:
                async for _, frame in c:
                    if frame.group == Group.REALTIME and frame.key == RealtimeKey.BLOOD_PRESSURE:
                        counts["readings"] += 1
                    elif frame.group == Group.REALTIME and frame.key == RealtimeKey.ECG:
                        counts["ecg"] += len(frame.payload) // 3

            tasks = [asyncio.create_task(drain(c)) for c in centrals]
            await asyncio.sleep(1.5)  # settle
            counts["readings"] = counts["ecg"] = 0
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            got = dict(counts)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return {
                "n": n,
                "readings_s": got["readings"] / wall,
                "expected_s": float(n),
                "ecg_s": got["ecg"] / wall,
                "cpu_pct": 100.0 * cpu / wall,
                "indications_s": sum(w.stats.indications_sent for w in watches) / wall,
                "dropped": float(sum(w.stats.frames_dropped for w in watches)),
            }
        finally:
            for client in clients:
                await client.disconnect()
            for w in watches:
                await w.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--counts", default="5,10,20,40")
    args = parser.parse_args(argv)
    base = codec_baseline(min(args.seconds, 3.0))
    out = sys.stdout
    out.write(f"codec baseline (no BLE): {base:,.0f} frames/s\n")
    out.write(
        "N    readings/s  expected  ratio  ECG samples/s   CPU%  frames/s  "
        "frames/CPU-s  codec/BLE cost\n"
    )
    for n in (int(x) for x in args.counts.split(",")):
        r = asyncio.run(run_fleet(n, args.seconds))
        frames_s = r["readings_s"] * 2 + r["ecg_s"] / 50  # 06 03 + 06 07 per reading; ECG 50/frame
        per_cpu = frames_s / max(r["cpu_pct"] / 100.0, 1e-9)
        out.write(
            f"{n:<4}{r['readings_s']:>11.2f}{r['expected_s']:>10.0f}"
            f"{r['readings_s'] / r['expected_s']:>7.3f}{r['ecg_s']:>15.1f}{r['cpu_pct']:>7.1f}"
            f"{frames_s:>10.1f}{per_cpu:>14.0f}{base / per_cpu:>16.1f}x\n"
        )
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
