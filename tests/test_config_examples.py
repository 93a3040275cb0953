"""Every TOML example in config/ loads into its service's settings class (unknown keys are
errors there, so a renamed setting breaks this test, not an installation)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from vitalgate.config import ServiceSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "ingest.example.toml": "ingest.settings:IngestSettings",
    "gateway.example.toml": "gateway.settings:GatewaySettings",
    "simulators.example.toml": "simulators.cli:SimulatorSettings",
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_loads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("VITALGATE_")]:
        monkeypatch.delenv(key)
    module, cls_name = EXAMPLES[name].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(cls, ServiceSettings)
    settings = load_settings(cls, ROOT / "config" / name)
    assert settings.model_dump()


def test_environment_beats_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ingest.settings import IngestSettings

    toml = tmp_path / "i.toml"
    toml.write_text("[ingest]\nhttp_port = 9001\n")
    assert load_settings(IngestSettings, toml).http_port == 9001
    monkeypatch.setenv("VITALGATE_HTTP_PORT", "9002")
    assert load_settings(IngestSettings, toml).http_port == 9002


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    from ingest.settings import IngestSettings

    toml = tmp_path / "i.toml"
    toml.write_text("[ingest]\nhttp_prot = 9001\n")
    with pytest.raises(ValueError, match="http_prot"):
        load_settings(IngestSettings, toml)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "user"),
    [
        ("mqtt://broker.ward", "broker.ward", 1883, False, None),
        ("mqtts://broker.ward", "broker.ward", 8883, True, None),
        ("mqtts://gw%2D1:s%40cret@10.0.0.5:9883", "10.0.0.5", 9883, True, "gw-1"),
        ("tcp://localhost:1884", "localhost", 1884, False, None),
        ("localhost:1885", "localhost", 1885, False, None),
    ],
)
def test_broker_url_parses_once_for_every_service(url: str, host: str, port: int, tls: bool,
                                                  user: str | None) -> None:
    from vitalgate.config import BrokerAddress

    address = BrokerAddress.parse(url)
    assert (address.host, address.port, address.tls, address.username) == (host, port, tls, user)


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://host:notaport", "amqp://h:1"])
def test_bad_broker_urls_are_refused_by_every_service(url: str) -> None:
    from gateway.settings import GatewaySettings
    from ingest.settings import IngestSettings

    for cls in (IngestSettings, GatewaySettings):
        with pytest.raises(ValueError, match="broker URL"):
            load_settings(cls, None, mqtt_url=url)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("VITALGATE_")]:
        monkeypatch.delenv(key)


def test_one_broker_setting_reaches_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """VITALGATE_MQTT_URL set once points the simulators too (they read ``broker`` before, and
    published to localhost:1883 while gateway and ingest went elsewhere)."""
    from gateway.settings import GatewaySettings
    from ingest.settings import IngestSettings
    from simulators.cli import SimulatorSettings

    _clean_env(monkeypatch)
    monkeypatch.setenv("VITALGATE_MQTT_URL", "mqtt://broker.ward:1999")
    for cls in (IngestSettings, GatewaySettings, SimulatorSettings):
        assert load_settings(cls).mqtt_url == "mqtt://broker.ward:1999", cls.__name__


@pytest.mark.parametrize(
    ("cls_path", "old", "new", "value"),
    [
        ("simulators.cli:SimulatorSettings", "broker", "mqtt_url", "mqtt://old.ward:1884"),
        ("ingest.settings:IngestSettings", "mqtt_ca_file", "mqtt_ca", "/etc/ca.pem"),
        ("ingest.settings:IngestSettings", "ews_future_skew_s", "max_future_skew_s", "120.0"),
    ],
)
@pytest.mark.parametrize("where", ["env", "toml", "init"])
def test_deprecated_names_are_read_with_a_warning(
    cls_path: str, old: str, new: str, value: str, where: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    _clean_env(monkeypatch)
    module, cls_name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    toml = None
    kwargs: dict[str, str] = {}
    if where == "env":
        monkeypatch.setenv(f"VITALGATE_{old.upper()}", value)
    elif where == "toml":
        toml = tmp_path / "c.toml"
        toml.write_text(f'[{cls.toml_table}]\n{old} = "{value}"\n')
    else:
        kwargs[old] = value
    with caplog.at_level("WARNING", logger="vitalgate.config"):
        settings = load_settings(cls, toml, **kwargs)
    assert str(getattr(settings, new)) == value
    assert getattr(settings, old) is None
    assert any(old in r.getMessage() and new in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def test_new_name_wins_over_deprecated_one(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from simulators.cli import SimulatorSettings

    _clean_env(monkeypatch)
    monkeypatch.setenv("VITALGATE_BROKER", "mqtt://old.ward:1")
    monkeypatch.setenv("VITALGATE_MQTT_URL", "mqtt://new.ward:2")
    with caplog.at_level("WARNING", logger="vitalgate.config"):
        assert load_settings(SimulatorSettings).mqtt_url == "mqtt://new.ward:2"
    assert any("ignored" in r.getMessage() for r in caplog.records)


def test_examples_use_no_deprecated_names() -> None:
    import tomllib

    for name, target in EXAMPLES.items():
        module, cls_name = target.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        data = tomllib.loads((ROOT / "config" / name).read_text())
        used = set(data.get(cls.toml_table, data))
        assert not used & set(cls.deprecated_names), name


@pytest.mark.parametrize("url", ["mqtt://gw:s3cr3t@host:notaport", "amqp://gw:s3cr3t@h:1",
                                 "gw:s3cr3t@host:99999"])
def test_a_bad_broker_url_is_named_without_its_password(url: str) -> None:
    from vitalgate.config import BrokerAddress

    with pytest.raises(ValueError, match="broker URL") as info:
        BrokerAddress.parse(url)
    assert "s3cr3t" not in str(info.value) and "***@" in str(info.value)


def test_a_bad_setting_error_never_shows_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from gateway.settings import GatewaySettings

    _clean_env(monkeypatch)
    monkeypatch.setenv("VITALGATE_MQTT_URL", "mqtt://gw:s3cr3t@host:notaport")
    with pytest.raises(ValidationError) as info:
        load_settings(GatewaySettings)
    assert "mqtt_url" in str(info.value) and "s3cr3t" not in str(info.value)
