"""A WFDB record read with its annotations (tests/data/mitdb, the shared PhysioNet sets): the
first channel, its sampling rate, every annotation, and the beats among them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ews.ecg import BEAT_SYMBOLS, read_annotations, read_record


@dataclass(frozen=True)
class Annotated:
    ecg: npt.NDArray[np.float64]  #: the first channel (mV)
    fs: float
    samples: npt.NDArray[np.int64]  #: where each annotation stands (samples at ``fs``)
    symbols: tuple[str, ...]

    @property
    def beats(self) -> npt.NDArray[np.int64]:
        """The annotations that are beats (``BEAT_SYMBOLS``)."""
        is_beat = np.array([s in BEAT_SYMBOLS for s in self.symbols], dtype=bool)
        beats: npt.NDArray[np.int64] = self.samples[is_beat]
        return beats


def read_annotated(base: Path) -> Annotated:
    """``<base>.hea`` with its signal and ``<base>.atr``."""
    sig, fs, _ = read_record(base)
    samples, symbols = read_annotations(base)
    return Annotated(sig[:, 0], fs, samples, symbols)
