"""Settings loading shared by every service: environment beats TOML file beats defaults.

Each service declares ONE settings class deriving from :class:`ServiceSettings` (env prefix
``VITALGATE_``) and loads it with :func:`load_settings`, which adds the TOML file (if any) as a
source below the environment.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "VITALGATE_CONFIG"

log = logging.getLogger(__name__)


class ServiceSettings(BaseSettings):
    """Base of every service's settings class. Unknown keys are errors (typos are caught)."""

    # hide_input_in_errors: a bad setting's error names the key and what is wrong, never the
    # value itself (it may be a password, an API key or a URL with credentials)
    model_config = SettingsConfigDict(env_prefix="VITALGATE_", extra="forbid", env_nested_delimiter="__",
                                      hide_input_in_errors=True)

    #: the TOML table this service reads, e.g. ``"ingest"``: ``[ingest]`` in the file.
    toml_table: ClassVar[str] = ""
    _toml_path: ClassVar[Path | None] = None
    #: old name → new name of renamed settings (one name per setting across services). The
    #: service still declares the old name as a field (``None`` by default) so that its
    #: environment variable and TOML key are read; the value moves to the new name, with a
    #: WARNING. The new name wins when both are set.
    deprecated_names: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _rename_deprecated(cls, data: Any) -> Any:
        if not cls.deprecated_names or not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in cls.deprecated_names.items():
            value = data.pop(old, None)
            if value is None:
                continue
            if data.get(new) is not None:
                log.warning("setting %s (VITALGATE_%s) is deprecated and ignored: %s (VITALGATE_%s) "
                            "is set too and wins", old, old.upper(), new, new.upper())
                continue
            log.warning("setting %s (VITALGATE_%s) is deprecated: name it %s (VITALGATE_%s), "
                        "as every service does", old, old.upper(), new, new.upper())
            data[new] = value
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = cls._toml_path
        if path is not None:
            sources.append(_TableSource(settings_cls, path, cls.toml_table))
        return tuple(sources)


class _TableSource(TomlConfigSettingsSource):
    """A TOML file, narrowed to one table when the service names one."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path, table: str) -> None:
        self._table = table
        super().__init__(settings_cls, toml_file=path)

    def _read_file(self, file_path: Path) -> dict[str, Any]:
        data: dict[str, Any] = super()._read_file(file_path)
        if self._table:
            section = data.get(self._table, {})
            return dict(section) if isinstance(section, dict) else {}
        return data


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], toml_path: str | Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from overrides > environment > TOML (``toml_path`` or $VITALGATE_CONFIG) > defaults."""
    path = toml_path or os.environ.get(CONFIG_ENV)
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    bound = type(cls.__name__, (cls,), {"_toml_path": Path(path) if path else None})
    return bound(**overrides)  # type: ignore[no-any-return]


#: default ports of MQTT and MQTT over TLS (IANA)
MQTT_PORT = 1883
MQTTS_PORT = 8883


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``: safe to show in a message."""
    return re.sub(r"^([^:/]*://)?[^@/]*@", lambda m: f"{m.group(1) or ''}***@", url)


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A broker URL, parsed once for every service: ``mqtt://[user:pass@]host[:port]``,
    ``mqtts://…`` (TLS), ``tcp://…`` (an alias of mqtt://) or a bare ``host[:port]``."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        shown = redact_url(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp"):
            raise ValueError(f"broker URL {shown!r} must look like mqtt://host:1883 or mqtts://host:8883")
        if not parts.hostname:
            raise ValueError(f"broker URL {shown!r} has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"broker URL {shown!r} has a bad port") from None
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (MQTTS_PORT if tls else MQTT_PORT),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
