"""The layout is a contract too: what each package may import (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"vitalgate", "e86", "gateway", "ingest", "ews", "simulators", "benchmarks", "tests"}
ALLOWED: dict[str, set[str]] = {
    "e86": set(),  # the wire protocol: stdlib only
    "ews": set(),
    "vitalgate": {"ews", "gateway", "ingest", "simulators"},  # only the CLI/demo wire components
    "gateway": {"vitalgate", "e86"},  # --simulate is wired at the composition root (vitalgate.cli)
    "ingest": {"vitalgate", "ews"},
    "simulators": {"vitalgate", "e86", "ews", "gateway"},
}
# vitalgate's core modules (contract, config, broker) import none of the components.
CORE = {"contract.py", "config.py", "broker.py", "__init__.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        imported = _imports(path) - {package}
        allowed = ALLOWED[package]
        if package == "vitalgate" and path.name in CORE:
            allowed = set()
        if not imported <= allowed:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(imported - allowed)}")
    assert not bad, "\n".join(bad)

