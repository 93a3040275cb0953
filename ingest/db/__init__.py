"""ingest's storage layer: every table, connection and transaction, on SQLite or PostgreSQL.

``engine`` holds the one API both engines offer (:class:`Database`, :class:`Conn`, the
driver-neutral errors); ``migrate`` the versioned migrations. The modules beside them own
their tables.
"""

from ingest.db.engine import (
    Conn,
    Cursor,
    Database,
    DatabaseError,
    Dialect,
    IntegrityError,
    Location,
    OperationalError,
    StoreOpenError,
    interrupted,
    redact,
    render_ddl,
    store_failure,
)
from ingest.db.migrate import Migration, SchemaTooNew

__all__ = [
    "Conn", "Cursor", "Database", "DatabaseError", "Dialect", "IntegrityError", "Location",
    "Migration", "OperationalError", "SchemaTooNew", "StoreOpenError", "interrupted", "redact",
    "render_ddl", "store_failure",
]
