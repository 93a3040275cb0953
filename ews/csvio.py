"""Vitals CSV in, scored CSV out.

Input: a header row, then one row per observation. Columns named like the table's vitals
(``respiratory_rate``, ``spo2``, ``systolic_bp``, ``heart_rate``, ``temperature``) and the
context columns (``consciousness``, ``on_oxygen``, ``spo2_scale``) are scored; any other column
is passed through unchanged. A missing column means that vital is missing in every row; an empty
cell (or ``nan``) means it is missing in that row.

The file is parsed into column arrays and scored in one vectorised call. A row that cannot be
parsed (wrong number of fields, a vital that is not a number) is a :class:`RowError` and is
not scored; a row the scorer rejects (impossible value, unknown consciousness level, no vital at
all) is a :class:`RowError` too. Output keeps every row in input order; a bad row gets empty
score columns, so output lines up with input.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TextIO

import numpy as np
from numpy.typing import NDArray

from ews.news2 import CONTEXT, ScoreResult, score_news2
from ews.tables import NEWS2, ScoringTable

#: columns appended to the output (replacing input columns of the same name).
OUTPUT_COLUMNS: Final = ("point", "result", "risk", "partial", "missing", "cause")


class CsvFormatError(ValueError):
    """The file as a whole cannot be read as a vitals CSV (no header, duplicate columns)."""


@dataclass(frozen=True)
class RowError:
    line: int  #: 1-based line number in the file where the row ends
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class ScoredCsv:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    lines: tuple[int, ...]  #: line number of each row
    result: ScoreResult
    errors: dict[int, list[str]]  #: row index → why the row is bad

    @property
    def row_errors(self) -> list[RowError]:
        return [RowError(self.lines[i], "; ".join(msgs)) for i, msgs in sorted(self.errors.items())]


def score_csv(stream: Iterable[str], table: ScoringTable = NEWS2) -> ScoredCsv:
    """Read a vitals CSV from ``stream`` and score all its rows in one call."""
    reader = csv.reader(stream)
    header: list[str] | None = None
    rows: list[tuple[str, ...]] = []
    lines: list[int] = []
    errors: dict[int, list[str]] = {}
    for record in reader:
        if not record:
            continue  # a blank line (a row of empty cells is a row, and gets reported)
        if header is None:
            header = [cell.strip() for cell in record]
            dups = sorted({h for h in header if header.count(h) > 1})
            if dups:
                raise CsvFormatError(f"line {reader.line_num}: duplicate column(s) {dups}")
            continue
        if len(record) != len(header):
            errors[len(rows)] = [f"expected {len(header)} fields, got {len(record)}"]
            record = (record + [""] * len(header))[: len(header)]
        rows.append(tuple(record))
        lines.append(reader.line_num)
    if header is None:
        raise CsvFormatError("empty CSV: no header row")

    n = len(rows)
    columns: dict[str, NDArray[np.float64] | NDArray[np.str_]] = {}
    vitals = set(table.vitals)
    for j, name in enumerate(header):
        if name in vitals:
            columns[name] = _parse_floats(name, [r[j] for r in rows], errors)
        elif name in CONTEXT:
            columns[name] = np.array([r[j].strip() for r in rows], dtype=np.str_)
    for i in errors:  # rows that failed to parse are not scored
        for name in table.vitals:
            if name in columns:
                columns[name][i] = np.nan
    result = score_news2({k: v for k, v in columns.items()}, table) if n else _empty(table)
    for i in np.flatnonzero(~result.valid).tolist():
        if i not in errors:
            errors[i] = [result.reason[i]]
    return ScoredCsv(tuple(header), tuple(rows), tuple(lines), result, errors)


def _empty(table: ScoringTable) -> ScoreResult:
    return score_news2({name: np.empty(0) for name in table.vitals}, table)


def _parse_floats(name: str, cells: list[str], errors: dict[int, list[str]]) -> NDArray[np.float64]:
    out = np.empty(len(cells), np.float64)
    for i, cell in enumerate(cells):
        text = cell.strip()
        if not text:
            out[i] = math.nan
            continue
        try:
            out[i] = float(text)
        except ValueError:
            out[i] = math.nan
            errors.setdefault(i, []).append(f"{name}={text!r} is not a number")
    return out


def write_scored_csv(scored: ScoredCsv, out: TextIO) -> None:
    """Write the input rows plus the score columns (empty for bad rows)."""
    header = list(scored.header)
    extra = [c for c in OUTPUT_COLUMNS if c not in header]
    full = header + extra
    pos = {c: full.index(c) for c in OUTPUT_COLUMNS}
    writer = csv.writer(out)  # RFC 4180: CRLF, and a field holding CR or LF is quoted
    writer.writerow(full)
    res = scored.result
    points = res.points.tolist()
    results = res.result.tolist()
    risks = res.risk.tolist()
    partial = res.partial.tolist()
    for i, row in enumerate(scored.rows):
        cells = [*row, *([""] * len(extra))]
        if i in scored.errors:
            for c in OUTPUT_COLUMNS:
                cells[pos[c]] = ""
        else:
            cells[pos["point"]] = str(points[i])
            cells[pos["result"]] = results[i]
            cells[pos["risk"]] = risks[i]
            cells[pos["partial"]] = "true" if partial[i] else "false"
            cells[pos["missing"]] = "; ".join(res.missing[i])
            cells[pos["cause"]] = "; ".join(res.cause[i])
        writer.writerow(cells)
