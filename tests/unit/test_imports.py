"""The house's floors (docs/architecture.md, "Layout"): every import in agent/ and builder/, at
module level or inside a function, goes down a floor or stays in its own package, and no two
modules import each other, directly or round a circle. The agent never imports the builder (it
runs on the node, where there is none)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

# Lowest first. A module's floor is its longest matching prefix's. Within one folder, a module may
# import its neighbours on the same floor; across folders, only lower floors.
FLOORS: dict[str, int] = {
    # agent: a bottom floor of the standard library only, then each part over the ones it uses
    "agent": 0, "agent.errors": 0, "agent.layout": 0, "agent.system": 0, "agent.log": 0, "agent.files": 0,
    "agent.http": 0, "agent.minisign": 0,
    "agent.apps": 1,
    "agent.config": 2,
    "agent.modules": 3,
    "agent.disk": 4,
    "agent.upgrade": 5,
    "agent.pid1": 6,
    "agent.cli": 7, "agent.doctor": 7,
    # builder: the core's bottom (definitions, downloads, tools), what the stages assemble, the
    # stages, the plan and pipeline that run them, what comes after a build, measuring, the CLI
    "builder": 0,
    "builder.media": 1,
    "builder.stages": 2,
    "builder.plan": 3, "builder.pipeline": 3,
    "builder.fleet": 4, "builder.vm": 4,
    "builder.bench": 5,
    "builder.cli": 6, "builder.__main__": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("agent", "builder") for p in sorted((ROOT / top).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules ``path`` imports, anywhere in it (``from a import b`` counts as
    ``a.b`` when that is a module, else as ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or {node.module}
    return found


PACKAGES = {m for m, p in modules().items() if p.name == "__init__.py"}


def floor(module: str) -> tuple[str, int]:
    """The package ``module`` is in (a folder: its room), and its floor."""
    prefix = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    room = module if module in PACKAGES else module.rpartition(".")[0]
    return room, FLOORS[prefix]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, targets in sorted(edges.items()):
        pkg, level = floor(importer)
        for target in sorted(targets):
            tpkg, tlevel = floor(target)
            if target.split(".")[0] == "builder" and importer.split(".")[0] == "agent":
                bad.append(f"{importer} -> {target}: the agent never imports the builder")
            elif importer.split(".")[0] != target.split(".")[0]:
                continue  # the builder uses the agent's code (the same partitioner, the same loader)
            elif tlevel > level or (tlevel == level and tpkg != pkg):
                bad.append(f"{importer} (floor {level}) -> {target} (floor {tlevel}, {tpkg})")
    return bad


def test_every_module_has_a_floor() -> None:
    assert [m for m in modules() if not any(m == p or m.startswith(p + ".") for p in FLOORS)] == []


def test_no_import_runs_back_up() -> None:
    assert upward(graph()) == []


def test_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_checks_catch_a_circle_and_an_import_upward() -> None:
    """The two checks on a made-up graph: a circle of three, and the disk part reaching for the CLI."""
    edges = {"agent.disk.install": {"agent.cli"}, "agent.cli": {"agent.disk.install"},
             "agent.config.a": {"agent.config.b"}, "agent.config.b": {"agent.config.c"},
             "agent.config.c": {"agent.config.a"}, "agent.errors": set(),
             "builder.media.grub": {"builder.stages.fetch"}}
    assert cycles(edges) == [["agent.cli", "agent.disk.install"],
                             ["agent.config.a", "agent.config.b", "agent.config.c"]]
    assert upward(edges) == ["agent.disk.install (floor 4) -> agent.cli (floor 7, agent)",
                             "builder.media.grub (floor 1) -> builder.stages.fetch (floor 2, builder.stages)"]
