"""The store-and-forward buffer on real SQLite files."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.buffer import (
    Buffer,
    BufferError,
    CorruptBuffer,
    DiskFull,
    Measurement,
    RowKind,
    set_aside_files,
)
from tests.gateway.small_disk import small_disk
from vitalgate.contract import STREAM_RE, EcgChunk, Reading, Source, Vitals

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

    def wall(self) -> float:
        return self.t

    def monotonic(self) -> float:
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


# ----------------------------------------------------------------------------- full disk (issue 12)

def _file_counts(path: Path) -> tuple[int, int]:
    """(unacknowledged rows, acknowledged rows kept) as the file says, read by another connection."""
    other = sqlite3.connect(path)
    try:
        pending, kept = other.execute(
            "SELECT COALESCE(SUM(acked_ms IS NULL), 0), COALESCE(SUM(acked_ms IS NOT NULL), 0) FROM outbox"
        ).fetchone()
        return int(pending), int(kept)
    finally:
        other.close()


def test_full_disk_is_reported_as_itself_counts_never_drift_and_nothing_is_evicted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's figures: buffer_max_rows=150, the disk fills and frees while readings keep
    coming and the broker acknowledges; before, 681 of 799 readings were evicted. Now: none."""
    with small_disk(tmp_path) as disk:
        path = disk.dir / "buffer.sqlite3"
        clock = FakeClock()
        # no acknowledged readings kept: deleting them would free pages a page limit then reuses
        b = Buffer(path, max_rows=150, keep_acked_rows=0, clock=clock)
        numbered: list[int] = []
        failures = 0
        try:
            with caplog.at_level(logging.INFO, logger="gateway.buffer"):
                for i in range(799):
                    clock.t += 0.2  # a reading every 0.2 s: full from 40 s to 100 s, 60 s more after
                    if i == 200:
                        disk.fill(b)
                    if i == 500:
                        disk.free(b)
                    try:
                        numbered += [r.seq for r in b.add_readings([m(ts=1_700_000_000_000 + i)])]
                    except DiskFull as exc:
                        failures += 1
                        assert "database or disk is full" in str(exc)
                        assert "cannot rollback" not in str(exc)
                        assert b.state == "disk_full"
                    if i % 7 == 0 and not 200 <= i < 500:  # the broker acknowledges now and then
                        with contextlib.suppress(DiskFull):
                            b.ack([r.id for r in b.pending(limit=10)])
                    assert (len(b), b.stats().kept) == _file_counts(path)  # never drift
            s = b.stats()
            assert failures > 0 and b.write_failures >= failures, disk.how
            assert b.state == "ok" and b.last_error is None
            assert s.evicted == 0  # the disk was full, the buffer never: nothing evicted for it
            assert numbered == list(range(len(numbered)))  # contiguous: no seq handed out twice or lost
            assert s.added == len(numbered) == s.acked + s.rows
            full = [r for r in caplog.records if "cannot be written (disk_full)" in r.getMessage()]
            back = [r for r in caplog.records if "writable again" in r.getMessage()]
            assert len(full) == 1 and len(back) == 1  # said once when it started, once when it ended
        finally:
            b.close()


def test_a_failed_commit_rolls_back_without_hiding_the_error(tmp_path: Path) -> None:
    # a COMMIT that SQLite already rolled back must not be followed by a ROLLBACK that fails
    # ("cannot rollback - no transaction is active") and hides the real error
    with small_disk(tmp_path) as disk, Buffer(disk.dir / "b.sqlite3") as b:
        b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(20)])
        disk.fill(b)
        with pytest.raises(DiskFull, match="database or disk is full"):
            for i in range(10_000):  # the WAL may still hold a few frames' room
                b.add_readings([m(ts=1_700_000_001_000 + i)])
        before = len(b)
        with pytest.raises(DiskFull):
            b.add_readings([m(ts=1_700_000_100_000 + i) for i in range(50)])
        assert len(b) == before == _file_counts(b.path)[0]
        disk.free(b)
        got = b.add_readings([m(ts=1_700_000_200_000)])
        assert got[0].seq == before and b.state == "ok"


def test_eviction_removes_only_rows_that_exist_oldest_first(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite3", max_rows=10) as b:
        b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(10)])
        b._rows[RowKind.READING] += 500  # a count that drifted (the old bug): eviction re-reads
        b.add_readings([m(ts=1_700_000_000_100)])
        assert len(b) == _file_counts(b.path)[0] <= 10
        assert b.stats().evicted_readings <= 1
        assert [r.seq for r in b.pending()][-1] == 10


# ----------------------------------------------------------------------------- stream identity

def test_every_buffer_has_its_own_stream_and_readings_carry_it(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    with Buffer(path) as b:
        first = b.stream
        assert STREAM_RE.fullmatch(first)
        got = b.add_readings([m(), m()])
        assert [(r.stream, r.seq) for r in got] == [(first, 0), (first, 1)]
        assert Reading.model_validate_json(b.pending()[0].payload).stream == first
    with Buffer(path) as b:  # reopened: the same stream, numbering carries on
        assert b.stream == first and b.add_readings([m()])[0].seq == 2
    for p in tmp_path.glob("b.sqlite3*"):
        p.unlink()  # the operator's fix, or a re-imaged Pi
    with Buffer(path) as b:
        got = b.add_readings([m()])
        assert b.stream != first and (got[0].stream, got[0].seq) == (b.stream, 0)


def test_a_first_release_buffer_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, kind INTEGER NOT NULL, device_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL, ts INTEGER NOT NULL, added_ms INTEGER NOT NULL, size INTEGER NOT NULL,"
        " payload BLOB NOT NULL);"
        "CREATE TABLE device_seq (device_id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);")
    payload = Reading(device_id=DEV_A, seq=0, ts=1_700_000_000_000, vitals=Vitals(heart_rate=70)).to_bytes()
    old.execute("INSERT INTO outbox VALUES (1, 0, ?, 0, 1700000000000, 1, ?, ?)", (DEV_A, len(payload), payload))
    old.execute("INSERT INTO device_seq VALUES (?, 1)", (DEV_A,))
    old.commit()
    old.close()
    with Buffer(path) as b:
        assert len(b) == 1 and STREAM_RE.fullmatch(b.stream)
        assert b.add_readings([m()])[0].seq == 1


# ----------------------------------------------------------------------------- corrupt buffers

def _buffer_with_rows(path: Path, n: int) -> str:
    with Buffer(path) as b:
        for i in range(0, n, 50):
            b.add_readings([m(ts=1_700_000_000_000 + j, hr=60 + j % 40) for j in range(i, min(n, i + 50))])
        return b.stream


def test_a_truncated_buffer_is_set_aside_salvaged_and_a_new_stream_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "buffer.sqlite3"
    old_stream = _buffer_with_rows(path, 3000)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size * 2 // 3)
    with pytest.raises(CorruptBuffer):
        Buffer(path)
    with caplog.at_level(logging.INFO, logger="gateway.buffer"):
        b = Buffer.open_or_reset(path)
    try:
        assert b.stream != old_stream and b.set_aside is not None and b.set_aside.exists()
        assert set_aside_files(path) == [b.set_aside]
        got = b.salvage_result
        assert got is not None and 0 < got.imported < 3000  # what is readable, no more
        rows = b.pending(limit=10**6)
        assert len(rows) == got.imported == b.stats().salvaged
        salvaged = [Reading.model_validate_json(r.payload) for r in rows]
        assert {r.stream for r in salvaged} == {old_stream}  # they keep their identity
        assert [r.seq for r in salvaged] == sorted(r.seq for r in salvaged)
        assert b.add_readings([m()])[0].seq == 0  # the new stream starts at 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "moved aside" in errors[0].getMessage()
        assert b.salvage(b.set_aside).imported == 0  # salvaging the same file again adds nothing
    finally:
        b.close()
    with Buffer.open_or_reset(path) as again:  # the fresh buffer is fine: no second reset, no loop
        assert again.set_aside is None and again.stream == b.stream


def test_an_overwritten_buffer_is_set_aside_and_the_gateway_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "buffer.sqlite3"
    _buffer_with_rows(path, 10)
    path.write_bytes(b"\x00garbage" * 4096)
    with Buffer.open_or_reset(path) as b:
        assert len(b) == 0 and b.set_aside is not None
        assert b.salvage_result is not None and b.salvage_result.imported == 0
        assert b.add_readings([m()])[0].seq == 0


def test_salvage_of_an_intact_old_file_imports_its_unacknowledged_rows_once(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    with Buffer(old) as b:
        b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(10)])
        b.ack([r.id for r in b.pending(limit=4)])  # 4 acknowledged: not salvaged
        old_stream = b.stream
    with Buffer(tmp_path / "new.sqlite3") as b:
        got = b.salvage(old)
        assert (got.read, got.imported, got.unreadable, got.complete) == (6, 6, 0, True)
        assert [(Reading.model_validate_json(r.payload).stream, r.seq) for r in b.pending()] == \
            [(old_stream, s) for s in range(4, 10)]
        assert b.salvage(old).imported == 0 and len(b) == 6


# ----------------------------------------------------------------------------- kept for republish

def test_acknowledged_readings_are_kept_for_republish_within_a_bounded_window(tmp_path: Path) -> None:
    clock = FakeClock()
    with Buffer(tmp_path / "b.sqlite3", max_rows=30, keep_acked_rows=10, keep_acked_s=600, clock=clock) as b:
        got = b.add_readings([m(ts=1_700_000_000_000 + i) for i in range(20)])
        b.ack([r.id for r in b.pending(limit=20)])
        assert len(b) == 0 and b.stats().kept == 10  # the newest 10 acknowledged stay
        rows = b.readings_range(DEV_A, b.stream, 5, 14)
        assert [r.seq for r in rows] == list(range(10, 15))
        assert b.readings_range(DEV_A, "0" * 16, 0, 19) == []  # another stream: not here
        assert Reading.model_validate_json(rows[0].payload) == got[10]
        b.add_readings([m(ts=1_700_000_001_000 + i) for i in range(25)])  # 25 + 10 > 30: kept go first
        s = b.stats()
        assert s.rows == 25 and s.kept == 5 and s.evicted == 0
        clock.t += 601
        b.ack([b.pending(limit=1)[0].id])  # an ack runs the age limit too
        assert b.stats().kept == 1
