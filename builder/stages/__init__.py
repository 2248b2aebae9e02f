"""Build stages. Each module declares one stage: NAME, SCHEMA (its options),
VERSION (bumped when its output for the same options changes), and
``run(ctx, options)``. Stages get everything through their options and the
outputs of earlier stages; they never read image definitions."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from builder.download import BlobStore

ORDER = ("fetch", "k3s", "rootfs", "squashfs", "initramfs", "iso")


class StageModule(Protocol):
    __file__: str
    NAME: str
    VERSION: int
    SCHEMA: dict[str, Any]
    VOLATILE: bool  # output depends on the outside world: always run, keyed by its output

    def run(self, ctx: StageContext, options: dict[str, Any]) -> None: ...


@dataclass
class StageContext:
    out: Path  # this stage's output directory (empty, private until the stage succeeds)
    inputs: dict[str, Path]  # earlier stages' output directories, by stage name
    store: BlobStore
    work: Path  # scratch space, removed afterwards

    def input(self, name: str) -> Path:
        return self.inputs[name]


def module(name: str) -> StageModule:
    mod: ModuleType = importlib.import_module(f"builder.stages.{name}")
    return mod  # type: ignore[return-value]


def schema_for(name: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **module(name).SCHEMA}
