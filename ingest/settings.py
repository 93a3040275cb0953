"""Settings of the ingestion service (``[ingest]`` in the TOML file, env ``VITALGATE_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Final, Literal

from pydantic import Field, SecretStr, field_validator

from ingest.db.engine import Location
from vitalgate.config import BrokerAddress, ServiceSettings
from vitalgate.contract import DEFAULT_PREFIX

#: the pause grace on PostgreSQL (s): above the feed's hold (``ingest.feed.HOLD_MS``, 20 s, the
#: longest a committed reading waits there for a predecessor stored by another instance) with
#: 5 s to spare for a loaded machine (a test keeps it above the hold).
FEED_PAUSE_GRACE_S: Final = 25.0


def _default_instance_id() -> str:
    import os
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


class IngestSettings(ServiceSettings):
    """Everything ``vitalgate ingest`` reads. Environment names are ``VITALGATE_<FIELD>``."""

    toml_table: ClassVar[str] = "ingest"

    # --- MQTT -------------------------------------------------------------------------------
    #: broker URL: ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS).
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    #: fixed client id: the broker keeps this session's subscriptions and unacknowledged
    #: messages while the service is down (persistent session).
    mqtt_client_id: str = "vitalgate-ingest"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    #: CA bundle for mqtts:// (default: the system's trust store); the gateway's name for it too.
    mqtt_ca: Path | None = None
    #: deprecated name of ``mqtt_ca`` (read with a WARNING; see ServiceSettings.deprecated_names).
    mqtt_ca_file: Path | None = None
    deprecated_names: ClassVar[dict[str, str]] = {"mqtt_ca_file": "mqtt_ca",
                                                  "ews_future_skew_s": "max_future_skew_s"}
    #: "3.1.1" (clean_session=False) or "5" (clean_start=False + session expiry). 3.1.1 is the
    #: default: under the fault suite (broker and ingest restarts), Debian's Mosquitto 2.0.11
    #: stopped delivering to an MQTT 5 session while it stayed connected (its inflight-quota
    #: accounting, fixed upstream in 2.0.13); nothing was lost, but nothing arrived until the
    #: next reconnect. 3.1.1 persistent sessions showed no stall in the same runs.
    mqtt_protocol: Literal["5", "3.1.1"] = "3.1.1"
    #: how long the broker keeps the session while the service is away (MQTT 5 only).
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=3600)
    #: topic prefix of the contract.
    prefix: str = DEFAULT_PREFIX
    #: when set, subscribe as ``$share/<group>/...`` so several instances split the load
    #: (message by message: use it for storage-only replicas, or with a broker that shares by
    #: topic hash, e.g. EMQX's hash_topic strategy; see docs/scaling.md).
    shared_group: str | None = None
    #: this instance's name among several on one PostgreSQL (patient leases, outbox leases,
    #: logs). Default ``<hostname>-<pid>``: unique, but new at each start. Set it explicitly
    #: for replicas: the MQTT client id then derives from it (``vitalgate-ingest-<id>``), so a
    #: restarted replica resumes its persistent broker session (and what it holds
    #: unacknowledged) instead of leaving it stranded under a pid that never returns.
    instance_id: str = Field(default_factory=lambda: _default_instance_id(),
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    #: a patient partition's lease (s, on the database's clock): how long a dead instance's
    #: patients may go unscored before a survivor takes them (plus one heartbeat, lease/3).
    lease_s: float = Field(default=10.0, ge=0.3, le=300)

    @property
    def client_id(self) -> str:
        """The MQTT client id: ``mqtt_client_id`` when set, else derived from an explicitly
        set ``instance_id``, else the fixed default (one process: a stable session)."""
        if "mqtt_client_id" in self.model_fields_set:
            return self.mqtt_client_id
        if "instance_id" in self.model_fields_set:
            return f"vitalgate-ingest-{self.instance_id}"
        return self.mqtt_client_id

    # --- ingestion --------------------------------------------------------------------------
    #: messages committed in one SQLite transaction at most (group commit)...
    batch_max: int = Field(default=500, ge=1, le=10_000)
    #: ...or what arrived within this many ms after the first message of the batch.
    batch_window_ms: int = Field(default=20, ge=0, le=1000)
    #: bound of the queue between paho's thread and the consumer.
    queue_max: int = Field(default=20_000, ge=10)
    #: device_holder given to devices registered automatically when first seen on MQTT.
    device_holder: str = "unknown"
    #: readings, ECG recordings and dead letters older than this are deleted.
    retention_days: float = Field(default=30.0, gt=0)

    #: raw ECG counts per millivolt (ews.ecg.analyse takes mV). simulators/ecg_synth.py uses
    #: 1 mV = 2**16 counts; set this to the watch's real gain when known.
    ecg_counts_per_mv: float = Field(default=65536.0, gt=0)
    #: how often retention runs (s); each run deletes in small batches.
    retention_interval_s: float = Field(default=300.0, gt=0)

    # --- HTTP -------------------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    #: an API key accepted besides the stored ones (``vitalgate keys create``).
    api_key: str | None = None
    #: rate limit per client (API key, else address) on /api and /ews: sustained requests per
    #: second and burst; beyond it a 429 with Retry-After. 0 disables. The defaults leave a
    #: dashboard (a few requests per update) and an integration polling every second far below
    #: the limit, and slow a key-guessing or runaway client to 50/s.
    http_rate_per_s: float = Field(default=50.0, ge=0)
    http_burst: int = Field(default=200, ge=1)

    # --- storage ----------------------------------------------------------------------------
    data_dir: Path = Path("./var/ingest")
    #: SQLite ``synchronous``: FULL makes every acknowledged message survive a power cut;
    #: NORMAL (faster) survives process crashes only.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"
    #: ``postgresql://user:pass@host:port/db`` (or ``sqlite:///abs/path``): where the stores
    #: live. Unset: SQLite files in ``data_dir`` (``ingest.sqlite3``, ``ews.sqlite3``). On
    #: PostgreSQL the readings store and the EWS store are one database. A secret: never
    #: logged (the service logs :meth:`Location.redacted`).
    database_url: SecretStr | None = None
    #: the oldest event time accepted, in days before arrival (processing time): a history sync
    #: reaches this far back; older readings are ``too_old`` dead letters. On PostgreSQL the
    #: readings partitions (one per UTC day) cover ``now - this .. now + max_future_skew_s``.
    max_reading_age_days: float = Field(default=90.0, gt=0, le=3650)
    #: how often the PostgreSQL partition maintenance makes the partitions ahead (s).
    partition_interval_s: float = Field(default=3600.0, gt=0)

    # --- EWS ----------------------------------------------------------------------------------
    #: a reading older than this no longer counts for the score (ms).
    freshness_ms: int = Field(default=15 * 60 * 1000, gt=0)
    #: the score uses the median of each vital's last k readings (1 = the latest).
    median_k: int = Field(default=3, ge=1, le=99)
    #: the NEWS2 table the engine scores with.
    ews_table: str = "news2"
    #: publish at once when the risk rises.
    ews_immediate_on_rise: bool = True
    #: otherwise at most one point per patient this often (s).
    ews_min_interval_s: float = Field(default=30.0, ge=0)
    #: and at least one point per patient this often even when nothing changed (s).
    ews_heartbeat_s: float = Field(default=3600.0, gt=0)
    #: how often the engine's tick (staleness, heartbeats) runs (s).
    ews_tick_s: float = Field(default=5.0, gt=0)
    #: the part of a pause in a patient's data (s) that does not move its emission clock
    #: (``EwsEngine.pause_grace_ms``). Unset: 0 on SQLite (one process receives in broker
    #: order), :data:`FEED_PAUSE_GRACE_S` on PostgreSQL, where the owner is fed from commits
    #: and a reading may wait up to the feed's hold (docs/scaling.md): held changes are then
    #: decided on event time, not by the tick racing a reading that is still held.
    ews_pause_grace_s: float | None = Field(default=None, ge=0)

    # --- Cexup upstream (EWS delivery) -------------------------------------------------------
    upstream_url: str | None = None
    upstream_api_key: str | None = None

    # --- InfluxDB (optional mirror of the time series) --------------------------------------
    influx_url: str | None = None
    influx_token: str | None = None
    influx_org: str | None = None
    influx_bucket: str | None = None

    # --- hostile input: poison messages, future stamps, bounded junk (issue 11, h1) -------
    #: readings, ECG chunks and device statuses stamped (event time) later than processing
    #: time (the consumer's clock at arrival) plus this skew are dead-lettered (``future``);
    #: a POST /ews ``produce_at`` later than the service clock plus this is refused (422): a
    #: score stamped in the future would sort as the patient's current score until then.
    max_future_skew_s: float = Field(default=300.0, ge=0, le=7 * 24 * 3600)
    #: a message delivered this many times more without ever being committed (the consumer
    #: failed on it each time) is dead-lettered (``redelivery_loop``) instead of processed.
    redelivery_max: int = Field(default=3, ge=1, le=1000)
    #: bytes of a rejected payload kept in the dead-letter table (its size and SHA-256 are
    #: kept in full).
    dead_letter_payload_bytes: int = Field(default=4096, ge=0, le=256 * 1024)
    #: bounds of the dead-letter table; beyond either the oldest rows are evicted (counted).
    dead_letters_max_rows: int = Field(default=100_000, ge=1)
    dead_letters_max_bytes: int = Field(default=64 * 2**20, ge=4096)
    #: the size cap of one ECG recording (chunks and samples); beyond it the recording's
    #: partial chunks are discarded (counted) and its chunks dead-lettered (``ecg_too_large``).
    ecg_max_chunks: int = Field(default=5_000, ge=1, le=65_536)
    ecg_max_samples: int = Field(default=600_000, ge=1, le=10_000_000)

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, v: str) -> str:
        BrokerAddress.parse(v)
        return v

    @property
    def broker(self) -> BrokerAddress:
        return BrokerAddress.parse(self.mqtt_url)

    @property
    def mqtt_host(self) -> str:
        return self.broker.host

    @property
    def mqtt_port(self) -> int:
        return self.broker.port

    @property
    def mqtt_tls(self) -> bool:
        return self.broker.tls

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value():
            Location.parse(v.get_secret_value(), default_path=Path("ingest.sqlite3"))
        return v

    @property
    def database(self) -> str | None:
        """The database URL (a secret: never log it), None for SQLite in the data dir."""
        return self.database_url.get_secret_value() or None if self.database_url else None

    @property
    def pause_grace_ms(self) -> int:
        """``ews_pause_grace_s`` in ms, its default depending on the engine (see there)."""
        if self.ews_pause_grace_s is not None:
            return int(self.ews_pause_grace_s * 1000)
        return int(FEED_PAUSE_GRACE_S * 1000) if self.database is not None else 0

    @property
    def readings_location(self) -> Location:
        """Where the readings store lives (``ingest.sqlite3`` in the data dir by default)."""
        return Location.parse(self.database, default_path=self.db_path)

    @property
    def ews_location(self) -> Location:
        """Where the EWS store lives: ``ews.sqlite3`` in the data dir by default; on
        PostgreSQL the same database as the readings store."""
        loc = Location.parse(self.database, default_path=self.ews_db_path)
        if loc.path is not None and self.database:  # sqlite:///dir/x: the EWS file beside it
            return Location.parse(None, default_path=loc.path.with_name("ews.sqlite3"))
        return loc

    @property
    def reading_window_ms(self) -> tuple[int, int]:
        """How far before and after processing time an event time may lie (ms)."""
        return int(self.max_reading_age_days * 86_400_000), int(self.max_future_skew_s * 1000)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "ingest.sqlite3"

    @property
    def ews_db_path(self) -> Path:
        return self.data_dir / "ews.sqlite3"

    @property
    def influx_enabled(self) -> bool:
        return bool(self.influx_url and self.influx_bucket)

    # --- HTTP hardening and EWS API (issue 11/15, helper h2) ---------------------------------
    #: a request body must arrive within this many seconds of the handler asking for it
    #: (processing time), else 408: a client trickling a body cannot hold a connection open.
    http_body_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: deprecated name of ``max_future_skew_s`` (the same rule for POST /ews produce_at as for
    #: MQTT stamps; read with a WARNING, see ServiceSettings.deprecated_names).
    ews_future_skew_s: float | None = Field(default=None, ge=0, le=7 * 24 * 3600)

    # --- durability: gaps, late data, store failures (issue 12, helper h6) -------------------
    #: a reading measured (event time) more than this long before it arrived (processing
    #: time) is stored flagged ``late`` (and ``clock_suspect`` if it claims to be live), counted
    #: and logged once per device; never dropped.
    late_after_s: float = Field(default=3600.0, gt=0)
    #: a sequence gap is only asked for after this long: out-of-order delivery (a broker
    #: restart, two sessions, a replay) fills most gaps within seconds by itself.
    gap_grace_s: float = Field(default=30.0, ge=0)
    #: a republish request still unanswered is repeated after this long...
    gap_retry_s: float = Field(default=120.0, gt=0)
    #: ...at most this many times; then the gap is reported (logged once, counted, listed).
    gap_max_requests: int = Field(default=3, ge=0, le=100)
    #: how often the gap pass runs (s), and how many republish commands it sends at most (the
    #: rate limit: a gateway answers each from its buffer, up to MAX_REPUBLISH readings).
    gap_interval_s: float = Field(default=10.0, gt=0)
    gap_requests_per_pass: int = Field(default=20, ge=0, le=10_000)
    #: while the store cannot write, the consumer (and its broker connection) restarts after
    #: a back-off doubling from 1 s up to this many seconds, probing the store first.
    store_retry_max_s: float = Field(default=60.0, ge=1)

    # --- issue 16, roaming between the gateways of one ward (helper h12) ---------------------
    #: ward → its gateways' ids. A device owned by one of them may be taken over by another of
    #: the same ward once its owner has reported it disconnected (recorded in device_moves as
    #: ``roaming:<ward>``); between wards, and with no group, a move goes through the API only.
    roaming_groups: dict[str, list[str]] = Field(default_factory=dict, max_length=1000)

    @field_validator("roaming_groups")
    @classmethod
    def _roaming_groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        import re

        from vitalgate.contract import GATEWAY_ID_RE

        seen: dict[str, str] = {}
        for ward, gateways in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", ward):
                raise ValueError(f"ward name {ward!r} must be 1-64 letters, digits, '-' or '_'")
            for g in gateways:
                if not re.fullmatch(GATEWAY_ID_RE, g):
                    raise ValueError(f"ward {ward!r}: {g!r} is not a gateway id")
                if g in seen and seen[g] != ward:
                    raise ValueError(f"gateway {g!r} is in two wards ({seen[g]!r}, {ward!r})")
                seen[g] = ward
        return v

    @property
    def ward_of(self) -> dict[str, str]:
        """gateway id → its ward (from ``roaming_groups``)."""
        return {g: ward for ward, gateways in self.roaming_groups.items() for g in gateways}

    # --- issue 17, alerts a nurse can acknowledge (helper halert) -----------------------------
    #: an unacknowledged alert of high risk (NEWS2 ≥ 7) escalates after this long (s,
    #: processing time); NEWS2 asks for an emergency assessment at once: 5 minutes.
    alert_response_high_s: float = Field(default=300.0, gt=0, le=7 * 24 * 3600)
    #: ...of medium risk (5-6, or a single parameter scoring 3): an urgent review, 30 minutes.
    alert_response_medium_s: float = Field(default=1800.0, gt=0, le=7 * 24 * 3600)
    #: how often the service looks for alerts past their response time (s).
    alert_check_s: float = Field(default=5.0, gt=0, le=3600)
    #: escalated alerts are also POSTed (JSON) here, with bounded retries; unset: MQTT only.
    alert_webhook_url: str | None = None

    @field_validator("alert_webhook_url")
    @classmethod
    def _alert_webhook_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("alert_webhook_url must be an http:// or https:// URL with a host")
        return v

    # --- FHIR R4 out (issue 17, helper hfhir; docs/fhir.md) ----------------------------------
    #: the FHIR server's base URL (http(s)://host[:port]/base): readings and NEWS2 points go
    #: there as transaction Bundles. Unset: no FHIR delivery at all.
    fhir_url: str | None = None
    #: bearer token sent with every request (never logged).
    fhir_token: SecretStr | None = None
    #: the identifier system of Patient.identifier (its value is the user_code).
    fhir_patient_system: str = Field(default="urn:vitalgate:user-code",
                                     pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s|]{1,250}$")
    #: entries per transaction Bundle at most (Patients and Devices included). 8 is Medplum's
    #: cap for a transaction holding a conditional create, and one reading message fits it.
    fhir_batch: int = Field(default=8, ge=1, le=1000)

    @field_validator("fhir_url")
    @classmethod
    def _check_fhir_url(cls, v: str | None) -> str | None:
        from urllib.parse import urlsplit

        if v is not None and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError("fhir_url must be http(s)://host[:port]/base")
        return v

    @property
    def fhir_enabled(self) -> bool:
        return bool(self.fhir_url)

    # --- issue 17, HL7 v2 out over MLLP (helper hhl7) ----------------------------------------
    #: the MLLP receiver (a device-integration engine) that takes ORU^R01 messages of every
    #: stored reading and emitted EWS point; HL7 output is off unless both are set.
    hl7_host: str | None = Field(default=None, min_length=1, max_length=253)
    hl7_port: int | None = Field(default=None, ge=1, le=65535)
    #: MSH-4 sending facility and PID-3's assigning authority of the user_code: a namespace id
    #: (1-20 letters, digits, '.', '_', '-') or an ISO OID (``1.2.840.114350``).
    hl7_facility: str = "vitalgate"
    hl7_patient_authority: str = "vitalgate"
    #: how long one message waits for its ACK (processing time) before it is retried (s).
    hl7_ack_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("hl7_facility", "hl7_patient_authority")
    @classmethod
    def _hl7_designator(cls, v: str) -> str:
        import re

        if not (re.fullmatch(r"[A-Za-z0-9._-]{1,20}", v)
                or (re.fullmatch(r"[0-2](\.(0|[1-9][0-9]*)){1,40}", v) and len(v) <= 199)):
            raise ValueError(f"{v!r} must be 1-20 letters, digits, '.', '_' or '-', or an ISO OID")
        return v

    @property
    def hl7_enabled(self) -> bool:
        return bool(self.hl7_host) and self.hl7_port is not None
