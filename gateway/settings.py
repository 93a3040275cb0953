"""The gateway's settings: ``[gateway]`` in the TOML file, ``VITALGATE_*`` in the environment.

See ``config/gateway.example.toml`` for every key with its meaning.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator

from e86.constants import VITAL_HISTORY_KINDS
from vitalgate.config import BrokerAddress, ServiceSettings
from vitalgate.contract import DEFAULT_PREFIX, GATEWAY_ID_RE, USER_CODE_RE, matches, normalise_mac


def default_data_dir() -> Path:
    """systemd's ``$STATE_DIRECTORY`` (StateDirectory=vitalgate) if set, else a per-user dir."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path.home() / ".local" / "state" / "vitalgate"


class GatewaySettings(ServiceSettings):
    toml_table: ClassVar[str] = "gateway"

    gateway_id: str = "gateway-1"
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_ca: Path | None = None
    mqtt_cert: Path | None = None
    mqtt_key: Path | None = None
    mqtt_keepalive_s: int = Field(default=30, ge=5, le=3600)
    #: MQTT client id; empty means ``vitalgate-gw-{gateway_id}``.
    mqtt_client_id: str = ""
    prefix: str = DEFAULT_PREFIX
    #: readings published to the broker but not yet acknowledged (PUBACK), at most.
    inflight_window: int = Field(default=64, ge=1, le=1000)

    data_dir: Path = Field(default_factory=default_data_dir)
    buffer_max_rows: int = Field(default=500_000, ge=10)
    buffer_max_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    #: FULL: every commit is fsynced (survives power cuts). NORMAL: survives process crashes only.
    buffer_synchronous: Literal["FULL", "NORMAL"] = "FULL"

    #: watches to collect from: MAC (any spelling) → user_code of the patient wearing it.
    devices: dict[str, str] = Field(default_factory=dict)
    #: also connect to any E86 watch that is not in ``devices`` (no user_code then).
    adopt_any: bool = False
    max_watches: int = Field(default=5, ge=1, le=20)
    timezone: str = "UTC"
    hr_interval_min: int = Field(default=10, ge=1, le=255)
    spo2_interval_min: int = Field(default=10, ge=1, le=255)
    temperature_interval_min: int = Field(default=10, ge=1, le=255)
    realtime_upload: bool = True
    history_kinds: list[str] = Field(default_factory=lambda: ["all"])
    history_sync_min: float = Field(default=10.0, gt=0)
    #: restart the scanner when no advertisement was seen for this long while watches are missing.
    scan_watchdog_s: float = Field(default=60.0, gt=0)
    connect_timeout_s: float = Field(default=20.0, gt=0)
    ecg_chunk_samples: int = Field(default=250, ge=10, le=5000)

    status_port: int = Field(default=8787, ge=0, le=65535)
    status_interval_s: float = Field(default=30.0, gt=0)

    @field_validator("gateway_id")
    @classmethod
    def _gateway_id(cls, v: str) -> str:
        if not matches(GATEWAY_ID_RE, v):
            raise ValueError(f"gateway_id {v!r} must match {GATEWAY_ID_RE.pattern}")
        return v

    @field_validator("mqtt_url")
    @classmethod
    def _url(cls, v: str) -> str:
        BrokerAddress.parse(v)
        return v

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: dict[str, str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for mac, user_code in v.items():
            if not matches(USER_CODE_RE, user_code):
                raise ValueError(f"devices.{mac}: user_code {user_code!r} must match {USER_CODE_RE.pattern}")
            out[normalise_mac(mac)] = user_code
        return out

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {v!r} is not an IANA time zone name") from None
        return v

    @field_validator("history_kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in VITAL_HISTORY_KINDS]
        if bad or not v:
            raise ValueError(f"history_kinds {v!r}: each must be one of {', '.join(VITAL_HISTORY_KINDS)}")
        return v

    @model_validator(mode="after")
    def _tls_files(self) -> GatewaySettings:
        if (self.mqtt_cert is None) != (self.mqtt_key is None):
            raise ValueError("mqtt_cert and mqtt_key go together: set both or neither")
        return self

    # ------------------------------------------------------------------ derived

    @property
    def broker(self) -> BrokerAddress:
        """The URL parsed; explicit credentials beat those in the URL; a CA file means TLS."""
        url = BrokerAddress.parse(self.mqtt_url)
        return replace(
            url,
            tls=url.tls or self.mqtt_ca is not None,
            username=self.mqtt_username or url.username,
            password=(self.mqtt_password.get_secret_value() if self.mqtt_password is not None
                      else url.password),
        )

    @property
    def client_id(self) -> str:
        return self.mqtt_client_id or f"vitalgate-gw-{self.gateway_id}"

    @property
    def buffer_path(self) -> Path:
        return self.data_dir / "buffer.sqlite3"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "status.json"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    # --- issue 12, gateway side: buffer durability (kept acknowledged readings for `republish`) ---
    #: acknowledged readings kept in the buffer so ingest can ask for a gap again (0: none kept);
    #: they count toward buffer_max_rows / buffer_max_bytes and are the first to make room.
    buffer_keep_acked_rows: int = Field(default=10_000, ge=0, le=5_000_000)
    #: … and for at most this long after their PUBACK.
    buffer_keep_acked_s: float = Field(default=6 * 3600.0, ge=0, le=30 * 86400.0)
    #: MQTT protocol of the publisher (the same setting as ingest's): "3.1.1" by default because
    #: Mosquitto 2.0.11's MQTT 5 flow control is unreliable (docs/reliability.md); with "5" the
    #: broker can say "Session taken over" (gateway/mqtt_retry.py detects takeovers either way).
    mqtt_protocol: Literal["5", "3.1.1"] = "3.1.1"

    # --- issue 16, many devices per Pi: adapters, connection slots, rotation, recovery, clock ---
    #: the Bluetooth adapters to connect through (BlueZ names); a second USB adapter adds slots.
    adapters: list[str] = Field(default_factory=lambda: ["hci0"], min_length=1, max_length=4)
    #: simultaneous connections per adapter. 3 is ESPHome's bluetooth_proxy default (its docs:
    #: "a maximum number of 3 simultaneous active connections", at most 5 recommended); a Pi's
    #: onboard controller (CYW43455, UART-attached, shared with Wi-Fi) documents no figure, so
    #: the same conservative number — raise it for a USB adapter that holds more.
    slots_per_adapter: int = Field(default=3, ge=1, le=10)
    #: when devices wait for a slot, a connected one yields its slot after this long (clock
    #: seconds) and its first history sync — enough for realtime readings and the history that
    #: fills what it missed while it waited.
    rotation_session_s: float = Field(default=120.0, gt=0, le=86400)
    #: consecutive connection failures of one device after which its cached BlueZ state is
    #: dropped (RemoveDevice) before the next try.
    forget_after_failures: int = Field(default=3, ge=1, le=100)
    #: trust the wall clock without an NTP sync signal (hosts whose kernel time status cannot be
    #: read, e.g. some containers); off on a Pi, which boots with a stale time.
    clock_assume_synchronised: bool = False

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: list[str]) -> list[str]:
        import re

        for name in v:
            if not re.fullmatch(r"hci[0-9]{1,2}", name):
                raise ValueError(f"adapter {name!r} is not a BlueZ adapter name (hci0, hci1 …)")
        if len(set(v)) != len(v):
            raise ValueError("adapters are listed twice")
        return v
