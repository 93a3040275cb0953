"""Vectorised, table-driven NEWS2 scoring of many rows at once.

``score_news2(columns, table)`` follows the scipy.signal pattern: a guard turns the columns into
float64 arrays and small integer context codes (any Python work here is per distinct context
value, not per row), then a numeric body scores all rows with whole-array numpy operations only.

How the body works. For each parameter, the count of comparison edges a value does not exceed
(``x <= edge``, summed over a handful of edges) identifies its band, its plausibility and whether
it is missing (NaN fails every comparison); a 16-bit code per band is then looked up and summed
into a per-row accumulator laid out as

======  ================================================================
bits    field
======  ================================================================
0–5     total points (≤ 63)
6–8     parameters scoring ``table.red`` (3): the "single red" trigger
9–11    missing vitals
12–14   invalid values (a parameter, or the context, counts once)
15      some context (consciousness, oxygen, SpO2 scale) was assumed
======  ================================================================

so that points, result band, validity and partiality are one 65,536-entry table look-up each.
Words (result, risk, cause, missing, reason) are produced lazily from those codes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ews.score import Result, Risk
from ews.tables import NEWS2, Bands, Parameter, Plausible, ScoringTable

# -- the packed accumulator ---------------------------------------------------------------------
POINTS_MASK: Final = 0x3F
RED_ONE: Final = 1 << 6
MISSING_ONE: Final = 1 << 9
INVALID_ONE: Final = 1 << 12
ASSUMED_BIT: Final = 1 << 15

#: context column names accepted besides the table's vitals.
CONTEXT: Final = ("consciousness", "on_oxygen", "spo2_scale")

#: result bands, as stored in ``ScoreResult.band``: -1 invalid row, else an index into these.
BAND_NAMES: Final = ("zero", "low", "single-red", "medium", "high")
#: Cexup's words for each band (the doctor summary counts patients by exactly these four).
RESULT_WORDS: Final[tuple[str, ...]] = tuple(
    r.value for r in (Result.NORMAL, Result.RENDAH, Result.SEDANG, Result.SEDANG, Result.TINGGI))
#: NEWS2 clinical risk for each band (news2.md, "Aggregate risk and response").
RISK_WORDS: Final[tuple[str, ...]] = tuple(
    r.value for r in (Risk.LOW, Risk.LOW, Risk.LOW_MEDIUM, Risk.MEDIUM, Risk.HIGH))
_RESULT_BY_BAND: Final = np.array(("", *RESULT_WORDS))  # index band + 1
_RISK_BY_BAND: Final = np.array(("", *RISK_WORDS))

NO_VITALS: Final = "no vital signs"

_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "y", "t", "on", "o2", "oxygen"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "n", "f", "off", "air"})
_UNKNOWN_WORDS: Final = frozenset({"", "nan", "none", "null", "unknown"})

# context codes (int8): consciousness -1 assumed / -2 invalid / else level index;
# oxygen -1 assumed / -2 invalid / 0 air / 1 oxygen; scale 0 assumed / -2 invalid / 1 / 2.
ASSUMED: Final = -1
INVALID: Final = -2
SCALE_ASSUMED: Final = 0

Float64Array = NDArray[np.float64]
Int8Array = NDArray[np.int8]
BoolArray = NDArray[np.bool_]


# -- compiled tables ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _CompiledBands:
    edges: Float64Array  # comparison edges: [low limit, band edges…, high limit, +inf]
    lut: NDArray[np.uint16]  # code by count of edges with x <= edge


@dataclass(frozen=True, eq=False)
class _Compiled:
    table: ScoringTable
    params: tuple[Parameter, ...]
    bands: tuple[_CompiledBands, ...]
    scale2_index: int  # index of the scale-2 parameter, -1 without scale 2
    scale2_air: _CompiledBands | None
    scale2_oxygen: _CompiledBands | None
    consciousness_code: NDArray[np.uint16]  # by consciousness code + 2
    oxygen_code: NDArray[np.uint16]  # by oxygen code + 2
    points_lut: Int8Array  # by accumulator: total, -1 if invalid
    band_lut: Int8Array  # by accumulator: band, -1 if invalid
    points_band_lut: NDArray[np.int16]  # both in one look-up: bytes (points, band) of each entry
    valid_lut: BoolArray
    partial_lut: BoolArray
    red_lut: BoolArray


def _tol(table: ScoringTable, value: float) -> float:
    return table.tolerance * max(1.0, abs(value))


def _compile_bands(table: ScoringTable, bands: Bands, plausible: Plausible) -> _CompiledBands:
    lo, hi = plausible.low, plausible.high
    low_edge = lo + _tol(table, lo) if plausible.low_open else lo - _tol(table, lo)
    edges = [low_edge, *(e + _tol(table, e) for e in bands.edges), hi + _tol(table, hi), math.inf]
    n_edges = len(edges)
    by_index = np.empty(n_edges + 1, np.uint16)  # index = number of edges below x
    by_index[0] = INVALID_ONE  # at or below the low limit
    for i, pts in enumerate(bands.points):
        by_index[1 + i] = pts | (RED_ONE if pts >= table.red else 0)
    by_index[n_edges - 1] = INVALID_ONE  # above the high limit, +inf included
    by_index[n_edges] = MISSING_ONE  # NaN is above every edge
    lut = by_index[::-1].copy()  # count of edges with x <= edge = n_edges - index
    return _CompiledBands(np.array(edges, np.float64), lut)


_COMPILED: dict[int, _Compiled] = {}


def _compile(table: ScoringTable) -> _Compiled:
    """The table's look-up arrays, built once per table object (keyed by identity: hashing a
    nested frozen dataclass on every call would cost more than scoring a small batch)."""
    comp = _COMPILED.get(id(table))
    if comp is None or comp.table is not table:
        if len(_COMPILED) > 64:
            _COMPILED.clear()
        comp = _COMPILED[id(table)] = _build(table)
    return comp


def _build(table: ScoringTable) -> _Compiled:
    params = table.parameters
    bands = tuple(_compile_bands(table, p.bands, p.plausible) for p in params)
    s2 = table.vitals.index(table.scale2_parameter) if table.has_scale2 else -1
    s2_air = s2_oxy = None
    if table.spo2_scale2_air is not None and table.spo2_scale2_oxygen is not None:
        plaus = params[s2].plausible
        s2_air = _compile_bands(table, table.spo2_scale2_air, plaus)
        s2_oxy = _compile_bands(table, table.spo2_scale2_oxygen, plaus)

    def level_code(points: int) -> int:
        return points | (RED_ONE if points >= table.red else 0)

    default_points = table.consciousness[0][1]
    cons = np.array(
        [0, level_code(default_points), *(level_code(p) for _, p in table.consciousness)], np.uint16
    )
    oxy = np.array([0, 0, 0, table.oxygen_points], np.uint16)

    acc = np.arange(1 << 16, dtype=np.int64)
    total = acc & POINTS_MASK
    red = (acc >> 6) & 7
    missing = (acc >> 9) & 7
    invalid = (acc >> 12) & 7
    assumed = (acc >> 15) & 1
    valid = (invalid == 0) & (missing < len(params))
    band = np.select(
        [total >= table.high_from, total >= table.medium_from, red > 0, total > 0],
        [4, 3, 2, 1],
        0,
    )
    return _Compiled(
        table=table,
        params=params,
        bands=bands,
        scale2_index=s2,
        scale2_air=s2_air,
        scale2_oxygen=s2_oxy,
        consciousness_code=cons,
        oxygen_code=oxy,
        points_lut=np.where(valid, total, -1).astype(np.int8),
        band_lut=np.where(valid, band, -1).astype(np.int8),
        points_band_lut=np.stack([np.where(valid, total, -1), np.where(valid, band, -1)], axis=1)
        .astype(np.int8).view(np.int16).ravel(),
        valid_lut=valid,
        partial_lut=(missing > 0) | (assumed > 0),
        red_lut=valid & (red > 0),
    )


#: up to this many rows, a parameter's edges are compared in one broadcast (edges × rows) call:
#: for the stream scorer's ~1,000-patient rescoring the per-call cost dominates, not the data.
SMALL: Final = 4_096

def _codes(x: Float64Array, cb: _CompiledBands) -> NDArray[np.uint16]:
    """The 16-bit code of every value: count the edges each value does not exceed, look it up."""
    edges = cb.edges
    if x.size <= SMALL:  # one broadcast comparison: fewer calls, same sum of x <= edge
        small: NDArray[np.uint16] = cb.lut.take(
            np.less_equal(x, edges[:, None]).sum(axis=0, dtype=np.uint8)
        )
        return small
    count = np.less_equal(x, edges[0]).view(np.uint8)
    scratch = np.empty(x.shape, np.bool_)
    for edge in edges[1:]:
        np.less_equal(x, edge, out=scratch)
        np.add(count, scratch.view(np.uint8), out=count)
    codes: NDArray[np.uint16] = cb.lut.take(count)
    return codes


def _codes_into(
    x: Float64Array,
    cb: _CompiledBands,
    out: NDArray[np.uint16],
    count: NDArray[np.uint8],
    scratch: BoolArray,
) -> None:
    """:func:`_codes` into ``out``, with caller-owned scratch of ``x``'s length (one block)."""
    edges = cb.edges
    np.less_equal(x, edges[0], out=count.view(np.bool_))
    for edge in edges[1:]:
        np.less_equal(x, edge, out=scratch)
        np.add(count, scratch.view(np.uint8), out=count)
    cb.lut.take(count, out=out)


#: rows scored per block by the batch body: a block's vitals (8 B/row each) and its scratch
#: (~0.45 MB in all) stay in a core's L2 cache (2 MiB here) while every edge of every parameter
#: is compared, so each vital is read from memory once instead of once per edge; the
#: whole-array body was memory-bound (docs/benchmarks.md, "Stream and batch scorer").
BLOCK: Final = 32_768


# -- the result -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ScoreResult:
    """Scores of ``len(result)`` rows. Arrays are numpy; word arrays are computed on first use.

    ``points`` is -1 and ``result``/``risk`` are ``''`` where ``valid`` is False (see ``reason``).
    """

    table: ScoringTable
    points: Int8Array  #: total points, -1 where the row is invalid
    band: Int8Array  #: index into BAND_NAMES / RESULT_WORDS / RISK_WORDS, -1 where invalid
    values: Mapping[str, Float64Array] = field(repr=False)  #: the vitals as scored (NaN missing)
    codes: Mapping[str, NDArray[np.uint16]] = field(repr=False)  #: packed code per parameter
    accumulator: NDArray[np.uint16] = field(repr=False)
    consciousness_code: Int8Array = field(repr=False)
    oxygen_code: Int8Array = field(repr=False)
    scale_code: Int8Array = field(repr=False)
    raw_context: Mapping[str, NDArray[Any]] = field(repr=False, default_factory=dict)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def take(self, rows: NDArray[np.intp]) -> ScoreResult:
        """The scores of ``rows`` only (their words are then computed for those rows alone)."""
        n = len(self)

        def pick(a: NDArray[Any]) -> NDArray[Any]:
            return a[rows] if a.ndim else a  # context codes may be scalars for all rows

        return ScoreResult(
            table=self.table,
            points=self.points[rows],
            band=self.band[rows],
            values={k: np.broadcast_to(v, (n,))[rows] for k, v in self.values.items()},
            codes={k: v[rows] for k, v in self.codes.items()},
            accumulator=self.accumulator[rows],
            consciousness_code=pick(self.consciousness_code),
            oxygen_code=pick(self.oxygen_code),
            scale_code=pick(self.scale_code),
            raw_context={k: pick(np.asarray(v)) for k, v in self.raw_context.items()},
        )

    @functools.cached_property
    def valid(self) -> BoolArray:
        return self.band >= 0

    @functools.cached_property
    def partial(self) -> BoolArray:
        return _compile(self.table).partial_lut.take(self.accumulator)

    @functools.cached_property
    def single_red(self) -> BoolArray:
        """A parameter scored 3 (the low-medium trigger when the total is ≤ 4)."""
        return _compile(self.table).red_lut.take(self.accumulator)

    @functools.cached_property
    def result(self) -> NDArray[np.str_]:
        """Cexup's words: normal, rendah, sedang, tinggi ('' where invalid)."""
        return _RESULT_BY_BAND.take(self.band.astype(np.intp) + 1)

    @functools.cached_property
    def risk(self) -> NDArray[np.str_]:
        """NEWS2 risk: low, low-medium, medium, high ('' where invalid)."""
        return _RISK_BY_BAND.take(self.band.astype(np.intp) + 1)

    @functools.cached_property
    def subscores(self) -> dict[str, Int8Array]:
        """Points per parameter (vitals, ``consciousness``, ``oxygen``); -1 missing or not scored."""
        valid = self.valid
        out: dict[str, Int8Array] = {}
        for name, code in self.codes.items():
            scored = valid & ((code & (MISSING_ONE | INVALID_ONE)) == 0)
            out[name] = np.where(scored, code & POINTS_MASK, -1).astype(np.int8)
        cons_points = np.array(
            [0, self.table.consciousness[0][1], *(p for _, p in self.table.consciousness)]
        )
        cons = cons_points.take(self.consciousness_code.astype(np.intp) + 2)
        out["consciousness"] = np.where(valid, cons, -1).astype(np.int8)
        oxy = np.where(self.oxygen_code == 1, self.table.oxygen_points, 0)
        out["oxygen"] = np.where(valid, oxy, -1).astype(np.int8)
        return out

    @functools.cached_property
    def missing(self) -> list[tuple[str, ...]]:
        """Per row, the vitals that were missing and the context that was assumed."""
        n = len(self)
        flags: list[tuple[str, BoolArray]] = [
            (name, (code & MISSING_ONE) != 0) for name, code in self.codes.items()
        ]
        flags.append(("consciousness", np.broadcast_to(self.consciousness_code == ASSUMED, (n,))))
        flags.append(("on_oxygen", np.broadcast_to(self.oxygen_code == ASSUMED, (n,))))
        if self.table.has_scale2:
            flags.append(("spo2_scale", np.broadcast_to(self.scale_code == SCALE_ASSUMED, (n,))))
        return _names_per_row(n, flags)

    @functools.cached_property
    def reason(self) -> list[str]:
        """Per row, why it could not be scored ('' for valid rows)."""
        out = [""] * len(self)
        bad = np.flatnonzero(~self.valid)
        if bad.size == 0:
            return out
        n = len(self)
        table = self.table
        for i in bad.tolist():
            why: list[str] = []
            for p in table.parameters:
                if int(self.codes[p.name][i]) & INVALID_ONE:
                    why.append(_invalid_value(p, float(self.values[p.name][i])))
            why.extend(self._context_reasons(i, n))
            out[i] = "; ".join(why) if why else NO_VITALS
        return out

    def _context_reasons(self, i: int, n: int) -> list[str]:
        why: list[str] = []
        codes = (
            (
                "consciousness",
                self.consciousness_code,
                f"is not one of {', '.join(self.table.levels)}",
            ),
            ("on_oxygen", self.oxygen_code, "is not a yes/no value"),
            (
                "spo2_scale",
                self.scale_code,
                "is not 1 or 2"
                if self.table.has_scale2
                else f"is not 1 ({self.table.name} has no scale 2)",
            ),
        )
        for name, code, text in codes:
            if int(np.broadcast_to(code, (n,))[i]) == INVALID:
                raw = self.raw_context.get(name)
                shown = np.broadcast_to(raw, (n,))[i] if raw is not None else "?"
                why.append(f"{name}={_show(shown)} {text}")
        return why

    @functools.cached_property
    def cause(self) -> list[tuple[str, ...]]:
        """Per row, Cexup cause strings for each parameter that scored > 0 (empty if invalid)."""
        n = len(self)
        per_row: list[list[str]] = [[] for _ in range(n)]
        subs = self.subscores
        for p in self.table.parameters:
            rows = np.flatnonzero(subs[p.name] > 0)
            cache = _CAUSE_CACHE.setdefault(p.label, {})
            if len(cache) > 10_000:
                cache.clear()
            for i, v in zip(rows.tolist(), self.values[p.name][rows].tolist(), strict=True):
                text = cache.get(v)
                if text is None:
                    text = cache[v] = f"{p.label} {format_value(v, p.decimals)}"
                per_row[i].append(text)
        levels = self.table.levels
        cons = np.broadcast_to(self.consciousness_code, (n,))
        for i in np.flatnonzero(subs["consciousness"] > 0).tolist():
            code = int(cons[i])
            per_row[i].append(f"Consciousness {levels[code] if code >= 0 else levels[0]}")
        for i in np.flatnonzero(subs["oxygen"] > 0).tolist():
            per_row[i].append("Oxygen")
        return [tuple(c) for c in per_row]

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as plain Python values, for CSV/JSON output."""
        return {
            "point": int(self.points[i]),
            "result": str(self.result[i]),
            "risk": str(self.risk[i]),
            "partial": bool(self.partial[i]),
            "missing": list(self.missing[i]),
            "cause": list(self.cause[i]),
            "valid": bool(self.valid[i]),
            "reason": self.reason[i],
            "components": {k: int(v[i]) for k, v in self.subscores.items() if v[i] >= 0},
        }


#: cause strings already formatted, per label and value (vitals repeat: 80, 81, 36.8 …).
_CAUSE_CACHE: dict[str, dict[float, str]] = {}


def format_value(value: float, decimals: int) -> str:
    """A vital as shown in a cause: ``decimals`` digits, one more if the value needs it (RR 8.5)."""
    if decimals == 0 and value.is_integer():
        return str(int(value))
    if abs(value - round(value, decimals)) > 1e-4:
        decimals += 1
    return f"{value:.{decimals}f}"


def _show(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _invalid_value(p: Parameter, value: float) -> str:
    if not math.isfinite(value):
        return f"{p.name}={value} is not finite"
    return f"{p.name}={value:g} is impossible (must be {p.plausible.describe()})"


def _names_per_row(n: int, flags: list[tuple[str, BoolArray]]) -> list[tuple[str, ...]]:
    """Per row, the names whose flag is set: one bitmask per row, one tuple per distinct mask."""
    mask = np.zeros(n, np.int64)
    for bit, (_, flag) in enumerate(flags):
        mask |= flag.astype(np.int64) << bit
    cache: dict[int, tuple[str, ...]] = {}
    out: list[tuple[str, ...]] = []
    for m in mask.tolist():
        names = cache.get(m)
        if names is None:
            names = cache[m] = tuple(name for bit, (name, _) in enumerate(flags) if m >> bit & 1)
        out.append(names)
    return out


# -- the guard: columns → arrays and context codes --------------------------------------------
def _map_distinct(values: NDArray[Any], fn: Callable[[object], int]) -> Int8Array:
    """Apply ``fn`` once per distinct value (not once per row) of a non-numeric array."""
    try:
        uniq, inverse = np.unique(values, return_inverse=True)
        mapped = np.array([fn(u) for u in uniq.tolist()], np.int8)
        return mapped.take(inverse.reshape(values.shape))
    except TypeError:  # unorderable mix (e.g. None and str): fall back to a per-value cache
        cache: dict[object, int] = {}
        flat = [
            cache.setdefault(v, fn(v)) if _hashable(v) else fn(v) for v in values.ravel().tolist()
        ]
        return np.array(flat, np.int8).reshape(values.shape)


def _hashable(v: object) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _is_unknown(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str | bytes) and _text(v) in _UNKNOWN_WORDS


def _text(v: str | bytes) -> str:
    return (v.decode(errors="replace") if isinstance(v, bytes) else v).strip().lower()


def consciousness_codes(values: ArrayLike, table: ScoringTable = NEWS2) -> Int8Array:
    """Consciousness levels (any case; '' or None = unknown) → int8 codes (see module)."""
    levels = {level.lower(): i for i, level in enumerate(table.levels)}

    def code(v: object) -> int:
        if _is_unknown(v):
            return ASSUMED
        if isinstance(v, str | bytes):
            return levels.get(_text(v), INVALID)
        return INVALID

    arr = np.asarray(values, dtype=object if np.asarray(values).dtype.kind not in "US" else None)
    return _map_distinct(arr, code)


def oxygen_codes(values: ArrayLike) -> Int8Array:
    """On oxygen: bools, 0/1 (NaN unknown) or words (yes/no, true/false, o2/air; '' unknown)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return arr.astype(np.int8)
    if arr.dtype.kind in "iuf":
        f = arr.astype(np.float64)
        out = np.full(f.shape, INVALID, np.int8)
        out[f == 0] = 0
        out[f == 1] = 1
        out[np.isnan(f)] = ASSUMED
        return out

    def code(v: object) -> int:
        if isinstance(v, bool | np.bool_):
            return int(v)
        if _is_unknown(v):
            return ASSUMED
        if isinstance(v, int | float) and v in (0, 1):
            return int(v)
        if isinstance(v, str | bytes):
            t = _text(v)
            return 1 if t in _TRUE_WORDS else 0 if t in _FALSE_WORDS else INVALID
        return INVALID

    return _map_distinct(arr.astype(object) if arr.dtype.kind not in "USO" else arr, code)


def scale_codes(values: ArrayLike, table: ScoringTable = NEWS2) -> Int8Array:
    """SpO2 scale: 1 or 2 (0, NaN or '' unknown; 2 is invalid for a table without scale 2)."""
    allowed = (1, 2) if table.has_scale2 else (1,)
    arr = np.asarray(values)
    if arr.dtype.kind in "iufb":
        f = arr.astype(np.float64)
        out = np.full(f.shape, INVALID, np.int8)
        for s in allowed:
            out[f == s] = s
        out[np.isnan(f) | (f == 0)] = SCALE_ASSUMED
        return out

    def code(v: object) -> int:
        if _is_unknown(v):
            return SCALE_ASSUMED
        try:
            f = float(_text(v) if isinstance(v, str | bytes) else v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return INVALID
        if f == 0:
            return SCALE_ASSUMED
        return int(f) if f in allowed else INVALID

    return _map_distinct(arr, code)


def _length(name: str, value: ArrayLike) -> int | None:
    shape = np.shape(value)
    if len(shape) == 0:
        return None
    if len(shape) != 1:
        raise ValueError(f"column {name!r} must be a scalar or 1-D, got shape {shape}")
    return int(shape[0])


def score_news2(columns: Mapping[str, ArrayLike], table: ScoringTable = NEWS2) -> ScoreResult:
    """Score every row of ``columns`` (canonical names → equal-length arrays or scalars).

    Vitals (``table.vitals``) are floats with NaN (or a missing key) for missing; context
    columns are ``consciousness`` (A/C/V/P/U, any case), ``on_oxygen`` (bool) and
    ``spo2_scale`` (1 or 2); a missing key or unknown cell means the default was assumed.
    Raises ``ValueError`` for an unknown column, a non-numeric vital column or unequal lengths;
    bad *values* never raise: their row is marked invalid with a reason.
    """
    vitals = table.vitals
    unknown = sorted(set(columns) - set(vitals) - set(CONTEXT))
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; expected some of {[*vitals, *CONTEXT]}")
    lengths = {name: n for name, v in columns.items() if (n := _length(name, v)) is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns differ in length: {lengths}")
    n = next(iter(lengths.values()), 1)

    values: dict[str, Float64Array] = {}
    for name in vitals:
        if name not in columns:
            values[name] = np.broadcast_to(np.float64(np.nan), (n,))
            continue
        try:
            arr = np.asarray(columns[name], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} is not numeric: {exc}") from None
        values[name] = np.broadcast_to(arr, (n,))

    raw: dict[str, NDArray[Any]] = {}
    if "consciousness" in columns:
        raw["consciousness"] = np.asarray(columns["consciousness"])
        cons = consciousness_codes(columns["consciousness"], table)
    else:
        cons = np.array(ASSUMED, np.int8)
    if "on_oxygen" in columns:
        raw["on_oxygen"] = np.asarray(columns["on_oxygen"])
        oxy = oxygen_codes(columns["on_oxygen"])
    else:
        oxy = np.array(ASSUMED, np.int8)
    if "spo2_scale" in columns:
        raw["spo2_scale"] = np.asarray(columns["spo2_scale"])
        scale = scale_codes(columns["spo2_scale"], table)
    else:
        scale = np.array(SCALE_ASSUMED if table.has_scale2 else 1, np.int8)
    return score_arrays(values, cons, oxy, scale, table, n=n, raw_context=raw)


#: ``ews.score`` is the same function.
score = score_news2


def score_arrays(
    values: Mapping[str, Float64Array],
    consciousness: Int8Array,
    oxygen: Int8Array,
    scale: Int8Array,
    table: ScoringTable = NEWS2,
    *,
    n: int,
    raw_context: Mapping[str, NDArray[Any]] | None = None,
) -> ScoreResult:
    """The numeric body: float64 vitals (length ``n``, NaN missing) and int8 context codes
    (scalars or length ``n``) → scores. No per-row Python."""
    comp = _compile(table)
    if not table.has_scale2:
        scale = np.where(scale == SCALE_ASSUMED, np.int8(1), scale).astype(np.int8)
    cons_i = consciousness.astype(np.intp) + 2
    oxy_i = oxygen.astype(np.intp) + 2
    ctx = comp.consciousness_code.take(cons_i) + comp.oxygen_code.take(oxy_i)
    bad_ctx = (consciousness == INVALID) | (oxygen == INVALID) | (scale == INVALID)
    assumed = (consciousness == ASSUMED) | (oxygen == ASSUMED) | (scale == SCALE_ASSUMED)
    ctx = (ctx + bad_ctx * INVALID_ONE + assumed * ASSUMED_BIT).astype(np.uint16)

    acc = np.empty(n, np.uint16)
    acc[...] = ctx
    codes: dict[str, NDArray[np.uint16]] = {}
    if n > BLOCK and not (comp.scale2_index >= 0 and bool(np.any(scale == 2))):
        _blocked(comp, values, acc, codes, n)
    else:
        _whole(comp, values, acc, codes, scale, oxygen, n)
    # one look-up for points and band (two int8 per entry): half the random reads of two tables
    points_band = comp.points_band_lut.take(acc).view(np.int8).reshape(n, 2)
    return ScoreResult(
        table=table,
        points=points_band[:, 0],
        band=points_band[:, 1],
        values=values,
        codes=codes,
        accumulator=acc,
        consciousness_code=consciousness,
        oxygen_code=oxygen,
        scale_code=scale,
        raw_context=raw_context or {},
    )


def _blocked(
    comp: _Compiled,
    values: Mapping[str, Float64Array],
    acc: NDArray[np.uint16],
    codes: dict[str, NDArray[np.uint16]],
    n: int,
) -> None:
    """The body over blocks of BLOCK rows (no SpO2 scale 2 row in the batch)."""
    for p in comp.params:
        codes[p.name] = np.empty(n, np.uint16)
    count = np.empty(BLOCK, np.uint8)
    scratch = np.empty(BLOCK, np.bool_)
    pairs = [(values[p.name], codes[p.name], cb) for p, cb in zip(comp.params, comp.bands, strict=True)]
    for lo in range(0, n, BLOCK):
        hi = min(lo + BLOCK, n)
        m = hi - lo
        a = acc[lo:hi]
        for x, code, cb in pairs:
            c = code[lo:hi]
            _codes_into(x[lo:hi], cb, c, count[:m], scratch[:m])
            np.add(a, c, out=a)


def _whole(
    comp: _Compiled,
    values: Mapping[str, Float64Array],
    acc: NDArray[np.uint16],
    codes: dict[str, NDArray[np.uint16]],
    scale: Int8Array,
    oxygen: Int8Array,
    n: int,
) -> None:
    """The body over the whole batch at once (small batches, or SpO2 scale 2 present)."""
    for k, (p, cb) in enumerate(zip(comp.params, comp.bands, strict=True)):
        x = values[p.name]
        code = _codes(x, cb)
        if k == comp.scale2_index and bool(np.any(scale == 2)):
            code = _apply_scale2(comp, x, code, scale, oxygen, n)
        codes[p.name] = code
        np.add(acc, code, out=acc)


def _apply_scale2(
    comp: _Compiled,
    x: Float64Array,
    code: NDArray[np.uint16],
    scale: Int8Array,
    oxygen: Int8Array,
    n: int,
) -> NDArray[np.uint16]:
    assert comp.scale2_air is not None and comp.scale2_oxygen is not None
    s2 = np.broadcast_to(scale == 2, (n,))
    on_o2 = np.broadcast_to(oxygen == 1, (n,))
    code = code.copy()
    air_rows = np.flatnonzero(s2 & ~on_o2)
    o2_rows = np.flatnonzero(s2 & on_o2)
    code[air_rows] = _codes(np.ascontiguousarray(x[air_rows]), comp.scale2_air)
    code[o2_rows] = _codes(np.ascontiguousarray(x[o2_rows]), comp.scale2_oxygen)
    return code
