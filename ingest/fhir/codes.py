"""The codes vitalgate's FHIR resources carry: per contract vital, its LOINC code (as the FHIR R4
vital-signs profiles require), its IEEE 11073-10101 MDC code (as the HL7 Personal Health Device
IG uses), its UCUM unit; the NEWS2 codes; the identifier systems.

Facts, from the references: LOINC and the vital-signs profiles (hl7.org/fhir/R4/observation-
vitalsigns.html), MDC codes (ISO/IEEE 11073-10101 nomenclature, as listed in issue 17), SNOMED CT
1104051000000101 (Royal College of Physicians NEWS2 total score). Everything under
``urn:vitalgate:`` is vitalgate's own naming (no public code exists for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
MDC: Final = "urn:iso:std:iso:11073:10101"
UCUM: Final = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

#: the FHIR core extension naming the gateway (the PHD IG's Personal Health Gateway) that
#: forwarded an Observation; its value is a Reference(Device).
GATEWAY_EXTENSION: Final = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
#: Bluetooth device addresses (EUI-48), as HL7 Terminology's NamingSystem names them.
BLUETOOTH_SYSTEM: Final = "http://hl7.org/fhir/sid/eui-48/bluetooth"
#: MDC_MOC_VMS_MDS_AHD: an application hosting device, the PHD IG's type of a gateway Device.
MDC_GATEWAY_TYPE: Final = "531981"

#: vitalgate's own identifier systems and code systems.
GATEWAY_SYSTEM: Final = "urn:vitalgate:gateway-id"
OBSERVATION_ID_SYSTEM: Final = "urn:vitalgate:phd-observation-id"
NEWS2_ID_SYSTEM: Final = "urn:vitalgate:news2-observation-id"
NEWS2_PARAMETER_SYSTEM: Final = "urn:vitalgate:news2-parameter"
NEWS2_RISK_SYSTEM: Final = "urn:vitalgate:news2-risk"
PARTIAL_EXTENSION: Final = "urn:vitalgate:fhir:extension:news2-partial"
#: default ``fhir_patient_system``: user codes are Cexup member codes.
DEFAULT_PATIENT_SYSTEM: Final = "urn:vitalgate:user-code"

NEWS2_TOTAL: Final = "1104051000000101"
NEWS2_TEXT: Final = "NEWS2 total score"

PROFILE_BASE: Final = "http://hl7.org/fhir/StructureDefinition/"


@dataclass(frozen=True, slots=True)
class Coding:
    system: str
    code: str
    display: str

    def to_json(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True, slots=True)
class VitalCode:
    """How one measured quantity is coded: LOINC codes (the first is the profile's), MDC code,
    UCUM unit (``unit`` is its human form), and the R4 vital-signs profile it conforms to."""

    loinc: tuple[Coding, ...]
    mdc: Coding
    ucum: str
    unit: str
    profile: str
    text: str

    def code_json(self) -> dict[str, object]:
        return {"coding": [c.to_json() for c in (*self.loinc, self.mdc)], "text": self.text}


HR_LOINC: Final = Coding(LOINC, "8867-4", "Heart rate")
#: the heart rate's MDC code depends on how it was measured: the watch's optical sensor is a
#: pulse rate (MDC_PULS_OXIM_PULS_RATE); a rate from an ECG recording is MDC_ECG_HEART_RATE.
MDC_PULSE_RATE: Final = Coding(MDC, "149530", "MDC_PULS_OXIM_PULS_RATE")
MDC_ECG_RATE: Final = Coding(MDC, "147842", "MDC_ECG_HEART_RATE")

HEART_RATE: Final = VitalCode((HR_LOINC,), MDC_PULSE_RATE, "/min", "beats/minute",
                              PROFILE_BASE + "heartrate", "Heart rate")
HEART_RATE_ECG: Final = VitalCode((HR_LOINC,), MDC_ECG_RATE, "/min", "beats/minute",
                                  PROFILE_BASE + "heartrate", "Heart rate (ECG)")
SPO2: Final = VitalCode(
    (Coding(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"),
     Coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood")),
    Coding(MDC, "150456", "MDC_PULS_OXIM_SAT_O2"), "%", "%", PROFILE_BASE + "oxygensat",
    "Oxygen saturation (SpO2)")
RESPIRATORY_RATE: Final = VitalCode(
    (Coding(LOINC, "9279-1", "Respiratory rate"),), Coding(MDC, "151562", "MDC_RESP_RATE"),
    "/min", "breaths/minute", PROFILE_BASE + "resprate", "Respiratory rate")
TEMPERATURE: Final = VitalCode(
    (Coding(LOINC, "8310-5", "Body temperature"),), Coding(MDC, "150364", "MDC_TEMP_BODY"),
    "Cel", "C", PROFILE_BASE + "bodytemp", "Body temperature")
BLOOD_PRESSURE: Final = VitalCode(
    (Coding(LOINC, "85354-9", "Blood pressure panel with all children optional"),),
    Coding(MDC, "150020", "MDC_PRESS_BLD_NONINV"), "mm[Hg]", "mmHg", PROFILE_BASE + "bp",
    "Blood pressure (non-invasive)")
SYSTOLIC: Final = VitalCode(
    (Coding(LOINC, "8480-6", "Systolic blood pressure"),),
    Coding(MDC, "150021", "MDC_PRESS_BLD_NONINV_SYS"), "mm[Hg]", "mmHg", "", "Systolic")
DIASTOLIC: Final = VitalCode(
    (Coding(LOINC, "8462-4", "Diastolic blood pressure"),),
    Coding(MDC, "150022", "MDC_PRESS_BLD_NONINV_DIA"), "mm[Hg]", "mmHg", "", "Diastolic")

#: contract vital → its code (blood pressure's two vitals make one panel: ``BP_VITALS``).
SINGLE_VITALS: Final[dict[str, VitalCode]] = {
    "heart_rate": HEART_RATE,
    "spo2": SPO2,
    "respiratory_rate": RESPIRATORY_RATE,
    "temperature": TEMPERATURE,
}
BP_VITALS: Final = ("systolic_bp", "diastolic_bp")


def vital_code(vital: str, source: str) -> VitalCode:
    """The code of a single (non-blood-pressure) contract vital measured by ``source``."""
    if vital == "heart_rate" and source == "ecg":
        return HEART_RATE_ECG
    return SINGLE_VITALS[vital]


#: NEWS2 parameters (the EWS point's ``components`` keys) → how a sub-score component is named.
NEWS2_PARAMETERS: Final[dict[str, str]] = {
    "respiratory_rate": "Respiration rate sub-score",
    "spo2": "Oxygen saturation sub-score",
    "oxygen": "Air or oxygen sub-score",
    "systolic_bp": "Systolic blood pressure sub-score",
    "heart_rate": "Pulse sub-score",
    "consciousness": "Consciousness sub-score",
    "temperature": "Temperature sub-score",
}

#: the EWS point's ``risk`` → (display, v3 ObservationInterpretation code or None). A total of
#: 0 is Normal (``N``); the low band of 1-4 has no v3 equivalent and carries only vitalgate's
#: code; a single red parameter and the medium band are High (``H``), the high band is
#: critical (``HH``), as the RCP response guidance escalates them.
NEWS2_RISK: Final[dict[str, tuple[str, str | None]]] = {
    "low": ("Low clinical risk", None),
    "low-medium": ("Low-medium clinical risk (a single parameter scored 3)", "H"),
    "medium": ("Medium clinical risk", "H"),
    "high": ("High clinical risk", "HH"),
}
INTERPRETATION_DISPLAY: Final = {"N": "Normal", "H": "High", "HH": "Critical high"}
