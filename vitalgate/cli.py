"""The ``vitalgate`` command. Each component owns its subcommands and registers them here.

A component module exposes ``register(subparsers)``; it adds its parsers and sets
``func=callable(args) -> int`` on each. Components are imported lazily so that one with
missing optional parts never breaks the others' commands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from vitalgate import __version__

#: modules that provide ``register(subparsers)``, in help order.
COMPONENT_CLIS = (
    "ews.cli",
    "gateway.cli",
    "ingest.cli",
    "simulators.cli",
    "vitalgate.demo",
)

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitalgate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vitalgate {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMPONENT_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # component not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
