"""Importers on the real PhysioNet recordings in ../shared/data, and fuzzed input."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.importers import (
    ImportFormatError,
    load,
    load_tracks,
    parse_wfdb_header,
    read_physionet2012,
    read_psv,
    read_wfdb_numerics,
    total_dropped,
)
from vitalgate.contract import PLAUSIBLE, VITALS

H = 3_600_000
MIMIC = "mimic2_numerics/s00001-2896-10-10-00-31n.hea"


def assert_plausible(track_vitals: dict[str, np.ndarray]) -> None:
    assert set(track_vitals) == set(VITALS)
    for v, a in track_vitals.items():
        present = a[~np.isnan(a)]
        if present.size:
            assert PLAUSIBLE[v][0] <= present.min() and present.max() <= PLAUSIBLE[v][1]


def test_challenge_2019_psv_is_hourly_with_sepsis_labels(shared_data: Path) -> None:
    tracks = load_tracks(shared_data / "physionet2019")
    assert len(tracks) == 50
    first = read_psv(shared_data / "physionet2019" / "p100001.psv")
    assert first.name == "p100001" and len(first) == 22  # 23 data rows, the first has no vitals
    assert first.t_ms[0] == 2 * H  # ICULOS 2
    assert first.vitals["heart_rate"][0] == 93 and first.vitals["spo2"][0] == 92.5
    assert np.nanmin(first.vitals["heart_rate"]) == 91 and np.nanmax(first.vitals["heart_rate"]) == 107
    gaps = np.concatenate([np.diff(t.t_ms) for t in tracks])
    assert np.all(gaps % H == 0) and np.mean(gaps == H) > 0.9
    assert sum(bool(np.nansum(t.annotations["SepsisLabel"])) for t in tracks) == 25
    for t in tracks:
        assert_plausible(t.vitals)
        assert len(t.annotations["SepsisLabel"]) == len(t)
    hr = np.concatenate([t.vitals["heart_rate"] for t in tracks])
    assert 70 < np.nanmedian(hr) < 100


def test_challenge_2012_maps_parameters_and_keeps_irregular_minutes(shared_data: Path) -> None:
    track = read_physionet2012(shared_data / "physionet2012" / "set-a" / "132539.txt")
    assert track.meta["RecordID"] == 132539 and track.meta["Age"] == 54
    assert track.t_ms[0] == 7 * 60_000  # 00:07
    assert track.row(0) == {"heart_rate": 73, "diastolic_bp": 65, "systolic_bp": 147,
                            "respiratory_rate": 19, "temperature": 35.1}
    assert np.all(track.t_ms % 60_000 == 0) and track.t_ms[-1] <= 48 * H
    assert track.count("heart_rate") == 37
    tracks = load_tracks(shared_data / "physionet2012" / "set-a")
    assert len(tracks) == 40
    assert sum(t.count("spo2") for t in tracks) == 30  # SaO2, arterial and sparse
    assert total_dropped(tracks) == {"systolic_bp": 1}  # NISysABP 11 mmHg in 134817
    for t in tracks:
        assert_plausible(t.vitals)


def test_mimic2_numerics_per_minute(shared_data: Path) -> None:
    track = read_wfdb_numerics(shared_data / MIMIC)
    assert track.meta["samples"] == 1936
    assert len(track) == 1895  # rows with at least one vital
    assert np.all(track.t_ms % 60_000 == 0) and np.diff(track.t_ms).min() == 60_000
    assert track.t_ms[-1] == 1934 * 60_000  # 32 h (the last minute is empty)
    assert track.row(0) == {"respiratory_rate": 23.0}  # raw 230, gain 10; HR 0 = missing
    assert track.vitals["heart_rate"][1] == pytest.approx(62.8)  # raw 628
    assert track.count("heart_rate") == 1893 and track.count("temperature") == 0
    assert track.count("systolic_bp") == 159  # NBP, measured intermittently
    assert np.nanmin(track.vitals["heart_rate"]) > 45 and np.nanmax(track.vitals["heart_rate"]) < 101
    assert 90 < np.nanmedian(track.vitals["spo2"]) <= 100
    assert_plausible(track.vitals)
    assert load(shared_data / MIMIC).tracks[0].name == "s00001-2896-10-10-00-31n"


def test_wfdb_header_fields(shared_data: Path) -> None:
    header = parse_wfdb_header((shared_data / MIMIC).read_text())
    assert header.fs == pytest.approx(1 / 60) and header.n_samples == 1936
    names = [s.description for s in header.signals]
    assert names[:3] == ["HR", "ABPSys", "ABPDias"] and "NBPSys" in names
    assert header.signals[0].gain == 10 and header.signals[0].units == "bpm"
    with pytest.raises(ImportFormatError, match="2 signals, found 1"):
        parse_wfdb_header("rec 2 250 10\nrec.dat 16 200 16 0 0 0 0 HR\n")


def test_unknown_files_are_typed_errors(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    with pytest.raises(ImportFormatError, match="cannot tell the format"):
        load(notes)
    with pytest.raises(ImportFormatError, match="not found"):
        load(tmp_path / "missing.psv")
    with pytest.raises(ImportFormatError, match="unknown format"):
        load(notes, "xml")
    with pytest.raises(ImportFormatError, match="ICULOS"):
        read_psv(notes)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789:,.-HRTempNISysABPResp\nTime,Parameter,Value|aN", max_size=300))
def test_fuzzed_2012_and_psv_never_crash(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, reader in (("x.txt", read_physionet2012), ("x.psv", read_psv)):
            path = Path(tmp) / name
            path.write_text("Time,Parameter,Value\n" + text if name == "x.txt" else text)
            try:
                track = reader(path)
            except ImportFormatError:
                continue
            assert_plausible(track.vitals)
            assert np.all(np.diff(track.t_ms) >= 0)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_wfdb_headers_raise_only_typed_errors(text: str) -> None:
    with contextlib.suppress(ImportFormatError):
        parse_wfdb_header(text)
