"""ECG analytics on one lead with numpy/scipy: R-peak detection, quality, HR/HRV, rhythm hint.

Pure functions (no I/O) except the small WFDB reader used to load PhysioNet test records.
Imports nothing outside numpy, scipy and the standard library.
"""

from .analysis import SCREENING_NOTE, AnalysisSettings, EcgSummary, WindowRate, analyse
from .detect import DetectorSettings, detect_r_peaks
from .evaluate import MatchResult, match_beats
from .quality import QualitySettings, SegmentQuality
from .wfdb import BEAT_SYMBOLS, WfdbError, read_annotations, read_header, read_record

__all__ = [
    "BEAT_SYMBOLS",
    "SCREENING_NOTE",
    "AnalysisSettings",
    "DetectorSettings",
    "EcgSummary",
    "MatchResult",
    "QualitySettings",
    "SegmentQuality",
    "WfdbError",
    "WindowRate",
    "analyse",
    "detect_r_peaks",
    "match_beats",
    "read_annotations",
    "read_header",
    "read_record",
]
