"""HL7 v2 out: IHE PCD-01 ORU^R01 messages of readings and NEWS2 scores, sent over MLLP.

* :mod:`ingest.hl7.text`      HL7 escaping and bounding of every free-text value;
* :mod:`ingest.hl7.vocab`     the vitals' IEEE 11073 MDC codes and UCUM units, the NEWS2 codes;
* :mod:`ingest.hl7.oru`       the ORU^R01 builder (python-hl7; v2.6 validation by hl7apy);
* :mod:`ingest.hl7.channel`   which readings and points become messages; ACKs → verdicts;
* :mod:`ingest.hl7.ack`       ACK parsing (MSA) and what each acknowledgment code means;
* :mod:`ingest.hl7.transport` the ``Transport`` protocol the outbox delivers through;
* :mod:`ingest.hl7.mllp`      the asyncio MLLP client implementing it.

docs/hl7.md documents the segment mapping, the settings, the ACK rules and the guarantees.
"""
