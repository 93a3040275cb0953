"""Patient scenarios as data: one TOML file per scenario in this folder, validated by pydantic.

A scenario says, per vital, where a patient starts (``baseline``), how the vital moves over the
hours (``trajectory``: piecewise-linear keyframes ``[hours, value]``, held flat before the first
and after the last), how much patients differ (``spread``), and the watch's measurement
imperfections (``noise``, ``drift``, ``[artefacts]``). ``extends = "stable"`` starts from another
scenario and overrides table by table, key by key. Adding a scenario is adding a file; see
docs/simulators.md for every key.

Loading errors are :class:`ScenarioError` naming the file and the field.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vitalgate.contract import PLAUSIBLE, VITALS

HERE: Final = Path(__file__).resolve().parent

VitalName = Literal[
    "heart_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature", "respiratory_rate"
]
Keyframe = tuple[Annotated[float, Field(ge=0)], float]
NonNegative = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message names the file and the field."""


class Artefacts(BaseModel):
    """How the watch fails to measure. Rates are per simulated hour of wear."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: correlation time of the slow drift (Ornstein-Uhlenbeck), hours.
    drift_tau_h: Annotated[float, Field(gt=0)] = 0.5
    #: minutes per hour, on average, in which the wrist moves and the optical sensor misreads.
    motion_per_hour: NonNegative = 0.0
    #: SD of the upward heart-rate error during a motion minute, /min (the spike is |N(0, sd)|).
    motion_hr_sd: NonNegative = 25.0
    #: SD of the downward SpO2 error during a motion minute, % (|N(0, sd)|).
    motion_spo2_sd: NonNegative = 5.0
    #: chance that a given stretch of ``off_wrist_minutes`` is spent with the watch off the wrist.
    off_wrist_probability: Probability = 0.0
    #: length of one off-wrist stretch, minutes (adjacent stretches join into longer gaps).
    off_wrist_minutes: Annotated[float, Field(gt=0)] = 30.0
    #: chance that any single vital of a reading is missing (the watch skipped it).
    dropout: Probability = 0.0
    #: each patient's trajectory starts up to this many hours late (uniform), so a ward does
    #: not deteriorate in lockstep.
    onset_jitter_h: NonNegative = 0.0


class Scenario(BaseModel):
    """A validated scenario. Every vital has a baseline; the other per-vital tables are sparse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,64}$")]
    description: str = ""
    baseline: dict[VitalName, float]
    trajectory: dict[VitalName, list[Keyframe]] = Field(default_factory=dict)
    spread: dict[VitalName, NonNegative] = Field(default_factory=dict)
    noise: dict[VitalName, NonNegative] = Field(default_factory=dict)
    drift: dict[VitalName, NonNegative] = Field(default_factory=dict)
    artefacts: Artefacts = Artefacts()

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        missing = [v for v in VITALS if v not in self.baseline]
        if missing:
            raise ValueError(f"baseline.{missing[0]} is required (every vital needs a baseline)")
        for vital, value in self.baseline.items():
            _plausible(f"baseline.{vital}", vital, value)
        for vital, frames in self.trajectory.items():
            if not frames:
                raise ValueError(f"trajectory.{vital} has no keyframes")
            hours = [h for h, _ in frames]
            if any(b <= a for a, b in itertools.pairwise(hours)):
                raise ValueError(f"trajectory.{vital}: keyframe hours must strictly increase")
            for i, (_, value) in enumerate(frames):
                _plausible(f"trajectory.{vital}[{i}]", vital, value)
        return self

    def keyframes(self, vital: str) -> tuple[list[float], list[float]]:
        """(hours, values) for np.interp; a flat line at the baseline without a trajectory."""
        frames = self.trajectory.get(vital)  # type: ignore[call-overload]
        if not frames:
            return [0.0], [self.baseline[vital]]  # type: ignore[index]
        return [h for h, _ in frames], [v for _, v in frames]


def _plausible(where: str, vital: str, value: float) -> None:
    low, high = PLAUSIBLE[vital]
    if not low <= value <= high:
        raise ValueError(f"{where}={value} is outside the plausible range {low}..{high}")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path, folder: Path, seen: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path.name}: not valid TOML ({exc})") from None
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ScenarioError(f"{path.name}: extends must be a scenario name")
    if parent in seen:
        raise ScenarioError(f"{path.name}: extends {parent!r} makes a cycle")
    parent_path = folder / f"{parent}.toml"
    if not parent_path.is_file():
        parent_path = HERE / f"{parent}.toml"  # a built-in scenario
    if not parent_path.is_file():
        raise ScenarioError(f"{path.name}: extends unknown scenario {parent!r}")
    base = _read(parent_path, folder, (*seen, parent))
    base.pop("description", None)
    return _merge(base, data)


def load_file(path: str | Path) -> Scenario:
    """Load and validate one scenario file (its ``extends`` parent is looked up beside it,
    then among the built-in scenarios)."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file not found: {path}")
    data = _read(path, path.parent, (path.stem,))
    data.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in err["loc"]) or "scenario"
        raise ScenarioError(f"{path.name}: {loc}: {err['msg']}") from None


def available(folder: Path = HERE) -> list[str]:
    """Names of the scenarios in ``folder`` (the built-in ones by default)."""
    return sorted(p.stem for p in folder.glob("*.toml"))


@cache
def _builtin(name: str) -> Scenario:
    path = HERE / f"{name}.toml"
    if not path.is_file():
        raise ScenarioError(f"unknown scenario {name!r}; available: {', '.join(available())}")
    return load_file(path)


def load(name: str | Path | Scenario) -> Scenario:
    """A Scenario as given, a built-in by name, or a TOML file by path (``*.toml``)."""
    if isinstance(name, Scenario):
        return name
    text = str(name)
    if text.endswith(".toml") or "/" in text:
        return load_file(text)
    return _builtin(text)


def load_all(names: Iterable[str | Path | Scenario]) -> list[Scenario]:
    return [load(n) for n in names]
