"""E86 frames: CRC, encoding, strict decoding, reassembly across indications, resync."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e86.constants import MAX_FRAME, Group
from e86.errors import CrcError, E86Error, FrameError, LengthError, TruncatedFrame
from e86.frame import Frame, FrameAssembler, crc16_ccitt_false, split_for_mtu

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=300)

frames_st = st.builds(
    Frame,
    group=st.integers(0, 255),
    key=st.integers(0, 255),
    payload=st.binary(max_size=300),
)
#: frames of the protocol's groups (only these can start a frame while resynchronising).
known_frames_st = st.builds(
    Frame,
    group=st.sampled_from([int(g) for g in Group]),
    key=st.integers(0, 255),
    payload=st.binary(max_size=300),
)


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1
    assert crc16_ccitt_false(b"") == 0xFFFF


def _bitwise_crc(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


@FUZZ
@given(st.binary(max_size=200))
def test_crc_matches_bitwise_definition(data: bytes) -> None:
    assert crc16_ccitt_false(data) == _bitwise_crc(data)


def test_frame_layout() -> None:
    raw = bytes(Frame(0x02, 0x00, b"\x47\x43"))
    assert raw[:4] == bytes([0x02, 0x00, 0x08, 0x00])  # length = payload + 6, LE
    assert raw[4:6] == b"GC"
    assert int.from_bytes(raw[6:], "little") == crc16_ccitt_false(raw[:6])
    assert len(Frame(0x02, 0x00, b"GC")) == 8


@FUZZ
@given(frames_st)
def test_frame_round_trip(frame: Frame) -> None:
    assert Frame.from_bytes(bytes(frame)) == frame


def test_frame_errors_name_the_problem() -> None:
    good = bytes(Frame(0x06, 0x01, b"\x48"))
    with pytest.raises(TruncatedFrame, match="shorter than the 6-byte minimum"):
        Frame.from_bytes(good[:5])
    with pytest.raises(TruncatedFrame, match="announces 7 bytes, only 6"):
        Frame.from_bytes(good[:6])
    with pytest.raises(LengthError, match="1 trailing"):
        Frame.from_bytes(good + b"\x00")
    with pytest.raises(LengthError, match="length field 3"):
        Frame.from_bytes(b"\x06\x01\x03\x00\x00\x00")
    bad = bytearray(good)
    bad[4] ^= 0x01
    with pytest.raises(CrcError, match="CRC mismatch in frame 06 01"):
        Frame.from_bytes(bytes(bad))
    with pytest.raises(FrameError, match="group must be"):
        Frame(256, 0)
    with pytest.raises(LengthError, match="exceeds the maximum"):
        Frame(1, 1, bytes(MAX_FRAME))


@FUZZ
@given(st.binary(max_size=64))
def test_from_bytes_random_bytes_only_typed_errors(data: bytes) -> None:
    try:
        frame = Frame.from_bytes(data)
    except E86Error:
        return
    assert bytes(frame) == data


def _mutate(raw: bytearray, data: st.DataObject, mutation: str, *, keep: int) -> None:
    """``raw`` changed in place by ``mutation``: "flip" one bit, "truncate" after at least
    ``keep`` bytes, "insert" 1-4 bytes anywhere, "insert_after" 1-8 bytes at the end."""
    if mutation == "flip":
        bit = data.draw(st.integers(0, len(raw) * 8 - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
    elif mutation == "truncate":
        del raw[data.draw(st.integers(keep, len(raw) - 1)) :]
    elif mutation == "insert":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    else:
        assert mutation == "insert_after", mutation
        raw += data.draw(st.binary(min_size=1, max_size=8))


@FUZZ
@given(frames_st, st.data())
def test_from_bytes_mutations_are_rejected(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(bytes(frame))
    _mutate(raw, data, data.draw(st.sampled_from(["flip", "truncate", "insert"])), keep=0)
    # CRC-16 detects every single-bit error; truncation and insertion break the length.
    with pytest.raises(E86Error):
        Frame.from_bytes(bytes(raw))


def _chunks(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


@FUZZ
@given(st.lists(frames_st, max_size=12), st.lists(st.integers(0, 10_000), max_size=30))
def test_assembler_any_chunking_reassembles_exactly(frames: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(bytes(f) for f in frames)
    asm = FrameAssembler()
    out: list[Frame] = []
    for chunk in _chunks(stream, cuts):
        out += asm.feed(chunk)
    assert out == frames
    assert asm.pending == 0
    assert asm.stats.as_dict() == {
        "frames": len(frames), "crc_errors": 0, "length_errors": 0, "truncated": 0,
        "resyncs": 0, "bytes_dropped": 0,
    }


@FUZZ
@given(
    st.lists(known_frames_st, min_size=1, max_size=8),
    st.data(),
    st.lists(st.integers(0, 10_000), max_size=20),
)
def test_assembler_corrupted_frame_loses_only_itself(
    frames: list[Frame], data: st.DataObject, cuts: list[int]
) -> None:
    victim = data.draw(st.integers(0, len(frames) - 1))
    raw = bytearray(bytes(frames[victim]))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "insert_after"]))
    _mutate(raw, data, mutation, keep=1)
    stream = b"".join(
        bytes(raw) if i == victim else bytes(f) for i, f in enumerate(frames)
    )
    asm = FrameAssembler()
    out: list[Frame] = []
    for chunk in _chunks(stream, cuts):
        out += asm.feed(chunk)
    out += asm.flush()
    expected = frames[:victim] + frames[victim + 1 :]
    if mutation == "insert_after":
        expected.insert(victim, frames[victim])  # the frame itself is intact, garbage follows
    assert out == expected
    assert asm.pending == 0
    if mutation != "insert_after":
        s = asm.stats
        assert s.crc_errors + s.length_errors + s.truncated >= 1
        assert s.bytes_dropped >= len(raw) - len(bytes(frames[victim])) + 1 or s.bytes_dropped >= 1


def test_assembler_bad_crc_counted_and_next_frame_kept() -> None:
    a, b, c = Frame(6, 1, b"\x48"), Frame(6, 2, b"\x61"), Frame(6, 7, b"\x10")
    bad = bytearray(bytes(b))
    bad[4] ^= 0xFF
    asm = FrameAssembler()
    assert asm.feed(bytes(a) + bytes(bad) + bytes(c)) == [a, c]
    assert asm.stats.crc_errors == 1
    assert asm.stats.resyncs == 1
    assert asm.stats.bytes_dropped == len(bad)
    assert asm.stats.frames == 2


def test_assembler_garbage_length_resyncs() -> None:
    good = Frame(6, 1, b"\x48")
    asm = FrameAssembler()
    # length field 0xFFFF at a frame start, garbage, then a good frame
    assert asm.feed(b"\x06\x01\xff\xff\xaa\xbb\x00\x00" + bytes(good)) == [good]
    assert asm.stats.length_errors == 1  # counted once per loss of sync
    assert asm.stats.resyncs == 1
    assert asm.stats.bytes_dropped == 8
    # a length below 6 is as bad
    assert asm.feed(b"\x06\x01\x05\x00" + bytes(good)) == [good]
    assert asm.stats.length_errors == 2
    assert asm.stats.bytes_dropped == 12


def test_assembler_resync_prefers_a_verified_frame_over_a_guess() -> None:
    good = Frame(6, 1, b"\x48")
    asm = FrameAssembler()
    # after the bad length 2, "01 00 02 ..." looks like the start of a 512-byte frame of
    # group 01; the complete good frame behind it wins over that guess.
    assert asm.feed(b"\x06\x01\x02\x00\x01\x00\x02" + bytes(good)) == [good]
    assert asm.stats.bytes_dropped == 7


def test_assembler_out_of_sync_guess_waits_until_flush() -> None:
    good = Frame(6, 1, b"\x48")
    asm = FrameAssembler()
    # nothing verifiable behind the guess yet: the assembler waits for more bytes...
    assert asm.feed(b"\x06\x01\x02\x00\x01\x00\x02" + bytes(good)[:5]) == []
    assert asm.pending == 11
    # ...the rest of the good frame arrives and is verified
    assert asm.feed(bytes(good)[5:]) == [good]
    # a guess with nothing behind it is given up by flush (disconnect, idle gap)
    assert asm.feed(b"\x00\x00\x02\x00\x01\x00\x02") == []
    assert asm.flush() == []
    assert asm.pending == 0
    assert asm.stats.bytes_dropped == 14


def test_assembler_split_over_indications() -> None:
    frame = Frame(6, 5, bytes(range(200)))
    asm = FrameAssembler()
    parts = split_for_mtu(bytes(frame), 20)
    assert [len(p) for p in parts] == [20] * 10 + [6]
    for part in parts[:-1]:
        assert asm.feed(part) == []
    assert asm.pending == 200
    assert asm.feed(parts[-1]) == [frame]


def test_assembler_flush_and_reset_count_dropped_bytes() -> None:
    frame = Frame(6, 1, b"\x48")
    asm = FrameAssembler()
    assert asm.feed(bytes(frame)[:5]) == []
    asm.reset()
    assert asm.pending == 0
    assert asm.stats.bytes_dropped == 5
    assert asm.feed(bytes(frame)) == [frame]
    assert asm.feed(bytes(frame)[:3]) == []
    assert asm.flush() == []
    assert asm.stats.truncated == 1
    assert asm.stats.bytes_dropped == 8


def test_assembler_max_frame_option() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        FrameAssembler(max_frame=5)
    asm = FrameAssembler(max_frame=16)
    big, small = Frame(6, 5, bytes(20)), Frame(6, 1, b"\x48")
    assert asm.feed(bytes(big) + bytes(small)) == [small]
    assert asm.stats.length_errors == 1


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 10_000), max_size=10))
def test_assembler_random_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    asm = FrameAssembler()
    out: list[Frame] = []
    for chunk in _chunks(data, cuts):
        out += asm.feed(chunk)
    out += asm.flush()
    assert asm.pending == 0
    assert sum(len(f) for f in out) + asm.stats.bytes_dropped == len(data)


def test_split_for_mtu() -> None:
    assert split_for_mtu(b"abcdefg", 3) == [b"abc", b"def", b"g"]
    assert split_for_mtu(b"", 20) == []
    with pytest.raises(ValueError, match="att_payload"):
        split_for_mtu(b"x", 0)
