"""E86 protocol codec benchmark: what one gateway core can parse, against baselines.

Run: ``python -m benchmarks.e86_protocol`` (``--seconds`` of traffic to simulate).

Measures, in one run:
- ``FrameAssembler`` on a realistic watch stream (real-time HR/BP frames, ECG frames of 120
  samples at 250 Hz, history record frames) split into 20-byte (MTU 23) and 244-byte (MTU 247)
  indications: frames/s, MB/s, and the ratio against the same assembler using a pure-Python
  bitwise CRC-16 (the baseline the C ``binascii.crc_hqx`` replaces);
- ECG decode (``decode_realtime`` on ``06 05`` frames): samples/s vs a numpy vectorised decode
  baseline, and how many watches' worth of 250 Hz ECG one core decodes;
- ``HistoryReceiver``: records/s for a 2,000-record heart-rate sync.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import e86.frame as frame_module
from e86.constants import ECG_SAMPLE_RATE, HistoryKind
from e86.frame import Frame, FrameAssembler, split_for_mtu
from e86.history_builder import history_reply
from e86.history_receiver import HistoryReceiver
from e86.realtime import (
    EcgSamples,
    decode_realtime,
    ecg_frames,
    realtime_blood_pressure,
    realtime_heart_rate,
)
from e86.records import HeartRateRecord


def bitwise_crc(data: bytes | bytearray | memoryview) -> int:
    crc = 0xFFFF
    for byte in bytes(data):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def watch_stream(seconds: int) -> list[Frame]:
    """One watch for ``seconds``: ECG at 250 Hz, HR every second, BP every 10 s, plus a
    100-record history block."""
    rng = np.random.default_rng(0)
    samples = rng.integers(-(2**20), 2**20, seconds * ECG_SAMPLE_RATE).tolist()
    ecg = ecg_frames(samples, per_frame=120)
    frames: list[Frame] = list(ecg)
    frames += [realtime_heart_rate(60 + i % 40).to_frame() for i in range(seconds)]
    frames += [realtime_blood_pressure(120, 80, 72, hrv=40, spo2=97, temperature=36.6).to_frame()
               for _ in range(seconds // 10)]
    _, blocks = history_reply(HistoryKind.HEART_RATE,
                              [HeartRateRecord(i * 60, 0, 70) for i in range(100)])
    frames += [f for b in blocks for f in b]
    return frames


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def assemble(chunks: list[bytes]) -> int:
    asm = FrameAssembler()
    n = 0
    for c in chunks:
        n += len(asm.feed(c))
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120, help="seconds of watch traffic")
    args = parser.parse_args()

    frames = watch_stream(args.seconds)
    stream = b"".join(bytes(f) for f in frames)
    print(f"stream: {len(frames)} frames, {len(stream) / 1e6:.2f} MB "
          f"({args.seconds} s of one watch incl. ECG)")
    for mtu in (23, 247):
        chunks = [c for f in frames for c in split_for_mtu(bytes(f), mtu - 3)]
        assert assemble(chunks) == len(frames)
        fast = timed(lambda chunks=chunks: assemble(chunks))  # type: ignore[misc]
        original = frame_module.crc16_ccitt_false
        frame_module.crc16_ccitt_false = bitwise_crc
        try:
            slow = timed(lambda chunks=chunks: assemble(chunks), repeat=1)  # type: ignore[misc]
        finally:
            frame_module.crc16_ccitt_false = original
        print(f"assembler MTU {mtu:3d}: {len(frames) / fast:,.0f} frames/s, "
              f"{len(stream) / fast / 1e6:.1f} MB/s; pure-Python CRC baseline "
              f"{len(frames) / slow:,.0f} frames/s; ratio {slow / fast:.1f}x; "
              f"{len(stream) / fast / (len(stream) / args.seconds):,.0f} watches' worth")

    ecg = [f for f in frames if f.key == 0x05 and f.group == 0x06]
    n_samples = sum(len(f.payload) // 3 for f in ecg)

    def decode_all() -> None:
        for f in ecg:
            decode_realtime(f)

    def numpy_decode() -> None:
        for f in ecg:
            b = np.frombuffer(f.payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            np.where(v >= 1 << 23, v - (1 << 24), v)

    check = EcgSamples.from_payload(ecg[0].payload).samples
    b = np.frombuffer(ecg[0].payload, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    assert list(np.where(v >= 1 << 23, v - (1 << 24), v)) == list(check)
    t_py, t_np = timed(decode_all), timed(numpy_decode)
    print(f"ECG decode: {n_samples / t_py / 1e6:.2f} M samples/s "
          f"({n_samples / t_py / ECG_SAMPLE_RATE:,.0f} watches at 250 Hz); numpy baseline "
          f"{n_samples / t_np / 1e6:.2f} M samples/s; ratio numpy/ours {t_py / t_np:.2f}x")

    records = [HeartRateRecord(i * 60, 0, 60 + i % 40) for i in range(2000)]
    header, blocks = history_reply(HistoryKind.HEART_RATE, records, records_per_frame=20,
                                   records_per_block=100)
    hist_frames = [header.to_frame()] + [f for blk in blocks for f in blk]

    def sync() -> None:
        rx = HistoryReceiver(HistoryKind.HEART_RATE)
        got = 0
        for f in hist_frames:
            got += len(rx.feed(f).records)
        assert got == len(records) and rx.done

    t_sync = timed(sync)
    print(f"history sync: {len(records) / t_sync:,.0f} records/s (2,000 heart-rate records, "
          f"{len(blocks)} blocks)")


if __name__ == "__main__":
    main()
