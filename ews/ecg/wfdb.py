"""A small reader for PhysioNet WFDB records: header text, signal formats 212 and 16, MIT annotations.

Only what the project's test data needs, written from the WFDB format specification
(header(5), signal(5), annotation(5) in the WFDB Applications Guide). Pure numpy; the only I/O
in ``ews.ecg``. Malformed files raise :class:`WfdbError` naming the file and what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "ANNOTATION_SYMBOLS",
    "BEAT_SYMBOLS",
    "SignalSpec",
    "WfdbError",
    "WfdbHeader",
    "read_annotations",
    "read_header",
    "read_record",
]


class WfdbError(ValueError):
    """A WFDB file is missing, truncated or not in a format this reader understands."""


#: MIT annotation codes (ecgcodes.h) → mnemonic symbol. Codes without a symbol are unused.
ANNOTATION_SYMBOLS: dict[int, str] = {
    0: " ", 1: "N", 2: "L", 3: "R", 4: "a", 5: "V", 6: "F", 7: "J", 8: "A", 9: "S",
    10: "E", 11: "j", 12: "/", 13: "Q", 14: "~", 16: "|", 18: "s", 19: "T", 20: "*",
    21: "D", 22: '"', 23: "=", 24: "p", 25: "B", 26: "^", 27: "t", 28: "+", 29: "u",
    30: "?", 31: "!", 32: "[", 33: "]", 34: "e", 35: "n", 36: "@", 37: "x", 38: "f",
    39: "(", 40: ")", 41: "r",
}  # fmt: skip

#: Symbols that mark a QRS complex (a beat). Rhythm, noise, comment and wave annotations
#: (``+ ~ | " x`` …) are not beats; ``x`` is a non-conducted P wave.
BEAT_SYMBOLS: frozenset[str] = frozenset("NLRBAaJSVrFejnE/fQ?")

# Pseudo-annotation codes of the MIT format (annot.h).
_SKIP, _NUM, _SUB, _CHN, _AUX = 59, 60, 61, 62, 63

# WFDB "invalid sample" values per format; decoded as NaN.
_INVALID_212 = -2048
_INVALID_16 = -32768
_DEFAULT_GAIN = 200.0  # adu per physical unit when the header gives 0 or nothing


@dataclass(frozen=True)
class SignalSpec:
    """One signal line of a header."""

    file_name: str
    fmt: int
    gain: float  # analogue-to-digital units per physical unit
    baseline: int  # digital value of 0 physical units
    units: str
    adc_zero: int
    description: str


@dataclass(frozen=True)
class WfdbHeader:
    """The record line and signal lines of a ``.hea`` file."""

    record_name: str
    n_signals: int
    fs: float
    n_samples: int | None
    signals: tuple[SignalSpec, ...]


_GAIN_RE = re.compile(r"^(?P<gain>[-+0-9.eE]+)?(?:\((?P<base>-?\d+)\))?(?:/(?P<units>\S+))?$")
_FMT_RE = re.compile(r"^(?P<fmt>\d+)(?:x\d+)?(?::\d+)?(?:\+(?P<offset>\d+))?$")


def read_header(path: str | Path) -> WfdbHeader:
    """Parse ``<path>.hea`` (``path`` without extension)."""
    hea = Path(f"{path}.hea")
    try:
        text = hea.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise WfdbError(f"{hea}: cannot read header: {exc}") from exc
    lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise WfdbError(f"{hea}: empty header")
    rec = lines[0].split()
    if len(rec) < 2:
        raise WfdbError(f"{hea}: record line needs a name and a signal count: {lines[0]!r}")
    name = rec[0].split("/", 1)[0]
    if "/" in rec[0]:
        raise WfdbError(f"{hea}: multi-segment records are not supported")
    try:
        n_sig = int(rec[1])
        fs = float(rec[2].split("/", 1)[0].split("(", 1)[0]) if len(rec) > 2 else 250.0
        n_samples = int(rec[3]) if len(rec) > 3 else None
    except ValueError as exc:
        raise WfdbError(f"{hea}: bad record line {lines[0]!r}: {exc}") from exc
    if n_sig < 0 or not fs > 0 or not np.isfinite(fs) or (n_samples is not None and n_samples < 0):
        raise WfdbError(f"{hea}: bad signal count or sampling frequency in {lines[0]!r}")
    if len(lines) < 1 + n_sig:
        raise WfdbError(f"{hea}: {n_sig} signals announced, {len(lines) - 1} signal lines found")
    specs = tuple(_parse_signal_line(hea, ln) for ln in lines[1 : 1 + n_sig])
    return WfdbHeader(name, n_sig, fs, n_samples, specs)


def _parse_signal_line(hea: Path, line: str) -> SignalSpec:
    f = line.split()
    if len(f) < 2:
        raise WfdbError(f"{hea}: signal line needs a file name and a format: {line!r}")
    fm = _FMT_RE.fullmatch(f[1])
    if fm is None:
        raise WfdbError(f"{hea}: bad format field {f[1]!r}")
    if fm.group("offset"):
        raise WfdbError(f"{hea}: byte offsets in signal files are not supported")
    fmt = int(fm.group("fmt"))
    gain, baseline, units = _DEFAULT_GAIN, None, "mV"
    if len(f) > 2:
        gm = _GAIN_RE.fullmatch(f[2])
        if gm is None:
            raise WfdbError(f"{hea}: bad gain field {f[2]!r}")
        if gm.group("gain"):
            try:
                gain = float(gm.group("gain")) or _DEFAULT_GAIN
            except ValueError as exc:
                raise WfdbError(f"{hea}: bad gain field {f[2]!r}") from exc
            if not np.isfinite(gain):
                raise WfdbError(f"{hea}: bad gain field {f[2]!r}")
        if gm.group("base"):
            baseline = int(gm.group("base"))
        units = gm.group("units") or units
    try:
        adc_zero = int(f[4]) if len(f) > 4 else 0
    except ValueError as exc:
        raise WfdbError(f"{hea}: bad ADC zero in {line!r}") from exc
    return SignalSpec(
        file_name=f[0],
        fmt=fmt,
        gain=gain,
        baseline=adc_zero if baseline is None else baseline,
        units=units,
        adc_zero=adc_zero,
        description=" ".join(f[8:]) if len(f) > 8 else "",
    )


def _decode(raw: npt.NDArray[np.uint8], fmt: int, n_sig: int, where: str) -> npt.NDArray[np.int32]:
    """Interleaved frames of one signal file → int32 array [n_frames, n_sig] (invalid → min int)."""
    if fmt == 16:
        usable = raw[: raw.size - raw.size % 2]
        vals = usable.view("<i2").astype(np.int32)
        vals[vals == _INVALID_16] = np.iinfo(np.int32).min
    elif fmt == 212:
        usable = raw[: raw.size - raw.size % 3].reshape(-1, 3).astype(np.int32)
        first = usable[:, 0] | ((usable[:, 1] & 0x0F) << 8)
        second = usable[:, 2] | ((usable[:, 1] & 0xF0) << 4)
        vals = np.empty(first.size * 2, dtype=np.int32)
        vals[0::2], vals[1::2] = first, second
        vals[vals >= 2048] -= 4096  # 12-bit two's complement
        vals[vals == _INVALID_212] = np.iinfo(np.int32).min
    else:
        raise WfdbError(f"{where}: signal format {fmt} is not supported (only 212 and 16)")
    n_frames = vals.size // n_sig
    return vals[: n_frames * n_sig].reshape(n_frames, n_sig)


def read_record(
    path: str | Path,
) -> tuple[npt.NDArray[np.float64], float, tuple[str, ...]]:
    """Read ``<path>.hea`` and its signal files.

    Returns ``(signal, fs, names)``: ``signal`` is float64 ``[n_samples, n_signals]`` in the
    header's physical units (mV for ECG), invalid samples as NaN; ``names`` are the signal
    descriptions.
    """
    header = read_header(path)
    folder = Path(path).parent
    n = header.n_samples
    groups: dict[str, list[int]] = {}
    for i, spec in enumerate(header.signals):
        groups.setdefault(spec.file_name, []).append(i)
    columns: dict[int, npt.NDArray[np.float64]] = {}
    for file_name, idx in groups.items():
        fmts = {header.signals[i].fmt for i in idx}
        dat = folder / file_name
        if len(fmts) != 1:
            raise WfdbError(f"{dat}: signals in one file must share a format, got {sorted(fmts)}")
        try:
            raw = np.fromfile(dat, dtype=np.uint8)
        except OSError as exc:
            raise WfdbError(f"{dat}: cannot read signal file: {exc}") from exc
        digital = _decode(raw, fmts.pop(), len(idx), str(dat))
        if n is not None:
            if digital.shape[0] < n:
                raise WfdbError(f"{dat}: truncated, {digital.shape[0]} of {n} samples present")
            digital = digital[:n]
        for col, i in enumerate(idx):
            spec = header.signals[i]
            d = digital[:, col]
            phys = (d.astype(np.float64) - spec.baseline) / spec.gain
            phys[d == np.iinfo(np.int32).min] = np.nan
            columns[i] = phys
    length = min(c.size for c in columns.values()) if columns else 0
    signal = np.empty((length, header.n_signals), dtype=np.float64)
    for i, col_values in columns.items():
        signal[:, i] = col_values[:length]
    names = tuple(s.description for s in header.signals)
    return signal, header.fs, names


def read_annotations(
    path: str | Path, ext: str = "atr"
) -> tuple[npt.NDArray[np.int64], tuple[str, ...]]:
    """Read a MIT-format annotation file ``<path>.<ext>``.

    Returns ``(samples, symbols)``: the sample index of every annotation and its mnemonic
    (all annotation types; filter with :data:`BEAT_SYMBOLS` for beats).
    """
    atr = Path(f"{path}.{ext}")
    try:
        data = atr.read_bytes()
    except OSError as exc:
        raise WfdbError(f"{atr}: cannot read annotations: {exc}") from exc
    words = np.frombuffer(data[: len(data) - len(data) % 2], dtype="<u2")
    samples: list[int] = []
    symbols: list[str] = []
    t = 0
    i = 0
    n = words.size
    while i < n:
        w = int(words[i])
        code, value = w >> 10, w & 0x3FF
        i += 1
        if code == 0 and value == 0:
            break
        if code == _SKIP:
            if i + 2 > n:
                raise WfdbError(f"{atr}: SKIP pseudo-annotation truncated at word {i}")
            # 32-bit interval stored as two 16-bit words, most significant first
            hi, lo = int(words[i]), int(words[i + 1])
            skip = (hi << 16) | lo
            if skip >= 1 << 31:
                skip -= 1 << 32
            t += skip
            i += 2
        elif code == _AUX:
            i += (value + 1) // 2  # aux bytes, padded to an even count
        elif code in (_NUM, _SUB, _CHN):
            pass  # attribute of the previous annotation: not needed here
        else:
            t += value
            samples.append(t)
            symbols.append(ANNOTATION_SYMBOLS.get(code, "?" if code == 30 else f"[{code}]"))
    return np.asarray(samples, dtype=np.int64), tuple(symbols)
