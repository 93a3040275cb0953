"""Start a private PostgreSQL on a free loopback port in its own directory (tests, benchmarks,
and later ``vitalgate demo --postgres``), in the style of :mod:`vitalgate.broker`.

The server binaries come from Debian's ``postgresql-15`` package (``/usr/lib/postgresql/15/bin``);
another version or build is found through ``pg_config --bindir`` or ``PATH``.

Layout of ``workdir`` (what survives ``stop()`` + ``start()``: everything in it)::

    workdir/data/          PGDATA, made by initdb on the first start (mode 0700, owned by the
                           OS user the server runs as)
    workdir/run/           the Unix socket directory (never /var/run/postgresql)
    workdir/port           the TCP port, so that a new launcher on the same dir keeps it
    workdir/postgres.log   the server's log (stderr)

initdb and postgres refuse to run as root. When this process is root, both run as an
unprivileged OS user (``postgres`` if it exists, which Debian's package creates, else
``nobody``) that owns ``data/`` and ``run/``; every directory above ``workdir`` must be
searchable by that user (pytest's ``tmp_path`` is under a 0700 root directory, so the fixtures
use ``tempfile.mkdtemp()`` in /tmp). The server listens on 127.0.0.1 only, on a free port
(never 5432, where a system cluster may run), with trust auth, or scram-sha-256 when a password
is given.

No process is left behind: ``stop()`` (fast shutdown, then SIGQUIT, then SIGKILL) runs from
the fixtures' ``finally``, from ``__exit__`` and from an ``atexit`` hook for every server still
running. ``atexit`` does not run when this process is SIGKILLed, so on Linux the postmaster is
also started with a parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGINT)``): when the thread
that started it dies (a SIGKILLed pytest included), the kernel sends the postmaster SIGINT, a
fast shutdown, and its backends exit with it. The work dir stays on disk (a killed process
cleans nothing up); the next start on it recovers. The signal follows the *thread* that
called ``start()``: start servers from the main thread, not from a worker thread that may end.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

from vitalgate.broker import free_port

#: the package that provides the server binaries on Debian 12
APT_PACKAGE = "postgresql-15"
#: where Debian installs the server binaries; 15 first, then any other version, newest first
DEBIAN_ROOT = Path("/usr/lib/postgresql")
PREFERRED_MAJOR = 15
#: never used: a system cluster may already listen there
SYSTEM_PORT = 5432
#: OS users tried, in order, when this process is root
UNPRIVILEGED_USERS = ("postgres", "nobody")
#: initdb on this 2-core machine takes ~2 s; the first start ~0.5 s; bounds with margin
INITDB_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
#: fast shutdown (SIGINT) first; then immediate (SIGQUIT); then SIGKILL
STOP_FAST_S = 15.0
STOP_IMMEDIATE_S = 5.0
#: a database or role name this module creates: lower-case identifier, no quoting needed
NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: postmaster.pid line 8 (LOCK_FILE_LINE_PM_STATUS) says "ready" once connections are accepted
PID_FILE_STATUS_LINE = 7
#: Linux prctl option: signal sent to this process when its parent thread dies
PR_SET_PDEATHSIG = 1


class PostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    bindir: Path
    version: str  # e.g. "15.20"

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"

    @property
    def postgres(self) -> Path:
        return self.bindir / "postgres"


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres"))


def find_binaries(bindir: Path | None = None) -> Binaries:
    """The server binaries: ``bindir`` if given, else ``PATH``, ``pg_config --bindir``, then
    Debian's /usr/lib/postgresql/15/bin and any other version there (newest first)."""
    looked: list[str] = []
    candidates: list[Path] = []
    if bindir is not None:
        candidates.append(Path(bindir))
    else:
        on_path = shutil.which("postgres")
        if on_path is not None:
            candidates.append(Path(on_path).resolve().parent)
        pg_config = shutil.which("pg_config")
        if pg_config is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
                ).stdout.strip()
                if out:
                    candidates.append(Path(out))
        candidates.append(DEBIAN_ROOT / str(PREFERRED_MAJOR) / "bin")
        if DEBIAN_ROOT.is_dir():
            versions = sorted(
                (p for p in DEBIAN_ROOT.iterdir() if p.name.isdigit()),
                key=lambda p: int(p.name),
                reverse=True,
            )
            candidates.extend(p / "bin" for p in versions)
    for candidate in candidates:
        looked.append(str(candidate))
        if _has_server(candidate):
            out = subprocess.run(
                [str(candidate / "postgres"), "--version"], capture_output=True, text=True, timeout=10
            ).stdout
            match = re.search(r"\b(\d+(?:\.\d+)*)", out)
            return Binaries(candidate, match.group(1) if match else "unknown")
    where = ", ".join(dict.fromkeys(looked)) or "nowhere"
    raise PostgresError(
        f"PostgreSQL server binaries (initdb, postgres) not found (looked in {where}); "
        f"install them: apt-get install {APT_PACKAGE}"
    )


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int


def _run_as_user(requested: str | None) -> OsUser | None:
    """None when we are not root (the server runs as us); else the unprivileged user."""
    if os.geteuid() != 0:
        return None
    names = (requested,) if requested else UNPRIVILEGED_USERS
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise PostgresError(f"OS user {name!r} is root; PostgreSQL refuses to run as root")
        return OsUser(name, entry.pw_uid, entry.pw_gid)
    raise PostgresError(
        f"running as root, and none of the OS users {', '.join(names)} exists to run PostgreSQL "
        f"as (apt-get install {APT_PACKAGE} creates the user 'postgres')"
    )


def _check_reachable(path: Path, user: OsUser) -> None:
    """Every directory above ``path`` must be searchable by ``user``, or initdb fails late
    with a confusing message."""
    groups = {user.gid} | {g for g in os.getgrouplist(user.name, user.gid)}
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == user.uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            raise PostgresError(
                f"{parent} (mode {st.st_mode & 0o777:04o}) is not searchable by OS user "
                f"{user.name!r}, which runs PostgreSQL because this process is root; put the "
                f"work dir where that user can reach it, e.g. tempfile.mkdtemp()"
            )


#: libc, loaded here and not in the forked child (dlopen there could wait on a lock that
#: another thread of this process held at fork time)
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """preexec_fn: ask the kernel to SIGINT the postmaster when the starting thread dies.
    Runs after Popen's setuid, so the credential change does not clear it."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() if sys.platform == "linux" else _kill0(pid)


def _kill0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_running: weakref.WeakSet[PostgresServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


@dataclass(eq=False)
class PostgresServer:
    """A PostgreSQL server with its data in ``workdir``; stop() and start() again keep the port
    and the data, as a restarted production server would.

    ``fsync=False`` (and initdb ``--no-sync``) is for throwaway test clusters only: a crash of
    the machine can then corrupt the data. The default is on."""

    port: int = 0
    host: str = "127.0.0.1"
    workdir: Path | None = None
    superuser: str = "vitalgate"
    password: str | None = None
    fsync: bool = True
    bindir: Path | None = None
    os_user: str | None = None
    #: extra ``-c name=value`` server settings (e.g. {"max_connections": "200"})
    settings: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    binaries: Binaries | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _log_start: int = field(default=0, init=False, repr=False)

    # ---- addresses -------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._workdir() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._workdir() / "run"

    @property
    def log_path(self) -> Path:
        return self._workdir() / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://user[:password]@127.0.0.1:port/dbname`` (holds the password: never log it)."""
        auth = quote(self.superuser, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running and self.proc is not None else None

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self.running:
            raise PostgresError(f"this PostgreSQL server already runs (pid {self.pid}, port {self.port})")
        if not NAME_RE.fullmatch(self.superuser):
            raise PostgresError(f"superuser {self.superuser!r} must match {NAME_RE.pattern}")
        if self.password is not None and not (1 <= len(self.password) <= 200):
            raise PostgresError("password must be 1..200 characters")
        if self.host != "127.0.0.1":
            raise PostgresError(f"host {self.host!r}: this launcher listens on loopback only (127.0.0.1)")
        for name, value in self.settings.items():
            if not re.fullmatch(r"[a-z_]{1,63}", name) or not re.fullmatch(r"[\w.:/ -]{0,200}", value):
                raise PostgresError(f"bad server setting {name!r}={value!r}")
        self.binaries = find_binaries(self.bindir)
        user = _run_as_user(self.os_user)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="vitalgate-postgres-"))
            self.workdir.chmod(0o755)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            _check_reachable(self.workdir / "x", user)
        self._refuse_if_running_elsewhere()
        port_file = self._workdir() / "port"
        if self.port == 0 and port_file.exists():
            self.port = int(port_file.read_text().strip())
        if self.port == SYSTEM_PORT:
            raise PostgresError(f"port {SYSTEM_PORT} is left to a system cluster; choose another")
        while self.port in (0, SYSTEM_PORT):
            self.port = free_port()
        for d in (self.data_dir, self.socket_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            if user is not None:
                os.chown(d, user.uid, user.gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(user)
        port_file.write_text(f"{self.port}\n")
        self._launch(user)
        return self

    def _workdir(self) -> Path:
        if self.workdir is None:
            raise PostgresError("no work dir yet: call start() first")
        return self.workdir

    def _refuse_if_running_elsewhere(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first = pid_file.read_text().splitlines()[0].strip()
        except (FileNotFoundError, IndexError):
            return
        if first.isdigit() and _pid_alive(int(first)):
            raise PostgresError(
                f"a PostgreSQL server already runs on {self.data_dir} (pid {first}); "
                f"stop it before starting another on the same directory"
            )

    def _child_env(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, ...) of the caller must not steer initdb/postgres
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env["TZ"] = "UTC"
        return env

    def _user_kwargs(self, user: OsUser | None) -> dict[str, object]:
        if user is None:
            return {}
        return {"user": user.uid, "group": user.gid, "extra_groups": []}

    def _initdb(self, user: OsUser | None) -> None:
        assert self.binaries is not None
        cmd = [
            str(self.binaries.initdb), "-D", str(self.data_dir), "-U", self.superuser,
            "-E", "UTF8", "--locale=C", "--auth-local=trust",
        ]
        pwfile: Path | None = None
        if self.password is not None:
            pwfile = self.socket_dir / "initdb.pw"  # 0700 dir owned by the server's user
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if user is not None:
                os.chown(pwfile, user.uid, user.gid)
            cmd += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            cmd += ["--auth-host=trust"]
        if not self.fsync:
            cmd.append("--no-sync")
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=INITDB_TIMEOUT_S, cwd=self.socket_dir,
                env=self._child_env(), **self._user_kwargs(user),  # type: ignore[call-overload]
            )
        finally:
            if pwfile is not None:
                pwfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise PostgresError(f"initdb failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
        method = "scram-sha-256" if self.password is not None else "trust"
        # exactly: the private socket and 127.0.0.1; no ::1, no replication from elsewhere
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by vitalgate.postgres\n"
            "local all all trust\n"
            f"host all all 127.0.0.1/32 {method}\n"
        )

    def _launch(self, user: OsUser | None) -> None:
        assert self.binaries is not None
        cmd = [
            str(self.binaries.postgres), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1",
            "-c", f"fsync={'on' if self.fsync else 'off'}",
            "-c", "logging_collector=off", "-c", "log_destination=stderr",
        ]
        if not self.fsync:
            cmd += ["-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        for name, value in self.settings.items():
            cmd += ["-c", f"{name}={value}"]
        self._log = self.log_path.open("ab")
        self._log_start = self._log.tell()
        preexec = _parent_death_signal if _LIBC is not None else None
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            cwd=self.socket_dir, env=self._child_env(), preexec_fn=preexec,
            **self._user_kwargs(user),  # type: ignore[call-overload]
        )
        _running.add(self)
        try:
            self._wait_ready()
        except PostgresError:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        pid_file = self.data_dir / "postmaster.pid"
        while True:
            code = self.proc.poll()
            if code is not None:
                log = self._log_tail()
                if "could not bind" in log or "could not create any TCP/IP sockets" in log:
                    raise PostgresError(f"port {self.host}:{self.port} is taken: {log}")
                raise PostgresError(f"postgres exited ({code}) on port {self.port}: {log}")
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if (
                    len(lines) > PID_FILE_STATUS_LINE
                    and lines[0].strip() == str(self.proc.pid)
                    and lines[PID_FILE_STATUS_LINE].strip() == "ready"
                ):
                    return
            if time.monotonic() > deadline:
                raise PostgresError(
                    f"postgres not ready on port {self.port} after {START_TIMEOUT_S}s: {self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, n: int = 1500) -> str:
        """The end of what this start wrote to the log (earlier starts' lines left out)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return "(no log)"
        return text[-n:] or "(nothing logged)"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnects clients, checkpoints), then SIGQUIT, then SIGKILL."""
        proc, self.proc = self.proc, None
        _running.discard(self)
        if proc is not None:
            for sig, wait in ((signal.SIGINT, STOP_FAST_S), (signal.SIGQUIT, STOP_IMMEDIATE_S),
                              (signal.SIGKILL, STOP_IMMEDIATE_S)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
        if self._log is not None:
            self._log.close()
            self._log = None

    def remove(self) -> None:
        """stop() and delete the work dir (data included)."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- databases -------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL."""
        import psycopg

        if not NAME_RE.fullmatch(name):
            raise PostgresError(f"database name {name!r} must match {NAME_RE.pattern}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting whoever is still on it."""
        import psycopg

        if not NAME_RE.fullmatch(name):
            raise PostgresError(f"database name {name!r} must match {NAME_RE.pattern}")
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
