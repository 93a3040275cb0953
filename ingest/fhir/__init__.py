"""FHIR R4 out (issue 17): stored readings and NEWS2 points as Observations, following the HL7
Personal Health Device IG and the R4 vital-signs profiles, delivered as transaction Bundles.

``codes``: the code systems and codes; ``resources``: pure builders (no I/O); ``bundle``:
transaction Bundles; ``transport``: the HTTP delivery and how answers are classified. Off unless
``VITALGATE_FHIR_URL`` is set (docs/fhir.md).
"""
