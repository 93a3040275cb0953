"""Codes of the ORU^R01 messages: the vitals' IEEE 11073-10101 (MDC) terms and UCUM units,
the NEWS2 score's codes. Facts from ISO/IEEE 11073-10101 (nomenclature), the IHE PCD Technical
Framework (Rosetta terminology mapping) and UCUM; the contract's vitals are
``vitalgate.contract.VITALS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Coded:
    """One coded element (HL7 CWE): code, its text, its coding system."""

    code: str
    text: str
    system: str

    def cwe(self) -> str:
        return f"{self.code}^{self.text}^{self.system}"


@dataclass(frozen=True, slots=True)
class Unit:
    """A UCUM unit as HL7 CWE: ``/min^/min^UCUM``."""

    ucum: str

    def cwe(self) -> str:
        return f"{self.ucum}^{self.ucum}^UCUM"


MDC: Final = "MDC"
#: an HL7 local coding system (table 0396: names starting with 99 are local).
LOCAL: Final = "99VITALGATE"

#: heart rate by its source: derived from an ECG recording vs from the watch's optical
#: (photoplethysmographic) sensor, which IEEE 11073 files under pulse oximetry.
HEART_RATE_ECG: Final = Coded("147842", "MDC_ECG_HEART_RATE", MDC)
HEART_RATE_PPG: Final = Coded("149530", "MDC_PULS_OXIM_PULS_RATE", MDC)
SPO2: Final = Coded("150456", "MDC_PULS_OXIM_SAT_O2", MDC)
RESP_RATE: Final = Coded("151562", "MDC_RESP_RATE", MDC)
TEMPERATURE: Final = Coded("150364", "MDC_TEMP_BODY", MDC)
BP: Final = Coded("150020", "MDC_PRESS_BLD_NONINV", MDC)
BP_SYS: Final = Coded("150021", "MDC_PRESS_BLD_NONINV_SYS", MDC)
BP_DIA: Final = Coded("150022", "MDC_PRESS_BLD_NONINV_DIA", MDC)
#: the device's model (MDS attribute), as in IHE PCD's device-related OBX rows.
MODEL: Final = Coded("531969", "MDC_ATTR_ID_MODEL", MDC)
#: the device's name as registered (no MDC term: local).
DEVICE_NAME: Final = Coded("DEVICE_NAME", "Device name", LOCAL)

PER_MIN: Final = Unit("/min")
PERCENT: Final = Unit("%")
CELSIUS: Final = Unit("Cel")
MM_HG: Final = Unit("mm[Hg]")
SCORE: Final = Unit("{score}")

#: contract vital → (code, unit) for every vital but the heart rate (by source, see
#: :func:`heart_rate_code`) and the blood pressure pair (one compound metric, see oru).
SIMPLE: Final[dict[str, tuple[Coded, Unit]]] = {
    "spo2": (SPO2, PERCENT),
    "respiratory_rate": (RESP_RATE, PER_MIN),
    "temperature": (TEMPERATURE, CELSIUS),
}
#: contract source values whose heart rate comes from an ECG (the store's ``source``).
ECG_SOURCES: Final = frozenset({"ecg"})


def heart_rate_code(source: str) -> Coded:
    return HEART_RATE_ECG if source in ECG_SOURCES else HEART_RATE_PPG


#: the order of a reading's metrics in its message (the contract's order, BP as one compound).
ORDER: Final = ("heart_rate", "spo2", "respiratory_rate", "temperature", "blood_pressure")

#: OBX-17 observation method (IHE PCD, MDC): measured by the device / entered by hand.
AUTO_MEASUREMENT: Final = Coded("AMEAS", "auto-measurement", MDC)
MANUAL_MEASUREMENT: Final = Coded("MMEAS", "manual measurement", MDC)

# ---------------------------------------------------------------------------- NEWS2

#: SNOMED CT 1104051000000101 "Royal College of Physicians National Early Warning Score 2
#: (NEWS2) total score" (the UK extension's concept; the FHIR side uses the same).
NEWS2_TOTAL: Final = Coded("1104051000000101", "NEWS2 total score", "SCT")
RISK_BAND: Final = Coded("RISK_BAND", "Early warning score clinical risk", LOCAL)
#: risk band → its CWE text, and the OBX-8 abnormal flag (HL7 table 0078) of the total:
#: N normal, A abnormal, H above high normal, HH above upper panic limit.
RISK: Final[dict[str, tuple[str, str]]] = {
    "low": ("Low clinical risk", "N"),
    "low-medium": ("Low-medium clinical risk (a single red score)", "A"),
    "medium": ("Medium clinical risk", "H"),
    "high": ("High clinical risk", "HH"),
}
#: Cexup's result words (the EWS point's ``result``), sent as the band's alternate coding.
CEXUP: Final = "99CEXUP"


def total_code(table: str) -> Coded:
    """The total score's code: SNOMED CT for NEWS2; a local code for any other chart."""
    if table == "news2":
        return NEWS2_TOTAL
    return Coded(f"{table.upper()}_TOTAL", f"{table} total score", LOCAL)


def subscore_code(table: str, parameter: str) -> Coded:
    """A sub-score (points of one parameter): no standard code exists, so a local one."""
    return Coded(f"{table.upper()}_{parameter.upper()}", f"{table} {parameter} score", LOCAL)
