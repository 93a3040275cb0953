"""Sequence gaps: moved to :mod:`ingest.db.gaps` (the storage layer owns every table); this
name stays for the modules that still import it (API routes, ward view)."""

from ingest.db.gaps import (
    LIST_LIMIT as LIST_LIMIT,
)
from ingest.db.gaps import (
    Arrivals as Arrivals,
)
from ingest.db.gaps import (
    Request as Request,
)
from ingest.db.gaps import (
    Unrecovered as Unrecovered,
)
from ingest.db.gaps import (
    Update as Update,
)
from ingest.db.gaps import (
    completeness as completeness,
)
from ingest.db.gaps import (
    device_gaps as device_gaps,
)
from ingest.db.gaps import (
    summary as summary,
)
from ingest.db.gaps import (
    totals as totals,
)
