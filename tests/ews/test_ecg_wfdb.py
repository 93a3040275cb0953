"""The WFDB reader on the real PhysioNet files, on files written here, and fuzzed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ews.ecg import BEAT_SYMBOLS, WfdbError, read_annotations, read_header, read_record


def test_mitdb_100_format_212(shared_data: Path) -> None:
    sig, fs, names = read_record(shared_data / "mitdb" / "100")
    assert sig.shape == (650000, 2) and fs == 360.0 and names == ("MLII", "V5")
    # first sample is the header's initial value: (995 - 1024) / 200 mV and (1011 - 1024) / 200
    assert sig[0].tolist() == pytest.approx([-0.145, -0.065])
    samples, symbols = read_annotations(shared_data / "mitdb" / "100")
    beats = [s for s in symbols if s in BEAT_SYMBOLS]
    assert len(beats) == 2273  # as stated by the database
    assert Counter(symbols) == {"N": 2239, "A": 33, "V": 1, "+": 1}
    assert (np.diff(samples) >= 0).all() and samples[-1] < sig.shape[0]


def test_svdb_800_at_128_hz(shared_data: Path) -> None:
    sig, fs, _ = read_record(shared_data / "svdb" / "800")
    assert sig.shape == (230400, 2) and fs == 128.0
    _, symbols = read_annotations(shared_data / "svdb" / "800")
    assert sum(s in BEAT_SYMBOLS for s in symbols) == 1883
    assert "~" in symbols and "|" in symbols  # noise/artefact marks are read, not counted as beats


def test_format_16_numerics_with_gain_units_and_missing(shared_data: Path) -> None:
    base = shared_data / "mimic2_numerics" / "s00001-2896-10-10-00-31n"
    header = read_header(base)
    assert header.n_signals == 10 and header.signals[0].units == "bpm"
    sig, fs, names = read_record(base)
    assert fs == pytest.approx(1 / 60, rel=1e-6) and sig.shape == (1936, 10)
    assert names[0] == "HR" and names[6] == "SpO2"
    assert np.isnan(sig[:, 7]).any()  # NBP: -32768 = missing → NaN
    hr = sig[:, 0]
    assert 30 < np.median(hr[hr > 0]) < 150


def write_record(tmp: Path, fmt: int, digital: np.ndarray, gain: float = 200.0) -> Path:
    n, nsig = digital.shape
    base = tmp / "rec"
    lines = [f"rec {nsig} 250 {n}"]
    lines += [f"rec.dat {fmt} {gain:g}(10)/mV 12 0 0 0 0 lead{i}" for i in range(nsig)]
    (tmp / "rec.hea").write_text("\n".join(lines) + "\n")
    flat = digital.reshape(-1).astype(np.int64)
    if fmt == 16:
        (tmp / "rec.dat").write_bytes(flat.astype("<i2").tobytes())
    else:
        if flat.size % 2:
            flat = np.append(flat, 0)
        u = flat & 0xFFF
        a, b = u[0::2], u[1::2]
        packed = np.stack([a & 0xFF, ((a >> 8) & 0x0F) | ((b >> 4) & 0xF0), b & 0xFF], axis=1)
        (tmp / "rec.dat").write_bytes(packed.astype(np.uint8).tobytes())
    return base


@pytest.mark.parametrize("fmt", [212, 16])
def test_round_trip_written_here(tmp_path: Path, fmt: int) -> None:
    rng = np.random.default_rng(fmt)
    digital = rng.integers(-2047, 2048, size=(501, 3))
    digital[5, 1] = -2048 if fmt == 212 else -32768  # the format's "invalid sample" value
    sig, fs, names = read_record(write_record(tmp_path, fmt, digital))
    assert fs == 250.0 and names == ("lead0", "lead1", "lead2")
    expected = (digital - 10) / 200.0
    assert np.isnan(sig[5, 1])
    mask = np.ones_like(sig, dtype=bool)
    mask[5, 1] = False
    assert np.array_equal(sig[mask], expected[mask])


def test_truncated_signal_file_is_an_error(tmp_path: Path) -> None:
    base = write_record(tmp_path, 16, np.zeros((100, 2), dtype=np.int64))
    (tmp_path / "rec.dat").write_bytes((tmp_path / "rec.dat").read_bytes()[:100])
    with pytest.raises(WfdbError, match="truncated"):
        read_record(base)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("", "empty header"),
        ("rec\n", "name and a signal count"),
        ("rec 2 250 10\nrec.dat 16 200 12 0 0 0 0 a\n", "2 signals announced"),
        ("rec 1 250 10\nrec.dat 310 200 12 0 0 0 0 a\n", "format 310 is not supported"),
        ("rec 1 abc 10\nrec.dat 16\n", "bad record line"),
        ("rec 1 250 10\nrec.dat 16 2x0 12\n", "bad gain"),
        ("rec 1 250 10\nrec.dat 16 -/mV 12\n", "bad gain"),
        ("rec 1 250 -10\nrec.dat 16\n", "bad signal count"),
    ],
)
def test_bad_headers_name_the_problem(tmp_path: Path, header: str, message: str) -> None:
    (tmp_path / "rec.hea").write_text(header)
    (tmp_path / "rec.dat").write_bytes(b"\x00" * 40)
    with pytest.raises(WfdbError, match=message):
        read_record(tmp_path / "rec")


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(WfdbError, match="cannot read header"):
        read_record(tmp_path / "nope")
    with pytest.raises(WfdbError, match="cannot read annotations"):
        read_annotations(tmp_path / "nope")


def test_annotation_skip_aux_and_chn_words(tmp_path: Path) -> None:
    words = [
        (1 << 10) | 100,  # N at 100
        (59 << 10), 0x0001, 0x0000,  # SKIP +65536 (most significant word first)
        (5 << 10) | 4,  # V at 100 + 65536 + 4
        (63 << 10) | 3, 0x4241, 0x0043,  # AUX "ABC" padded
        (62 << 10) | 1,  # CHN
        (28 << 10) | 0,  # + rhythm at the same time
        0,
    ]  # fmt: skip
    (tmp_path / "a.atr").write_bytes(np.asarray(words, dtype="<u2").tobytes())
    samples, symbols = read_annotations(tmp_path / "a")
    assert samples.tolist() == [100, 65640, 65640]
    assert symbols == ("N", "V", "+")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_fuzz_annotations_never_crash(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f"
    Path(f"{path}.atr").write_bytes(data)
    try:
        samples, symbols = read_annotations(path)
    except WfdbError:
        return
    assert len(samples) == len(symbols)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet="rec.dat 0123456789/()+x:#-\n", max_size=120), blob=st.binary(max_size=60)
)
def test_fuzz_headers_raise_only_wfdb_error(
    tmp_path_factory: pytest.TempPathFactory, text: str, blob: bytes
) -> None:
    d = tmp_path_factory.mktemp("hdr")
    (d / "rec.hea").write_text(text)
    (d / "rec.dat").write_bytes(blob)
    try:
        sig, fs, names = read_record(d / "rec")
    except WfdbError:
        return
    assert sig.ndim == 2 and fs > 0 and len(names) == sig.shape[1]
