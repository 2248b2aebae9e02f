"""Build stages. Each module declares one stage: NAME, SCHEMA (its options), VERSION
(bumped when its output for the same options changes), INPUTS (the stages whose outputs
it reads), PUBLISH (the artifacts it contributes to ``out/<image>/``), an optional
``manifest(options, tree)`` (its part of ``manifest.json``'s inputs) and
``run(ctx, options)``. Stages get everything through their options and the outputs of
their inputs; they never read image definitions.

The build stages run once per image, in BUILD order; then one output stage per entry of the
image definition's ``outputs[]``, by format (OUTPUTS). A new output format is one new module
here and its name in OUTPUTS."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from agent.errors import BasaltError, Problem
from builder.download import BlobStore

BUILD = ("fetch", "k3s", "rootfs", "squashfs", "initramfs", "bundle")
OUTPUTS = ("iso", "raw")  # output formats, each a stage module of that name
ORDER = (*BUILD, *OUTPUTS)  # every stage, in the order a plan runs them: --until, docs and help use this


class StageModule(Protocol):
    __file__: str
    NAME: str
    VERSION: int
    SCHEMA: dict[str, Any]
    INPUTS: tuple[str, ...]  # stages whose outputs this one reads (its id hashes theirs)
    # (file in this stage's output, name in out/<image>/ with {name} and {version}): artifacts it publishes
    PUBLISH: tuple[tuple[str, str], ...]
    VOLATILE: bool  # output depends on the outside world: always run, keyed by its output

    def run(self, ctx: StageContext, options: dict[str, Any]) -> None: ...


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


def module(name: str) -> StageModule:
    mod: ModuleType = importlib.import_module(f"builder.stages.{name}")
    return mod  # type: ignore[return-value]


def schema_for(name: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **module(name).SCHEMA}
