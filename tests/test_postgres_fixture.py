"""The PostgreSQL launcher (vitalgate/postgres.py) and its fixtures, on a real PostgreSQL 15."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg_pool
import pytest

from vitalgate.postgres import SYSTEM_PORT, PostgresError, PostgresServer, find_binaries

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Under /tmp (reachable by the unprivileged server user), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="vitalgate-test-pg-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


def _proc_children(pid: int) -> set[int]:
    """pid and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {pid}
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in found} - found
        grew = bool(more)
        found |= more
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_session_server_accepts_sync_connections(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        version, user = conn.execute("SELECT current_setting('server_version_num'), current_user").fetchone()
    assert int(version) // 10000 == 15
    assert user == "vitalgate"
    assert postgres_server.port != SYSTEM_PORT
    assert postgres_server.binaries is not None and postgres_server.binaries.version.startswith("15")


def test_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url()) as conn:
        listen, fsync = conn.execute(
            "SELECT current_setting('listen_addresses'), current_setting('fsync')"
        ).fetchone()
    assert listen == "127.0.0.1"
    assert fsync == "off"  # the session fixture asked for it explicitly


def test_each_test_gets_a_fresh_database(postgres_db: str) -> None:
    with psycopg.connect(postgres_db) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        conn.execute("CREATE TABLE probe (id int PRIMARY KEY)")
        conn.execute("INSERT INTO probe VALUES (1) ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO probe VALUES (1) ON CONFLICT DO NOTHING")
        rows = conn.execute("SELECT count(*) FROM probe").fetchone()
    assert tables == (0,)
    assert rows == (1,)


def test_the_database_is_dropped_after_its_test(postgres_server: PostgresServer) -> None:
    name = "test_dropped_probe"
    url = postgres_server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:  # an open connection does not block the drop
        conn.execute("SELECT 1")
        postgres_server.drop_database(name)
    with psycopg.connect(postgres_server.url()) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert left == (0,)
    with pytest.raises(PostgresError, match="database name"):
        postgres_server.create_database('x"; DROP DATABASE postgres; --')


async def test_async_pool(postgres_db: str) -> None:
    async with psycopg_pool.AsyncConnectionPool(postgres_db, min_size=2, max_size=4, open=False) as pool:
        await pool.wait(timeout=30)
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE t (n int)")
        for n in range(8):
            async with pool.connection() as conn:
                await conn.execute("INSERT INTO t VALUES (%s)", (n,))
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*), sum(n) FROM t")
            assert await cur.fetchone() == (8, 28)
        assert pool.get_stats()["pool_max"] == 4


def test_sync_pool(postgres_db: str) -> None:
    pool = psycopg_pool.ConnectionPool(postgres_db, min_size=1, max_size=2, open=True)
    with pool, pool.connection() as first, pool.connection() as second:
        assert first.execute("SELECT 41 + 1").fetchone() == (42,)
        assert second.execute("SELECT pg_backend_pid() <> %s", (first.info.backend_pid,)).fetchone() == (True,)


def test_runs_unprivileged_when_root(postgres_server: PostgresServer) -> None:
    pid = postgres_server.pid
    assert pid is not None
    server_uid = _uid(pid)
    if os.geteuid() == 0:
        assert server_uid != 0
        st = postgres_server.data_dir.stat()
        assert st.st_uid == server_uid
        assert st.st_mode & 0o777 == 0o700
    else:
        assert server_uid == os.geteuid()


def test_stop_start_keeps_port_and_data_and_leaves_no_process(workdir: Path) -> None:
    server = PostgresServer(workdir=workdir / "pg")
    try:
        server.start()
        port = server.port
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT current_setting('fsync')").fetchone() == ("on",)  # the default
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('survives')")
        with psycopg.connect(server.url(), autocommit=True) as idle:  # a client still connected at stop()
            idle.execute("SELECT 1")
            assert server.pid is not None
            pids = _proc_children(server.pid)
            assert len(pids) > 1  # postmaster + checkpointer, walwriter, ... + our backend
            server.stop()
        assert _alive(pids) == set(), f"left behind: {_alive(pids)}"
        assert not (server.data_dir / "postmaster.pid").exists()

        server.start()
        assert server.port == port
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("survives",)]
        server.stop()

        # a new launcher on the same dir finds the port it used and the data
        again = PostgresServer(workdir=workdir / "pg").start()
        try:
            assert again.port == port
            with psycopg.connect(again.url()) as conn:
                assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
        finally:
            again.stop()
    finally:
        server.stop()


def test_a_second_start_on_the_same_dir_is_refused(workdir: Path) -> None:
    first = PostgresServer(workdir=workdir / "pg", fsync=False).start()
    try:
        with pytest.raises(PostgresError, match="already runs"):
            first.start()
        second = PostgresServer(workdir=workdir / "pg", fsync=False)
        with pytest.raises(PostgresError, match=r"already runs on .*pid \d+"):
            second.start()
        assert second.proc is None
        with psycopg.connect(first.url()) as conn:  # the first is unharmed
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.stop()


def test_a_taken_port_is_a_clear_error(workdir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PostgresServer(workdir=workdir / "pg", port=port, fsync=False)
        with pytest.raises(PostgresError, match=rf"port 127\.0\.0\.1:{port} is taken"):
            server.start()
        assert server.proc is None


def test_port_5432_is_never_used(workdir: Path) -> None:
    with pytest.raises(PostgresError, match="5432"):
        PostgresServer(workdir=workdir / "pg", port=SYSTEM_PORT).start()


def test_only_loopback_hosts_and_sane_names(workdir: Path) -> None:
    with pytest.raises(PostgresError, match="loopback only"):
        PostgresServer(workdir=workdir / "pg", host="0.0.0.0").start()
    with pytest.raises(PostgresError, match="superuser"):
        PostgresServer(workdir=workdir / "pg", superuser="Robert'); --").start()
    with pytest.raises(PostgresError, match="bad server setting"):
        PostgresServer(workdir=workdir / "pg", fsync=False, settings={"fsync=on -c x": "1"}).start()
    assert not (workdir / "pg" / "data" / "postmaster.pid").exists()


def test_password_auth_on_loopback(workdir: Path) -> None:
    server = PostgresServer(workdir=workdir / "pg", password="s3cret pw/with:odd@chars", fsync=False)
    try:
        server.start()
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        wrong = server.url().replace("s3cret", "wrong")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong).close()
        hba = (server.data_dir / "pg_hba.conf").read_text()
        assert "127.0.0.1/32 scram-sha-256" in hba and "::1" not in hba
        assert not list(server.socket_dir.glob("*.pw")), "the initdb password file was left"
    finally:
        server.stop()


def test_unreachable_workdir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to another OS user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(PostgresError, match="not searchable by OS user"):
        PostgresServer(workdir=locked / "pg").start()


def test_missing_binaries_name_the_package(tmp_path: Path) -> None:
    with pytest.raises(PostgresError, match="apt-get install postgresql-15"):
        find_binaries(tmp_path)


def test_server_dies_with_a_sigkilled_parent(workdir: Path) -> None:
    """atexit cannot run on SIGKILL; the parent-death signal stops the server all the same."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from vitalgate.postgres import PostgresServer
        s = PostgresServer(workdir=Path({str(workdir / "pg")!r}), fsync=False).start()
        print(s.pid, flush=True)
        time.sleep(300)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    pids: set[int] = set()
    try:
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        pids = _proc_children(pid)
        assert _alive({pid}) == {pid}
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 30
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(pids) == set(), f"postgres outlived its killed parent: {_alive(pids)}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
        for leftover in _alive(pids):  # never leave one behind, even when the test fails
            os.kill(leftover, signal.SIGKILL)
