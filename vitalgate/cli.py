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
from typing import Any

from vitalgate import __version__

#: modules that provide ``register(subparsers)``, in help order.
COMPONENT_CLIS = (
    "ews.cli",
    "gateway.cli",
    "ingest.cli",
    "simulators.cli",
    "simulators.devices.cli",
    "vitalgate.demo",
)

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitalgate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vitalgate {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="-v debug of vitalgate, -vv also of the libraries (default: info)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMPONENT_CLIS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # component not built yet
            raise
        _register(name, module, sub)
    return parser


def _register(name: str, module: Any, sub: Any) -> None:
    """The composition root: the gateway never imports the simulators; ``--simulate``'s
    backend (bumble link + virtual watches) is handed to it here."""
    if name == "gateway.cli":
        from simulators.simulate import SIMULATE

        module.register(sub, simulate=SIMULATE)
    else:
        module.register(sub)


#: libraries that are chatty at INFO/DEBUG; they speak at WARNING unless -vv asks for them.
NOISY_LIBRARIES = ("bumble", "amqtt", "aiohttp.access", "asyncio", "transitions", "passlib")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Services log at INFO by default (what they connected to, and why they cannot): a
    gateway or ingest started by hand or by systemd says what it is doing. INFO carries no
    patient data and no credentials (tests/test_privacy_logs.py)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        for name in NOISY_LIBRARIES:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
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
