"""vitalgate: E86 watches → MQTT → NEWS2 early-warning scores at the hospital.

This package holds only what the components share: the MQTT contract (:mod:`vitalgate.contract`),
settings loading (:mod:`vitalgate.config`), a Mosquitto launcher (:mod:`vitalgate.broker`) and the
``vitalgate`` command dispatcher (:mod:`vitalgate.cli`).
"""

__version__ = "0.1.0"
