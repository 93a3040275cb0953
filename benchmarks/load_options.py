"""The command line of a load benchmark: how many readings, patients and seconds, or --quick."""

from __future__ import annotations

import argparse


def load_parser(doc: str | None, *, n: int, patients: int, seconds: int) -> argparse.ArgumentParser:
    """``--quick``, ``--n`` readings, ``--patients``, ``--seconds``; described by ``doc``'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--patients", type=int, default=patients)
    parser.add_argument("--seconds", type=int, default=seconds)
    return parser
