"""Test tool: a Mosquitto configured as the deployment's (TLS, passwords, config/mosquitto/acl)
on a free loopback port, with a fresh CA and server certificate (config/make-certs.sh)."""

from __future__ import annotations

import contextlib
import getpass
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vitalgate.broker import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SecureBroker:
    port: int
    ca: Path  #: the CA certificate that signed the broker's (clients verify against it)


@contextlib.contextmanager
def secure_mosquitto(workdir: Path, users: Mapping[str, str], *,
                     persistence: bool = False) -> Iterator[SecureBroker]:
    """Start the broker with ``users`` (name → password) in its password file; stopped (and
    reaped, at most 10 s) on the way out. ``persistence`` keeps sessions in ``workdir``."""
    certs = workdir / "certs"
    subprocess.run(["sh", str(ROOT / "config/make-certs.sh"), str(certs), "localhost"], check=True)
    passwd = workdir / "passwd"
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True)
    port = free_port()
    stored = f"persistence true\npersistence_location {workdir}/\n" if persistence else ""
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous false\n"
        f"password_file {passwd}\nacl_file {ROOT / 'config/mosquitto/acl'}\n"
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\nkeyfile {certs / 'server.key'}\n"
        f"{stored}log_dest none\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        yield SecureBroker(port, certs / "ca.crt")
    finally:
        proc.terminate()
        proc.wait(10)
