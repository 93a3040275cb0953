"""``vitalgate ews …``: early-warning scores from the command line.

``vitalgate ews score FILE`` (``-`` for stdin) reads a vitals CSV (see :mod:`ews.csvio`) and
writes the same rows plus ``point, result, risk, partial, missing, cause`` to stdout. Every bad
row is reported on stderr as ``FILE:LINE: why``, written with empty score columns, and makes the
exit status 1; the other rows are still scored. Exit 2 when the file cannot be read at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ews.csvio import CsvFormatError, score_csv, write_scored_csv
from ews.tables import TABLES


def register(subparsers: Any) -> None:
    """Add ``ews`` and its subcommands to the ``vitalgate`` command."""
    ews = subparsers.add_parser(
        "ews", help="early-warning scores (NEWS2)", description=__doc__.splitlines()[0]
    )
    sub = ews.add_subparsers(dest="ews_command", metavar="SUBCOMMAND")
    score = sub.add_parser(
        "score",
        help="score a vitals CSV",
        description="Score every row of a vitals CSV; bad rows are reported on stderr (exit 1).",
    )
    score.add_argument("file", help="CSV with canonical column names, or - for stdin")
    score.add_argument(
        "--table", choices=sorted(TABLES), default="news2", help="chart (default news2)"
    )
    score.set_defaults(func=score_command)

    def usage(_args: argparse.Namespace) -> int:
        ews.print_help()
        return 2

    ews.set_defaults(func=usage)


def score_command(args: argparse.Namespace) -> int:
    table = TABLES[args.table]
    name = "<stdin>" if args.file == "-" else args.file
    try:
        if args.file == "-":
            scored = score_csv(sys.stdin, table)
        else:
            with open(args.file, newline="", encoding="utf-8-sig") as fh:
                scored = score_csv(fh, table)
    except (OSError, UnicodeDecodeError, CsvFormatError) as exc:
        print(f"{name}: cannot score: {exc}", file=sys.stderr)
        return 2
    write_scored_csv(scored, sys.stdout)
    errors = scored.row_errors
    for err in errors:
        print(f"{name}:{err.line}: {err.message}", file=sys.stderr)
    if errors:
        print(f"{name}: {len(errors)} of {len(scored.rows)} rows not scored", file=sys.stderr)
    return 1 if errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ews`` commands alone (``python -m ews.cli ews score FILE``)."""
    parser = argparse.ArgumentParser(prog="vitalgate")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args))


if __name__ == "__main__":
    sys.exit(main())
