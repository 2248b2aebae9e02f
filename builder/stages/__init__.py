"""Build stages. Each module declares one stage: NAME, SCHEMA (its options), VERSION
(bumped when its output for the same options changes), INPUTS (the stages whose outputs
it reads) and ``run(ctx: StageContext, options)``; and where it has them: VOLATILE,
SOURCES (helper files that key it), TOOLS (host tools), PUBLISH (the artifacts it adds to
``out/<image>/``) or ``published(options)`` when they depend on the options,
``manifest(options, tree)`` (its part of ``manifest.json``'s inputs) and INSPECT.
``module(name)`` reads one into a typed ``Stage``: nobody else looks at a module's names.
Stages get everything through their options and the outputs of their inputs; they never
read image definitions.

The build stages run once per image, in BUILD order; then one output stage per entry of the
image definition's ``outputs[]``, by format (OUTPUTS). A new output format is one new module
here and its name in OUTPUTS."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.errors import BasaltError, Problem
from builder.download import BlobStore

BUILD = ("fetch", "k3s", "rootfs", "squashfs", "initramfs", "bundle")
OUTPUTS = ("iso", "raw")  # output formats, each a stage module of that name
ORDER = (*BUILD, *OUTPUTS)  # every stage, in the order a plan runs them: --until, docs and help use this


@dataclass
class StageContext:
    out: Path  # this stage's output directory (empty, private until the stage succeeds)
    inputs: dict[str, Path]  # the declared input stages' output directories, by stage name
    store: BlobStore
    work: Path  # scratch space, removed afterwards

    def input(self, name: str) -> Path:
        if name not in self.inputs:
            raise BasaltError(Problem(f"internal: a stage read '{name}', which is not among its INPUTS "
                                      f"({', '.join(self.inputs) or 'none'})",
                                      hint="declare it in the stage module's INPUTS, so its cache id covers it"))
        return self.inputs[name]


Published = tuple[tuple[str, str], ...]  # (file in the stage's output, name in out/<image>/ with {name}, {version})


@dataclass(frozen=True)
class Stage:
    """A stage module read once into one typed record: all the planner, the pipeline, the docs and
    the tests use of it. What a module leaves out takes the default here."""
    name: str
    version: int  # bumped when the output for the same options changes
    schema: dict[str, Any]  # its options, as JSON Schema
    inputs: tuple[str, ...]  # the stages whose outputs it reads (its id hashes theirs)
    volatile: bool  # its output depends on the outside world: always run, keyed by its output
    sources: tuple[Path, ...]  # the files whose bytes key it: the module itself and its SOURCES
    tools: dict[str, str]  # host tool -> the Debian package that has it
    run: Callable[[StageContext, dict[str, Any]], None]
    published: Callable[[dict[str, Any]], Published]  # what it adds to out/<image>/, for these options
    manifest: Callable[[dict[str, Any], Path], dict[str, Any]]  # its part of manifest.json's inputs
    inspect: str = ""  # out/<image>/<inspect> links to its output tree (not an artifact)


def _no_manifest(options: dict[str, Any], tree: Path) -> dict[str, Any]:
    return {}


def module(name: str) -> Stage:
    """The stage ``name`` (builder/stages/<name>.py), as a typed record."""
    mod: ModuleType = importlib.import_module(f"builder.stages.{name}")
    root = Path(__file__).resolve().parents[2]
    fixed: Published = getattr(mod, "PUBLISH", ())
    return Stage(
        name=mod.NAME, version=mod.VERSION, schema=mod.SCHEMA, inputs=tuple(mod.INPUTS),
        volatile=getattr(mod, "VOLATILE", False),
        sources=(Path(str(mod.__file__)), *(root / p for p in getattr(mod, "SOURCES", ()))),
        tools=dict(getattr(mod, "TOOLS", {})), run=mod.run,
        published=getattr(mod, "published", lambda options: fixed),
        manifest=getattr(mod, "manifest", _no_manifest), inspect=getattr(mod, "INSPECT", ""))


def schema_for(name: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **module(name).schema}
