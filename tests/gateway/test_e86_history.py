"""E86 history sync (group 0x05): record layouts, header, blocks, the sans-IO receiver."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from e86.constants import HISTORY_KINDS, BlockStatus, HistoryKind
from e86.errors import E86Error, PayloadError, UnknownMessage
from e86.frame import Frame, FrameAssembler, crc16_ccitt_false, split_for_mtu
from e86.history import BlockAck, BlockEnd, HistoryHeader, block_crc, decode_history
from e86.history_builder import history_frames, history_reply
from e86.history_receiver import HistoryReceiver
from e86.records import (
    AllRecord,
    BloodPressureRecord,
    HeartRateRecord,
    HistoryRecord,
    RawRecord,
    RecordBatch,
    Spo2Record,
    TemperatureRecord,
    decode_records,
)

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150)
ACCEPT = BlockAck(BlockStatus.ACCEPTED).to_frame()
RESEND = BlockAck(BlockStatus.RESEND).to_frame()


def test_kind_table() -> None:
    rows = {k: (r.request_key, r.record_key, r.delete_key, r.record_size) for k, r in HISTORY_KINDS.items()}
    assert rows == {
        HistoryKind.SPORT: (0x02, 0x11, 0x40, None),
        HistoryKind.SLEEP: (0x04, 0x13, 0x41, None),
        HistoryKind.HEART_RATE: (0x06, 0x15, 0x42, 6),
        HistoryKind.BLOOD_PRESSURE: (0x08, 0x17, 0x43, 8),
        HistoryKind.ALL: (0x09, 0x18, 0x44, 20),
        HistoryKind.SPO2: (0x1A, 0x22, 0x45, 6),
        HistoryKind.TEMPERATURE: (0x1E, 0x26, 0x47, 7),
    }


def test_record_layouts() -> None:
    t = bytes.fromhex("15d8e628")  # 0x28e6d815
    hr = HeartRateRecord.from_bytes(t + b"\x01\x48")
    assert hr == HeartRateRecord(0x28E6D815, 1, 72)
    assert hr.vitals() == {"heart_rate": 72.0}
    bp = BloodPressureRecord.from_bytes(t + bytes.fromhex("00 78 50 aa"))
    assert (bp.systolic, bp.diastolic, bp.unknown) == (120, 80, 0xAA)
    assert bp.vitals() == {"systolic_bp": 120.0, "diastolic_bp": 80.0}
    spo2 = Spo2Record.from_bytes(t + b"\x00\x00")
    assert spo2.vitals() == {}  # SpO2 0 = no value
    temp = TemperatureRecord.from_bytes(t + bytes.fromhex("00 24 07"))
    assert temp.temperature == 36.7
    assert TemperatureRecord.from_bytes(t + bytes.fromhex("00 24 0f")).vitals() == {}
    raw_all = t + bytes.fromhex("e803 48 78 50 61 10 28 05 24 06 0102030405")
    rec = AllRecord.from_bytes(raw_all)
    assert rec.steps == 1000
    assert (rec.hrv, rec.cvrr, rec.reserved) == (40, 5, bytes.fromhex("0102030405"))
    assert rec.vitals() == {
        "heart_rate": 72.0, "spo2": 97.0, "systolic_bp": 120.0, "diastolic_bp": 80.0,
        "temperature": 36.6, "respiratory_rate": 16.0,
    }
    assert bytes(rec) == raw_all
    with pytest.raises(PayloadError, match="heart-rate record is 6 bytes, got 5"):
        HeartRateRecord.from_bytes(t + b"\x01")
    with pytest.raises(PayloadError, match="t must be an integer"):
        HeartRateRecord(-1, 0, 60)


def test_decode_records_counts_truncated_record() -> None:
    recs = [HeartRateRecord(i, 0, 60 + i) for i in range(3)]
    payload = b"".join(bytes(r) for r in recs) + b"\x01\x02\x03"
    batch = decode_records(Frame(0x05, 0x15, payload))
    assert batch == RecordBatch(HistoryKind.HEART_RATE, tuple(recs), skipped=1, skipped_bytes=3)
    assert decode_records(Frame(0x05, 0x11, b"\x01\x02")).records == (RawRecord(0x11, b"\x01\x02"),)
    with pytest.raises(UnknownMessage, match="05 99"):
        decode_records(Frame(0x05, 0x99, b""))


def test_header() -> None:
    header = HistoryHeader(HistoryKind.HEART_RATE, 25, 3, 150)
    frame = header.to_frame()
    assert frame == Frame(0x05, 0x06, bytes.fromhex("1900 03000000 96000000"))
    assert decode_history(frame) == header
    for payload in (b"", b"\x00", b"\x05\x00"):
        assert decode_history(Frame(0x05, 0x1E, payload)) == HistoryHeader(HistoryKind.TEMPERATURE)
    assert HistoryHeader(HistoryKind.SPO2).to_frame() == Frame(0x05, 0x1A, b"\x00\x00")
    with pytest.raises(PayloadError, match="history header needs 10 payload bytes"):
        decode_history(Frame(0x05, 0x06, bytes(5)))
    with pytest.raises(UnknownMessage):
        decode_history(Frame(0x05, 0x99))


def test_block_end_and_crc() -> None:
    frames = [Frame(0x05, 0x15, bytes(HeartRateRecord(i, 0, 70))) for i in range(3)]
    end = BlockEnd.for_frames(frames)
    assert end.packet_count == 3
    assert end.byte_count == 18
    assert end.crc == crc16_ccitt_false(b"".join(f.payload for f in frames))
    assert end.crc == block_crc(f.payload for f in frames)
    assert decode_history(end.to_frame()) == end
    with pytest.raises(PayloadError, match="block end needs 6"):
        decode_history(Frame(0x05, 0x80, b"\x00"))


def hr_records(n: int) -> list[HeartRateRecord]:
    return [HeartRateRecord(700_000_000 + 60 * i, 0, 60 + i % 50) for i in range(n)]


def test_history_frames_layout() -> None:
    blocks = history_frames(HistoryKind.HEART_RATE, hr_records(25), records_per_frame=4,
                            records_per_block=10)
    assert [len(b) for b in blocks] == [4, 4, 3]  # 3 + 3 + 2 record frames, each + block end
    assert all(b[-1].key == 0x80 for b in blocks)
    assert [len(f.payload) for f in blocks[0][:-1]] == [24, 24, 12]
    with pytest.raises(ValueError, match="not a BLOOD_PRESSURE record"):
        history_frames(HistoryKind.BLOOD_PRESSURE, hr_records(1))


def run_sync(rx: HistoryReceiver, header: HistoryHeader, blocks: list[list[Frame]],
             mtu: int = 23) -> list[HistoryRecord]:
    """Drive a receiver like the session manager would: bytes → assembler → receiver."""
    asm = FrameAssembler()
    got: list[HistoryRecord] = []
    frames = [header.to_frame()] + [f for block in blocks for f in block]
    for frame in frames:
        for chunk in split_for_mtu(bytes(frame), mtu - 3):
            for f in asm.feed(chunk):
                step = rx.feed(f)
                got += step.records
    return got


def test_receiver_happy_path_through_the_assembler() -> None:
    records = hr_records(25)
    header, blocks = history_reply(HistoryKind.HEART_RATE, records, records_per_frame=4,
                                   records_per_block=10)
    rx = HistoryReceiver(HistoryKind.HEART_RATE)
    assert rx.request() == Frame(0x05, 0x06)
    assert rx.expected is None
    assert run_sync(rx, header, blocks) == records
    assert rx.done
    assert rx.failed is None
    assert rx.expected == 25
    assert rx.missing == 0
    assert rx.stats.blocks == 3
    assert rx.delete() == Frame(0x05, 0x42)


def test_receiver_replies_per_block() -> None:
    header, blocks = history_reply(HistoryKind.SPO2, [Spo2Record(i, 0, 95) for i in range(4)],
                                   records_per_frame=2, records_per_block=2)
    rx = HistoryReceiver(HistoryKind.SPO2)
    assert rx.feed(header.to_frame()).header == header
    step = rx.feed(blocks[0][0])
    assert step.records == () and step.reply is None  # held until the block end
    step = rx.feed(blocks[0][1])
    assert step.reply == ACCEPT
    assert len(step.records) == 2
    assert not step.done
    rx.feed(blocks[1][0])
    assert rx.feed(blocks[1][1]).done


def test_receiver_crc_mismatch_discards_block_and_asks_resend() -> None:
    records = hr_records(6)
    header, blocks = history_reply(HistoryKind.HEART_RATE, records, records_per_frame=3,
                                   records_per_block=3)
    rx = HistoryReceiver(HistoryKind.HEART_RATE)
    rx.feed(header.to_frame())
    # first block: a record frame damaged before the watch framed it (frame CRC is fine,
    # block CRC is not)
    damaged = Frame(0x05, 0x15, bytes([blocks[0][0].payload[0] ^ 1]) + blocks[0][0].payload[1:])
    assert rx.feed(damaged).records == ()
    step = rx.feed(blocks[0][-1])
    assert step.reply == RESEND
    assert step.records == ()
    assert rx.stats.bad_blocks == 1
    assert rx.stats.discarded_records == 3
    got: list[HistoryRecord] = []
    for block in blocks:  # the watch resends block 0, then sends block 1
        for f in block:
            got += rx.feed(f).records
    assert got == records
    assert rx.done
    assert rx.stats.records == 6


def test_receiver_gives_up_after_max_resends() -> None:
    header, blocks = history_reply(HistoryKind.HEART_RATE, hr_records(3), records_per_frame=3)
    bad_end = BlockEnd(1, 18, 0x1234).to_frame()
    rx = HistoryReceiver(HistoryKind.HEART_RATE, max_resends=2)
    rx.feed(header.to_frame())
    replies = []
    for _ in range(3):
        rx.feed(blocks[0][0])
        replies.append(rx.feed(bad_end).reply)
    assert replies == [RESEND, RESEND, None]
    assert rx.done
    assert rx.failed is not None and "gave up after 2 resends" in rx.failed
    assert rx.stats.discarded_records == 9


def test_receiver_counts_truncated_records_and_keeps_the_rest() -> None:
    recs = hr_records(2)
    frame = Frame(0x05, 0x15, bytes(recs[0]) + bytes(recs[1]) + b"\x01\x02")
    rx = HistoryReceiver(HistoryKind.HEART_RATE)
    rx.feed(HistoryHeader(HistoryKind.HEART_RATE, 3, 1, 20).to_frame())
    rx.feed(frame)
    step = rx.feed(BlockEnd.for_frames([frame]).to_frame())
    assert step.records == tuple(recs)
    assert step.reply == ACCEPT
    assert rx.stats.skipped_records == 1
    assert rx.stats.skipped_bytes == 2
    assert rx.missing == 1


def test_receiver_nothing_stored_and_unexpected_frames() -> None:
    rx = HistoryReceiver(HistoryKind.TEMPERATURE)
    assert rx.feed(Frame(0x06, 0x01, b"\x48")) == rx.feed(Frame(0x05, 0x15, bytes(6)))
    assert rx.stats.unexpected_frames == 2
    step = rx.feed(Frame(0x05, 0x1E, b""))
    assert step.done and rx.done and rx.expected == 0
    rx.feed(Frame(0x05, 0x26, bytes(7)))
    assert rx.stats.unexpected_frames == 3


def test_receiver_bad_header_is_reported_not_raised() -> None:
    rx = HistoryReceiver(HistoryKind.HEART_RATE)
    step = rx.feed(Frame(0x05, 0x06, bytes(5)))
    assert len(step.errors) == 1 and isinstance(step.errors[0], PayloadError)
    assert rx.stats.bad_frames == 1
    assert not rx.done


record_sts: dict[HistoryKind, st.SearchStrategy[HistoryRecord]] = {
    HistoryKind.HEART_RATE: st.builds(HeartRateRecord, st.integers(0, 2**32 - 1),
                                      st.integers(0, 255), st.integers(0, 255)),
    HistoryKind.BLOOD_PRESSURE: st.builds(BloodPressureRecord, st.integers(0, 2**32 - 1),
                                          st.integers(0, 255), st.integers(0, 255),
                                          st.integers(0, 255), st.integers(0, 255)),
    HistoryKind.SPO2: st.builds(Spo2Record, st.integers(0, 2**32 - 1), st.integers(0, 255),
                                st.integers(0, 255)),
    HistoryKind.TEMPERATURE: st.builds(TemperatureRecord, st.integers(0, 2**32 - 1),
                                       st.integers(0, 255), st.integers(0, 255),
                                       st.integers(0, 255)),
    HistoryKind.ALL: st.builds(
        AllRecord, st.integers(0, 2**32 - 1), st.integers(0, 65535), *[st.integers(0, 255)] * 9,
        reserved=st.binary(min_size=5, max_size=5),
    ),
}


@st.composite
def kind_and_records(draw: st.DrawFn) -> tuple[HistoryKind, list[HistoryRecord]]:
    kind = draw(st.sampled_from(sorted(record_sts)))
    return kind, draw(st.lists(record_sts[kind], max_size=40))


@FUZZ
@given(kind_and_records(), st.integers(1, 8), st.integers(1, 20), st.integers(23, 247))
def test_sync_round_trip(kr: tuple[HistoryKind, list[HistoryRecord]], per_frame: int,
                         per_block: int, mtu: int) -> None:
    kind, records = kr
    for r in records:
        assert type(r).from_bytes(bytes(r)) == r  # type: ignore[union-attr]
    header, blocks = history_reply(kind, records, records_per_frame=per_frame,
                                   records_per_block=per_block)
    rx = HistoryReceiver(kind)
    assert run_sync(rx, header, blocks, mtu) == records
    assert rx.done
    assert rx.missing == 0
    assert rx.stats.discarded_records == rx.stats.skipped_records == 0


@FUZZ
@given(st.lists(st.builds(Frame, group=st.sampled_from([5, 5, 5, 6]),
                          key=st.sampled_from([0x06, 0x15, 0x80, 0x1E, 0x42]),
                          payload=st.binary(max_size=30)), max_size=20))
def test_receiver_random_frames_never_raise(frames: list[Frame]) -> None:
    rx = HistoryReceiver(HistoryKind.HEART_RATE)
    for f in frames:
        step = rx.feed(f)
        assert all(isinstance(e, E86Error) for e in step.errors)
        assert all(isinstance(r, HeartRateRecord) for r in step.records)
        assert step.reply in (None, ACCEPT, RESEND)


def test_record_layout_tables_agree_with_the_kind_table() -> None:
    """Every known record layout (e86.records) is as long as the kind table says, and its
    generic codec round-trips a record of distinct field values."""
    from e86.records import RECORD_TYPES

    sized = {info.record_key: info.record_size for info in HISTORY_KINDS.values() if info.record_size}
    assert set(RECORD_TYPES) == set(sized)
    for key, cls in RECORD_TYPES.items():
        assert cls.size() == sized[key]
        data = bytes(range(1, cls.size() + 1))
        assert bytes(cls.from_bytes(data)) == data
