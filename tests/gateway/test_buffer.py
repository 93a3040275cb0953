"""The store-and-forward buffer on real SQLite files."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.buffer import Buffer, BufferError, Measurement, RowKind
from vitalgate.contract import EcgChunk, Reading, Source, Vitals

DEV_A = "d061aed45894"
DEV_B = "d061aed4ab5c"


def m(device: str = DEV_A, ts: int = 1_700_000_000_000, hr: float = 72.0) -> Measurement:
    return Measurement(device, ts, Vitals(heart_rate=hr), Source.REALTIME, "AMSe5Sn8Gkxj7")


def chunk(seq: int, n: int = 250) -> EcgChunk:
    return EcgChunk(device_id=DEV_A, recording=f"{DEV_A}-1", seq=seq, ts=1_700_000_000_000 + seq,
                    fs=250, samples=[1_000_000 + seq] * n)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_readings_are_numbered_per_device_and_numbers_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    with Buffer(path) as b:
        got = b.add_readings([m(DEV_A), m(DEV_B), m(DEV_A)])
        assert [(r.device_id, r.seq) for r in got] == [(DEV_A, 0), (DEV_B, 0), (DEV_A, 1)]
        b.ack(r.id for r in b.pending())
        assert len(b) == 0
    with Buffer(path) as b:  # restart: the counter table carries on, even with an empty outbox
        got = b.add_readings([m(DEV_A), m(DEV_B)])
        assert [(r.device_id, r.seq) for r in got] == [(DEV_A, 2), (DEV_B, 1)]
        rows = b.pending()
        assert [r.seq for r in rows] == [2, 1]
        assert Reading.model_validate_json(rows[0].payload) == got[0]
        assert b.stats().added == 5 and b.stats().acked == 3


def test_pending_is_in_insertion_order_and_pages(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite3") as b:
        b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(10)])
        first = b.pending(limit=4)
        rest = b.pending(after_id=first[-1].id, limit=100)
        assert [r.seq for r in first + rest] == list(range(10))
        assert b.max_id() == rest[-1].id
        assert b.ack([first[0].id, first[0].id, 999_999]) == 1  # unknown / repeated ids are harmless


def test_committed_rows_survive_an_abandoned_connection(tmp_path: Path) -> None:
    # the process dies without close(): the WAL holds the commits
    path = tmp_path / "b.sqlite3"
    b = Buffer(path)
    b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(3)])
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM outbox").fetchone() == (3,)
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    b.close()


def test_eviction_takes_ecg_first_then_oldest_readings_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with Buffer(tmp_path / "b.sqlite3", max_rows=5, clock=clock) as b:
        b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(2)])  # seq 0, 1
        b.add_ecg(chunk(0))
        b.add_ecg(chunk(1))
        b.add_readings([m(ts=1_700_000_000_100)])  # seq 2: 5 rows, full
        with caplog.at_level(logging.WARNING, logger="gateway.buffer"):
            b.add_readings([m(ts=1_700_000_000_200)])  # evicts ECG chunk 0
            b.add_readings([m(ts=1_700_000_000_300)])  # evicts ECG chunk 1 (log rate-limited)
            kinds = [(r.kind, r.seq) for r in b.pending()]
            assert kinds == [(RowKind.READING, s) for s in range(5)]
            b.add_readings([m(ts=1_700_000_000_400)])  # no ECG left: the oldest reading goes
        assert [r.seq for r in b.pending()] == [1, 2, 3, 4, 5]
        s = b.stats()
        assert (s.evicted_ecg, s.evicted_readings, s.evicted, s.rows) == (2, 1, 3, 5)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # three evictions in the same minute: one line
        clock.t += 61
        with caplog.at_level(logging.WARNING, logger="gateway.buffer"):
            b.add_readings([m(ts=1_700_000_000_500)])
        assert "evicted 3 rows" in caplog.records[-1].getMessage()
    with Buffer(tmp_path / "b.sqlite3", max_rows=5) as b:  # counters persisted
        assert (b.stats().evicted_ecg, b.stats().evicted_readings) == (2, 2)


def test_byte_limit_evicts_as_few_rows_as_needed(tmp_path: Path) -> None:
    size = len(chunk(0, n=300).to_bytes())
    with Buffer(tmp_path / "b.sqlite3", max_bytes=3 * size + 50) as b:
        for i in range(3):
            b.add_ecg(chunk(i, n=300))
        assert b.stats().evicted == 0
        b.add_readings([m()])  # a reading is more than 50 bytes: one chunk has to go
        s = b.stats()
        assert s.bytes <= 3 * size + 50
        assert (s.evicted_ecg, s.evicted_readings, s.rows) == (1, 0, 3)
        assert [r.seq for r in b.pending() if r.kind is RowKind.ECG] == [1, 2]


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BufferError, match="cannot open buffer"):
        Buffer(path)


# ----------------------------------------------------------------------------- property

op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 4), st.sampled_from([DEV_A, DEV_B])),
    st.tuples(st.just("ecg"), st.integers(1, 3), st.just(DEV_A)),
    st.tuples(st.just("ack"), st.integers(0, 6), st.just("")),
    st.tuples(st.just("reopen"), st.just(0), st.just("")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=30), max_rows=st.integers(3, 12))
def test_no_row_is_lost_unless_counted(ops: list[tuple[str, int, str]], max_rows: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.sqlite3"
        b = Buffer(path, max_rows=max_rows)
        added: dict[str, list[int]] = {DEV_A: [], DEV_B: []}
        acked = 0
        ecg_seq = 0
        try:
            for name, n, dev in ops:
                if name == "add":
                    got = b.add_readings([m(dev, ts=1_700_000_000_000 + i) for i in range(n)])
                    added[dev] += [r.seq for r in got]
                elif name == "ecg":
                    for _ in range(n):
                        b.add_ecg(chunk(ecg_seq, n=5))
                        ecg_seq += 1
                elif name == "ack":
                    acked += b.ack([r.id for r in b.pending(limit=n)])
                else:
                    b.close()
                    b = Buffer(path, max_rows=max_rows)
                s = b.stats()
                total = sum(len(v) for v in added.values()) + ecg_seq
                assert s.rows == len(b.pending(limit=10**6)) <= max_rows
                assert total == acked + s.evicted + s.rows
                assert s.added == total and s.acked == acked
            for dev, seqs in added.items():  # numbering is contiguous from 0 per device
                assert seqs == list(range(len(seqs)))
                left = [r.seq for r in b.pending(limit=10**6) if r.kind is RowKind.READING and r.device_id == dev]
                assert left == sorted(left)
        finally:
            b.close()
