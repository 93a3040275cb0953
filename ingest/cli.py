"""``vitalgate ingest`` (run the service) and ``vitalgate keys create|list|revoke|retire-bootstrap``."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from vitalgate.config import load_settings

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("ingest", help="run the hospital-side ingestion service")
    p.add_argument("--config", help="TOML file with an [ingest] table (or $VITALGATE_CONFIG)")
    p.add_argument("--port", type=int, help="HTTP port (overrides settings)")
    p.set_defaults(func=run_ingest)

    k = subparsers.add_parser("keys", help="manage the ingestion service's API keys")
    k.add_argument("--config", help="TOML file with an [ingest] table (or $VITALGATE_CONFIG)")
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = ks.add_parser("create", help="create a key and print it (shown once)")
    c.add_argument("name")
    c.add_argument("--scope", required=True, metavar="SCOPES",
                   help="comma-separated: read, clinical, platform, admin (admin holds all)")
    c.add_argument("--holder", metavar="H",
                   help="limit the key to devices with this device_holder and their patients")
    c.set_defaults(func=keys_create)
    ks.add_parser("list", help="list keys (names, scopes, holder, dates; never the keys)"
                  ).set_defaults(func=keys_list)
    r = ks.add_parser("revoke", help="revoke a key (the service refuses it within 1 s)")
    r.add_argument("name")
    r.set_defaults(func=keys_revoke)
    b = ks.add_parser("retire-bootstrap",
                      help="stop accepting VITALGATE_API_KEY (within 1 s); --undo accepts it again")
    b.add_argument("--undo", action="store_true")
    b.set_defaults(func=keys_retire_bootstrap)


def _settings(args: argparse.Namespace, **overrides: Any) -> Any:
    from ingest.settings import IngestSettings

    return load_settings(IngestSettings, getattr(args, "config", None), **overrides)


def run_ingest(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ingest.service import run

    overrides = {"http_port": args.port} if args.port is not None else {}
    try:
        settings = _settings(args, **overrides)
    except (ValidationError, FileNotFoundError) as exc:
        print(f"vitalgate ingest: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        run(settings)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) and "bind" not in str(exc):
            raise
        # the HTTP port is taken (or the address is not ours): the API and dashboard are what
        # ingest is for, so say so and exit non-zero for the service manager to see
        log.error("vitalgate ingest: cannot serve HTTP on %s:%d: %s", settings.http_host,
                  settings.http_port, exc.strerror or exc)
        return 1
    return 0


def _db(args: argparse.Namespace) -> Any:
    from ingest.db import schema

    settings = _settings(args)
    return schema.open_store(settings.readings_location, synchronous=settings.sqlite_synchronous)


def _now() -> int:
    return time.time_ns() // 1_000_000


def keys_create(args: argparse.Namespace) -> int:
    from ingest import keys

    try:
        scopes = keys.parse_scopes(args.scope)
    except keys.ApiKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db = _db(args)
    try:
        key = db.write_sync(lambda c: keys.create(c, args.name, _now(), scopes, args.holder))
    except keys.ApiKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    sys.stdout.write(f"{key}\n")
    limit = f", limited to device_holder {args.holder!r}" if args.holder else ""
    sys.stderr.write(f"key {args.name!r} created with scope {','.join(scopes)}{limit}; "
                     "it is shown only this once\n")
    return 0


def keys_list(args: argparse.Namespace) -> int:
    from ingest import keys

    db = _db(args)
    try:
        rows = db.read_sync(keys.list_keys)
        retired = db.read_sync(keys.bootstrap_retired_at)
    finally:
        db.close()

    def fmt(ms: int | None) -> str:
        return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")

    sys.stdout.write("NAME\tSCOPES\tHOLDER\tCREATED\tSTATE\n")
    for k in rows:
        state = "revoked " + fmt(k.revoked_at) if k.revoked_at else "active"
        sys.stdout.write(f"{k.name}\t{','.join(k.scopes)}\t{k.holder or '-'}\t"
                         f"{fmt(k.created_at)}\t{state}\n")
    boot = "retired " + fmt(retired) if retired is not None else "accepted when set"
    sys.stdout.write(f"(VITALGATE_API_KEY)\tadmin\t-\t-\t{boot}\n")
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    from ingest import keys

    db = _db(args)
    try:
        done = db.write_sync(lambda c: keys.revoke(c, args.name, _now()))
    finally:
        db.close()
    if not done:
        print(f"error: no active key named {args.name!r}", file=sys.stderr)
        return 1
    sys.stdout.write(f"revoked {args.name}\n")
    return 0


def keys_retire_bootstrap(args: argparse.Namespace) -> int:
    from ingest import keys

    db = _db(args)
    try:
        db.write_sync(lambda c: keys.retire_bootstrap(c, _now(), undo=args.undo))
    finally:
        db.close()
    sys.stdout.write("the bootstrap key VITALGATE_API_KEY is accepted again\n" if args.undo else
                     "the bootstrap key VITALGATE_API_KEY is retired (refused within 1 s)\n")
    return 0
