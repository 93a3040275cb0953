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
