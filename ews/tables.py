"""Early-warning charts as data: NEWS2 (RCP 2017) and NEWS (2012).

A chart is a :class:`ScoringTable`. Each numeric vital is a :class:`Parameter` whose
:class:`Bands` list the chart's *upper* band edges and the points of each band, read as an
upper-inclusive cascade: a value scores the points of the first band whose upper edge it does not
exceed (``≤ 8 → 3, else ≤ 11 → 1, …``), and the last band is open above. This is how
non-integer readings (RR 8.5, SpO2 91.5, 36.05 °C) are placed; see /work/shared/ref/news2.md.

A hospital variant or another chart (MEWS, NEWS 2012) is a new table, not new code: the scorer
in :mod:`ews.news2` only reads these tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final


@dataclass(frozen=True)
class Bands:
    """``points[i]`` for the first ``i`` with ``value <= edges[i]``; ``points[-1]`` above all edges."""

    edges: tuple[float, ...]
    points: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.points) != len(self.edges) + 1:
            raise ValueError(f"bands need one more points than edges: {self.edges} / {self.points}")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"band edges must increase: {self.edges}")
        if any(p < 0 for p in self.points):
            raise ValueError(f"band points must be >= 0: {self.points}")


@dataclass(frozen=True)
class Plausible:
    """The values a living patient can have; anything else is a sensor or entry error.

    ``low`` itself is plausible unless ``low_open`` (then only values above it are); ``high``
    itself is plausible. Non-finite values are never plausible.
    """

    low: float
    high: float
    low_open: bool = False

    def describe(self) -> str:
        return f"{'>' if self.low_open else '>='} {self.low:g} and <= {self.high:g}"


@dataclass(frozen=True)
class Parameter:
    """One numeric vital of a chart."""

    name: str  #: canonical column name, e.g. ``"respiratory_rate"``
    label: str  #: Cexup's cause word, e.g. ``"Respiration"`` → cause ``"Respiration 7"``
    bands: Bands
    plausible: Plausible
    decimals: int = 0  #: digits shown in the cause (temperature: 1 → ``"Temperature 35.0"``)


@dataclass(frozen=True)
class ScoringTable:
    """A complete early-warning chart.

    The scorer packs every row's tally into 16 bits (see ``ews.news2``), so a table holds at most
    6 numeric parameters and its maximum total is at most 63; both are checked here.
    """

    name: str
    parameters: tuple[Parameter, ...]
    #: consciousness level → points; the first level is the default assumed when unknown.
    consciousness: tuple[tuple[str, int], ...]
    #: points added for supplemental oxygen (on either SpO2 scale).
    oxygen_points: int
    #: SpO2 scale 2 (hypercapnic respiratory failure) for the parameter ``scale2_parameter``,
    #: on air and on oxygen; ``None`` when the chart has no scale 2.
    spo2_scale2_air: Bands | None = None
    spo2_scale2_oxygen: Bands | None = None
    scale2_parameter: str = "spo2"
    #: a single parameter scoring this many points is a "red" score (low-medium risk).
    red: int = 3
    #: aggregate thresholds: ``medium_from`` ≤ total < ``high_from`` is medium, above high.
    medium_from: int = 5
    high_from: int = 7
    #: edges are compared with this tolerance, scaled by ``max(1, |edge|)``: far below the chart's
    #: 0.1 resolution, far above float32 rounding (relative 6e-8), so 36.1 stored as float32
    #: (36.0999985) still scores as 36.1 and 36.0000001 still scores as 36.0.
    tolerance: float = 1e-6
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in {self.name}: {names}")
        if not 1 <= len(self.parameters) <= 6:
            raise ValueError(f"{self.name}: a table holds 1 to 6 numeric parameters")
        if not self.consciousness:
            raise ValueError(f"{self.name}: consciousness needs at least the default level")
        for p in self.parameters:
            lo, hi = p.plausible.low, p.plausible.high
            if not (lo < p.bands.edges[0] and p.bands.edges[-1] <= hi):
                raise ValueError(
                    f"{self.name}.{p.name}: plausible range must enclose the band edges"
                )
        if (self.spo2_scale2_air is None) != (self.spo2_scale2_oxygen is None):
            raise ValueError(f"{self.name}: scale 2 needs both the air and the oxygen bands")
        if self.spo2_scale2_air is not None and self.scale2_parameter not in names:
            raise ValueError(
                f"{self.name}: scale 2 parameter {self.scale2_parameter!r} not in table"
            )
        if self.max_total > 63:
            raise ValueError(f"{self.name}: maximum total {self.max_total} exceeds 63")

    @property
    def vitals(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(level for level, _ in self.consciousness)

    @property
    def has_scale2(self) -> bool:
        return self.spo2_scale2_air is not None

    @property
    def max_total(self) -> int:
        total = 0
        for p in self.parameters:
            top = max(p.bands.points)
            if p.name == self.scale2_parameter and self.spo2_scale2_oxygen is not None:
                assert self.spo2_scale2_air is not None
                top = max(top, *self.spo2_scale2_air.points, *self.spo2_scale2_oxygen.points)
            total += top
        return total + self.oxygen_points + max(pts for _, pts in self.consciousness)

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)


# Plausibility limits (shared by both charts). Wider than the ingest contract's PLAUSIBLE on
# purpose: the scorer must still score a genuinely extreme reading (e.g. SpO2 45 %, RR 0 in
# apnoea), and only rejects what cannot be a measurement of a living patient.
RR_PLAUSIBLE: Final = Plausible(0.0, 100.0)  # apnoea (0) is real; no one breathes > 100/min
SPO2_PLAUSIBLE: Final = Plausible(0.0, 100.0, low_open=True)  # a saturation is (0, 100] %
SBP_PLAUSIBLE: Final = Plausible(
    0.0, 350.0, low_open=True
)  # highest recorded ~370 intra-arterial under load
HR_PLAUSIBLE: Final = Plausible(
    0.0, 300.0, low_open=True
)  # asystole is not a pulse reading; > 300 is artefact
TEMP_PLAUSIBLE: Final = Plausible(25.0, 45.0)  # deep hypothermia to lethal hyperthermia, °C

#: NEWS2, Royal College of Physicians 2017 (/work/shared/ref/news2.md, "The NEWS2 chart").
NEWS2: Final = ScoringTable(
    name="news2",
    description="NEWS2 (Royal College of Physicians, 2017)",
    parameters=(
        # ≤8 → 3, 9–11 → 1, 12–20 → 0, 21–24 → 2, ≥25 → 3
        Parameter(
            "respiratory_rate", "Respiration", Bands((8, 11, 20, 24), (3, 1, 0, 2, 3)), RR_PLAUSIBLE
        ),
        # scale 1: ≤91 → 3, 92–93 → 2, 94–95 → 1, ≥96 → 0
        Parameter("spo2", "Blood Oxygen", Bands((91, 93, 95), (3, 2, 1, 0)), SPO2_PLAUSIBLE),
        # ≤90 → 3, 91–100 → 2, 101–110 → 1, 111–219 → 0, ≥220 → 3
        Parameter(
            "systolic_bp", "Systole", Bands((90, 100, 110, 219), (3, 2, 1, 0, 3)), SBP_PLAUSIBLE
        ),
        # ≤40 → 3, 41–50 → 1, 51–90 → 0, 91–110 → 1, 111–130 → 2, ≥131 → 3
        Parameter(
            "heart_rate", "Pulse", Bands((40, 50, 90, 110, 130), (3, 1, 0, 1, 2, 3)), HR_PLAUSIBLE
        ),
        # ≤35.0 → 3, 35.1–36.0 → 1, 36.1–38.0 → 0, 38.1–39.0 → 1, ≥39.1 → 2
        Parameter(
            "temperature",
            "Temperature",
            Bands((35.0, 36.0, 38.0, 39.0), (3, 1, 0, 1, 2)),
            TEMP_PLAUSIBLE,
            1,
        ),
    ),
    # Alert 0; new Confusion, Voice, Pain, Unresponsive 3
    consciousness=(("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)),
    oxygen_points=2,
    # scale 2 on air: ≤83 → 3, 84–85 → 2, 86–87 → 1, ≥88 → 0 (88–92, and ≥93 on air)
    spo2_scale2_air=Bands((83, 85, 87), (3, 2, 1, 0)),
    # scale 2 on oxygen: as on air up to 92, then 93–94 → 1, 95–96 → 2, ≥97 → 3
    spo2_scale2_oxygen=Bands((83, 85, 87, 92, 94, 96), (3, 2, 1, 0, 1, 2, 3)),
)

#: NEWS (Royal College of Physicians, 2012): the same five numeric bands as NEWS2 (NEWS2 changed
#: none of them), one SpO2 scale, and AVPU without "new confusion".
NEWS2012: Final = replace(
    NEWS2,
    name="news2012",
    description="NEWS (Royal College of Physicians, 2012)",
    consciousness=(("A", 0), ("V", 3), ("P", 3), ("U", 3)),
    spo2_scale2_air=None,
    spo2_scale2_oxygen=None,
)

#: tables by the name the CLI and settings use.
TABLES: Final[dict[str, ScoringTable]] = {NEWS2.name: NEWS2, NEWS2012.name: NEWS2012}
