"""The layout is a contract too: what each package may import (README, "Layout"), and no file
imports itself back through others. Every import counts: module level, inside functions and
behind ``TYPE_CHECKING`` (read with ``ast`` by tools/import_graph.py, which also draws it:
``python -m tools.import_graph --packages`` / ``--dot`` / ``--cycles``)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tools.import_graph import (
    COMPOSITION_ROOT,
    PACKAGES,
    ROOT,
    cycles,
    graph,
    modules,
    package_graph,
    package_of,
)

#: package → the packages of ours it may import: what the code needs, nothing more.
#: contract (vitalgate) ← e86? no: the wire protocols (e86, gatt) are stdlib only. e86 ← gateway, simulators;
#: ews ← ingest; the simulators build the gateway's BleBackend for --simulate (so they may
#: import the gateway, never the other way). "vitalgate" is the vocabulary (contract, config,
#: broker: nothing of the others); "vitalgate.cli" is the composition root (cli, demo,
#: __main__), which wires --simulate and labels the demo's patients (the other components'
#: CLIs it loads by name, with importlib); the demo orders its table by ews's result words.
#: vitalgate → ews: the EWS score type and its ordered words (ews.score: Result, Risk) are
#: ews's; the contract's Ews payload is a serialiser of that score and types its fields with
#: them, so the words are defined once. ews imports nothing of ours (it is the analytics
#: library, usable alone), so ews stays the leaf under vitalgate and the graph stays acyclic.
ALLOWED: dict[str, set[str]] = {
    "e86": set(),
    "gatt": set(),
    "ews": set(),
    "vitalgate": {"ews"},
    "vitalgate.cli": {"vitalgate", "simulators", "ews"},
    "gateway": {"vitalgate", "e86", "gatt"},
    "ingest": {"vitalgate", "ews"},
    "simulators": {"vitalgate", "e86", "gatt", "gateway"},
    "tools": set(),
}
FILES = graph()
TOP = package_graph(FILES)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    bad = []
    for module, deps in sorted(FILES.items()):
        if package_of(module) != package:
            continue
        allowed = ALLOWED[package]
        imported = {package_of(d) for d in deps} - {package}
        if not imported <= allowed:
            bad.append(f"{module} imports {sorted(imported - allowed)}")
    assert not bad, "\n".join(bad)


def test_every_package_has_a_rule() -> None:
    """A new top-level package gets a row in ALLOWED (tests and benchmarks may import anything)."""
    assert set(TOP) - {"tests", "benchmarks"} == set(ALLOWED)
    assert set(TOP) == set(PACKAGES) | {"vitalgate.cli"}
    assert all(m in FILES for m in COMPOSITION_ROOT)


def test_gateway_never_imports_simulators() -> None:
    """Not even in a function or behind TYPE_CHECKING: --simulate hands it a BleBackend."""
    assert "simulators" not in TOP["gateway"]
    assert not [m for m, deps in FILES.items() if m.startswith("gateway")
                and any(d.startswith("simulators") for d in deps)]


@pytest.mark.parametrize("package", ["e86", "gatt", "tools"])
def test_stdlib_only(package: str) -> None:
    """The wire protocol (and the dev tools) import the standard library and themselves only."""
    bad = []
    for module, path in sorted(modules(packages=[package]).items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [])
            bad += [f"{module} imports {n}" for n in names
                    if n.split(".")[0] not in sys.stdlib_module_names | {package, "__future__"}]
    assert not bad, "\n".join(bad)


def test_packages_are_acyclic() -> None:
    assert cycles(TOP) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_files_are_acyclic(package: str) -> None:
    """No file imports itself back through other files (a cycle across packages would be a
    package cycle, checked above)."""
    inside = {m: {d for d in deps if d.split(".")[0] == package}
              for m, deps in FILES.items() if m.split(".")[0] == package}
    assert inside, f"no files in {package}"
    assert cycles(inside) == []


def test_the_graph_reader_sees_hidden_imports(tmp_path: Path) -> None:
    """Function-level, TYPE_CHECKING and relative imports are edges; a cycle through them is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    edges = graph(tmp_path, ["pkg"])
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert ROOT.is_dir()


#: the building blocks there is one of (DEVELOPERS.md, "one of each building block"), by the
#: name a second copy would define, and the one module that may define it.
BUILDING_BLOCKS: dict[str, str] = {
    "epoch_ms": "vitalgate.clock",
    "_epoch_ms": "vitalgate.clock",
    "SystemClock": "vitalgate.clock",
    "ScaledClock": "vitalgate.clock",
    "ManualClock": "vitalgate.clock",
    "Backoff": "vitalgate.backoff",
    "make_client": "vitalgate.mqtt_session",
    "SessionThread": "vitalgate.mqtt_thread",
    "Score": "ews.score",
    "Result": "ews.score",
    "Risk": "ews.score",
}
#: copies that stay, each with where and why: ews may not import vitalgate (vitalgate imports
#: ews's score words, and ews is the analytics library usable alone).
PENDING_COPIES: dict[str, str] = {
    "ews.stream": "epoch_ms: ews imports nothing of ours; its StreamScorer's clock default",
}
PRODUCTION = ("vitalgate", "e86", "gatt", "gateway", "ingest", "ews", "simulators", "tools")


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}


def test_one_of_each_building_block() -> None:
    """A second clock, backoff type or MQTT client factory is a second place to fix."""
    bad = []
    for module, path in sorted(modules(packages=[*PRODUCTION, "tests"]).items()):
        if module.startswith("tests.") and not module.startswith("tests.support"):
            continue
        for name in sorted(_defined(path) & set(BUILDING_BLOCKS)):
            if BUILDING_BLOCKS[name] != module and module not in PENDING_COPIES:
                bad.append(f"{module} defines its own {name} (use {BUILDING_BLOCKS[name]})")
    assert not bad, "\n".join(bad)
    assert all(m in modules(packages=PRODUCTION) for m in PENDING_COPIES)


def test_only_the_mqtt_core_builds_paho_clients() -> None:
    """Every MQTT client is made by vitalgate.mqtt_session.make_client (protocol, TLS,
    credentials, reconnect decided in one place)."""
    bad = []
    for module, path in sorted(modules(packages=[*PRODUCTION, "tests"]).items()):
        if module == "vitalgate.mqtt_session" or (module.startswith("tests.")
                                                   and not module.startswith("tests.support")):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Attribute) and f.attr == "Client"
                        and isinstance(f.value, ast.Name) and f.value.id == "mqtt") \
                        or (isinstance(f, ast.Name) and f.id == "Client"):
                    bad.append(f"{module}:{node.lineno} builds a paho client")
    assert not bad, "\n".join(bad)


def test_the_gateway_reads_its_clock() -> None:
    """No direct time.time()/time.monotonic() in the gateway: it stamps, schedules and waits on
    an injected vitalgate.clock.Clock (tests and --simulate control time)."""
    bad = []
    for module, path in sorted(modules(packages=["gateway"]).items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr in ("time", "monotonic")
                    and isinstance(node.value, ast.Name) and node.value.id == "time"):
                bad.append(f"{module}:{node.lineno} calls time.{node.attr}")
    assert not bad, "\n".join(bad)


#: database drivers: only the storage layer (ingest/db/) may import them (issue 13).
DRIVERS: frozenset[str] = frozenset({"sqlite3", "psycopg", "psycopg_pool", "asyncpg"})
#: files of ingest outside ingest/db that may import a driver: none (issue 13 moved them all).
PENDING_DRIVER_IMPORTS: frozenset[str] = frozenset()


def _driver_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                 else [])
        found |= {n.split(".")[0] for n in names} & DRIVERS
    return found


def test_only_ingest_db_imports_a_database_driver() -> None:
    """Every table, connection and SQL statement of ingest lives in ingest/db/: nothing else
    in ingest imports sqlite3 or psycopg (at module level, in a function or for typing)."""
    users = {module for module, path in modules(packages=["ingest"]).items()
             if _driver_imports(path)}
    outside = {m for m in users if not (m == "ingest.db" or m.startswith("ingest.db."))}
    assert outside - PENDING_DRIVER_IMPORTS == set(), "import the driver only in ingest/db/"
    assert "ingest.db.engine" in users  # the check sees the storage layer's own imports


def test_the_score_words_are_defined_once() -> None:
    """Cexup's result words and NEWS2's risk order are ews.score's (Result, Risk, RESULTS,
    RISK_ORDER): no other module assigns a RESULTS or RISK_ORDER of its own."""
    bad = []
    for module, path in sorted(modules(packages=PRODUCTION).items()):
        if module == "ews.score":
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            bad += [f"{module}:{node.lineno} defines {t.id}" for t in targets
                    if isinstance(t, ast.Name) and t.id in ("RESULTS", "RISK_ORDER")]
    assert not bad, "\n".join(bad)
