"""Clinical analytics: the table-driven NEWS2 scorer, the stream scorer and ECG analysis.

Imports nothing of the other vitalgate packages (numpy and scipy only).

``score_news2(columns, table)`` scores many rows at once (:mod:`ews.news2`); charts are data
(:mod:`ews.tables`); ``StreamScorer`` keeps the latest vitals of many patients and rescores
those that changed (:mod:`ews.stream`).
"""

from ews.news2 import ScoreResult, score, score_news2
from ews.tables import NEWS2, NEWS2012, TABLES, Bands, Parameter, Plausible, ScoringTable

__all__ = [
    "NEWS2",
    "NEWS2012",
    "TABLES",
    "Bands",
    "Parameter",
    "Plausible",
    "ScoreResult",
    "ScoringTable",
    "score",
    "score_news2",
]
