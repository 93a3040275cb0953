"""``vitalgate ews score``: CSV in, scored CSV out, bad rows on stderr with their line numbers."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ews.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "sample-vitals.csv"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, str]], str]:
    code = main(["ews", "score", *argv])
    out, err = capsys.readouterr()
    return code, list(csv.DictReader(io.StringIO(out))), err


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vitals.csv"
    path.write_text(text)
    return str(path)


def test_sample_file_is_clean_and_covers_every_result(capsys: pytest.CaptureFixture[str]) -> None:
    code, rows, err = run(capsys, str(SAMPLE))
    assert (code, err) == (0, "")
    assert {r["result"] for r in rows} == {"normal", "rendah", "sedang", "tinggi"}
    assert {r["risk"] for r in rows} == {"low", "low-medium", "medium", "high"}
    assert any(r["partial"] == "true" for r in rows)
    assert rows[0]["user_code"] == "AMSe5Sn8Gkxj7"  # other columns pass through
    worst = max(rows, key=lambda r: int(r["point"]))
    assert worst["point"] == "20"
    assert worst["cause"].split("; ")[-2:] == ["Consciousness V", "Oxygen"]


def test_through_the_vitalgate_command(capsys: pytest.CaptureFixture[str]) -> None:
    from vitalgate.cli import main as vitalgate_main

    assert vitalgate_main(["ews", "score", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("point,result,risk,partial,missing,cause")


def test_bad_rows_are_reported_and_the_rest_scored(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "id,heart_rate,spo2,temperature,consciousness\n"
        "r1,135,97,36.8,A\n"  # line 2: fine, 3
        "r2,abc,97,36.8,A\n"  # line 3: not a number
        "r3,80,101,36.8,A\n"  # line 4: impossible SpO2
        "\n"
        "r4,80,97\n"  # line 6: too few fields
        "r5,,,,A\n"  # line 7: no vital at all
        "r6,80,97,36.8,Q\n"  # line 8: unknown consciousness
        "r7,40,91,35.0,V\n",  # line 9: fine, 12
    )
    code, rows, err = run(capsys, path)
    assert code == 1
    assert [r["id"] for r in rows] == ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    assert [r["point"] for r in rows] == ["3", "", "", "", "", "", "12"]
    assert [r["result"] for r in rows] == ["sedang", "", "", "", "", "", "tinggi"]
    assert rows[0]["missing"] == "respiratory_rate; systolic_bp; on_oxygen; spo2_scale"
    assert err.splitlines() == [
        f"{path}:3: heart_rate='abc' is not a number",
        f"{path}:4: spo2=101 is impossible (must be > 0 and <= 100)",
        f"{path}:6: expected 5 fields, got 3",
        f"{path}:7: no vital signs",
        f"{path}:8: consciousness='Q' is not one of A, C, V, P, U",
        f"{path}: 5 of 7 rows not scored",
    ]


def test_bad_rows_summary_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "heart_rate\n70\nx\n")
    code, rows, err = run(capsys, path)
    assert code == 1
    assert err.splitlines() == [
        f"{path}:3: heart_rate='x' is not a number",
        f"{path}: 1 of 2 rows not scored",
    ]
    assert rows[0]["point"] == "0" and rows[1]["point"] == ""


def test_missing_column_is_a_missing_vital_and_empty_cell_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "respiratory_rate,heart_rate\n25,\n,135\n")
    code, rows, err = run(capsys, path)
    assert (code, err) == (0, "")
    assert [r["point"] for r in rows] == ["3", "3"]
    assert rows[0]["missing"].startswith("spo2; systolic_bp; heart_rate; temperature")
    assert rows[1]["cause"] == "Pulse 135"


def test_table_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = write(tmp_path, "spo2,spo2_scale,on_oxygen\n97,2,yes\n")
    assert run(capsys, path)[1][0]["point"] == "5"
    code, rows, err = run(capsys, path, "--table", "news2012")
    assert code == 1 and rows[0]["point"] == ""
    assert "spo2_scale='2' is not 1 (news2012 has no scale 2)" in err


def test_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("heart_rate,temperature\n95,38.5\n"))
    code, rows, err = run(capsys, "-")
    assert (code, err) == (0, "")
    assert rows == [
        {"heart_rate": "95", "temperature": "38.5", "point": "2", "result": "rendah", "risk": "low",
         "partial": "true", "missing": "respiratory_rate; spo2; systolic_bp; consciousness; on_oxygen; spo2_scale",
         "cause": "Pulse 95; Temperature 38.5"}
    ]  # fmt: skip


def test_existing_output_columns_are_replaced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, "point,heart_rate\nold,135\n")
    code, rows, _ = run(capsys, path)
    assert code == 0 and rows[0]["point"] == "3"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty CSV: no header row"), ("a,a\n1,2\n", "duplicate column(s) ['a']")],
)
def test_unreadable_files_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    code, _, err = run(capsys, path)
    assert code == 2 and message in err


def test_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, str(tmp_path / "nope.csv"))
    assert code == 2 and "nope.csv: cannot score" in err


def test_header_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, rows, err = run(capsys, write(tmp_path, "heart_rate,spo2\n"))
    assert (code, rows, err) == (0, [], "")


def test_ews_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ews"]) == 2
    assert "score" in capsys.readouterr().out


cells = st.one_of(
    st.sampled_from(
        ["", "70", "97", "36.8", "8.5", "nan", "inf", "-1", "abc", "A", "v", "yes", "2", "1e400"]
    ),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=5),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.lists(cells, min_size=0, max_size=7), max_size=8))
def test_fuzzed_csv_never_crashes(
    capsys: pytest.CaptureFixture[str], body: list[list[str]]
) -> None:
    header = [
        "heart_rate",
        "spo2",
        "temperature",
        "consciousness",
        "on_oxygen",
        "spo2_scale",
        "note",
    ]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(buf.getvalue()))
        code = main(["ews", "score", "-"])
    out, err = capsys.readouterr()
    assert code in (0, 1)
    scored = list(csv.DictReader(io.StringIO(out)))
    assert len(err.splitlines()) == (
        0 if code == 0 else sum(1 for r in scored if r["point"] == "") + 1
    )
