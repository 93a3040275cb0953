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
