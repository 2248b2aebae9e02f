"""Run a plan: each stage in order, cached by content, artifacts published atomically.

A stage's id hashes its name, version, options and the previous stage's id,
so a change anywhere re-runs that stage and everything after it, and nothing
before. A volatile stage (fetch) always runs and is keyed by what it produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import BasaltError, Problem
from builder import host, progress
from builder.download import BlobStore, cache_root, sha256_file
from builder.plan import Plan, PlannedStage
from builder.stages import StageContext, module
from builder.stages import k3s as k3s_stage

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
KEEP = 3  # cached outputs kept per image and stage


@dataclass(frozen=True)
class StageResult:
    name: str
    id: str
    path: Path
    cached: bool
    seconds: float


def code_digest(name: str) -> str:
    """The stage's own source and the helpers it declares: editing them invalidates its cache."""
    mod = module(name)
    files = [Path(str(mod.__file__)), *(ROOT / p for p in getattr(mod, "SOURCES", ()))]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def stage_id(stage: PlannedStage, version: int, prev: str, code: str) -> str:
    blob = json.dumps({"name": stage.name, "version": version, "options": stage.options, "prev": prev,
                       "code": code}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def check_tools(plan: Plan) -> None:
    """Fail in the first second, naming the Debian package, if a host tool is missing."""
    missing: dict[str, str] = {}
    for s in plan.stages:
        tools: dict[str, str] = getattr(module(s.name), "TOOLS", {})
        if s.name == "rootfs":
            from builder.backends import BACKENDS
            tools = {**tools, **BACKENDS[s.options["backend"]].TOOLS}
        for tool, package in tools.items():
            if host.which(tool) is None:
                missing[tool] = package
    if missing:
        apt = sorted({p for p in missing.values() if " " not in p})
        other = sorted({p for p in missing.values() if " " in p})
        hint = "; ".join([*([f"apt-get install {' '.join(apt)}  (or run: ./inv setup)"] if apt else []), *other])
        raise BasaltError(Problem(f"missing host tools: {', '.join(sorted(missing))}", hint=hint))


class Pipeline:
    def __init__(self, plan: Plan, cache: Path | None = None, out: Path | None = None):
        self.plan = plan
        self.cache = cache or cache_root()
        self.stages_dir = self.cache / "stages"
        self.out = out or OUT
        self.store = BlobStore(self.cache)
        self.results: dict[str, StageResult] = {}

    def run(self, until: str | None = None) -> dict[str, StageResult]:
        check_tools(self.plan)
        prev = ""
        for stage in self.plan.stages:
            result = self._run_stage(stage, prev)
            self.results[stage.name] = result
            prev = result.id
            if stage.name == until:
                break
        return self.results

    def _remember(self, name: str, sid: str) -> None:
        """Keep the last KEEP outputs of each stage per image; remove older ones that no
        image still lists (a rootfs tree is hundreds of MB)."""
        history_file = self.stages_dir / "last" / f"{self.plan.image.name}.{name}.history.json"
        history = json.loads(history_file.read_text()) if history_file.is_file() else []
        history = [sid, *(h for h in history if h != sid)]
        dropped, history = history[KEEP:], history[:KEEP]
        history_file.parent.mkdir(parents=True, exist_ok=True)
        history_file.write_text(json.dumps(history))
        if dropped:
            kept = {h for f in history_file.parent.glob("*.history.json") for h in json.loads(f.read_text())}
            for old in dropped:
                if old not in kept:
                    shutil.rmtree(self.stages_dir / old, ignore_errors=True)

    def _last_record(self, name: str) -> Path:
        return self.stages_dir / "last" / f"{self.plan.image.name}.{name}.json"

    def _explain_miss(self, stage: PlannedStage, prev: str, code: str) -> str:
        record = self._last_record(stage.name)
        if not record.is_file():
            return "first build"
        last = json.loads(record.read_text())
        changed = sorted(k for k in set(last["options"]) | set(stage.options)
                         if last["options"].get(k) != stage.options.get(k))
        reasons = []
        if changed:
            reasons.append("options changed: " + ", ".join(changed))
        if last.get("code") != code:
            reasons.append("stage code changed")
        if last.get("prev") != prev:
            reasons.append("an earlier stage changed")
        return "; ".join(reasons) or "previous output was removed from the cache"

    def _run_stage(self, stage: PlannedStage, prev: str) -> StageResult:
        mod = module(stage.name)
        started = time.monotonic()
        code = code_digest(stage.name)  # read once: ids, miss reasons and the record all use it
        if not mod.VOLATILE:
            sid = stage_id(stage, mod.VERSION, prev, code)
            done = self.stages_dir / sid
            if (done / "stage.json").is_file():
                progress.log(f"✓ {stage.name}: cached ({sid[:12]})")
                return StageResult(stage.name, sid, done / "tree", True, 0.0)
            why = self._explain_miss(stage, prev, code)
        else:
            why = "always checked"
        with progress.step(f"{stage.name} ({why})"):
            tmp = self.stages_dir / f"tmp-{stage.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "out").mkdir(parents=True)
            ctx = StageContext(out=tmp / "out", inputs={k: v.path for k, v in self.results.items()},
                               store=self.store, work=tmp / "work")
            ctx.work.mkdir()
            try:
                mod.run(ctx, stage.options)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(ctx.work, ignore_errors=True)
            if mod.VOLATILE:
                sid = stage_id(stage, mod.VERSION, sha256_file(ctx.out / "key"), code)
            done = self.stages_dir / sid
            record = {"name": stage.name, "options": stage.options, "prev": prev, "code": code}
            if (done / "stage.json").is_file():
                shutil.rmtree(tmp)  # a volatile stage produced what we already had
                cached = True
            else:
                shutil.rmtree(done, ignore_errors=True)
                (tmp / "out").rename(tmp / "tree")
                os.rename(tmp, done)
                (done / "stage.json").write_text(json.dumps(record, indent=1))
                cached = False
            self._last_record(stage.name).parent.mkdir(parents=True, exist_ok=True)
            self._last_record(stage.name).write_text(json.dumps(record))
        self._remember(stage.name, sid)
        return StageResult(stage.name, sid, done / "tree", cached, time.monotonic() - started)


def build(plan: Plan, out: Path | None = None, until: str | None = None) -> Path:
    """Run ``plan`` and publish its artifacts in ``out/<image>/``; return that directory."""
    pipe = Pipeline(plan, out=out)
    with progress.step(f"Building {plan.image.name} {plan.image.version}"):
        results = pipe.run(until)
        if until and until != plan.stages[-1].name:
            return results[until].path
        return publish(plan, results, pipe.out)


ARTIFACTS = (("iso", "basalt.iso", "{name}-{version}.iso"),
             ("rootfs", "kernel/vmlinuz", "vmlinuz"),
             ("initramfs", "initrd.img", "initrd.img"),
             ("squashfs", "rootfs.squashfs", "rootfs.squashfs"),
             ("fetch", "packages.lock.json", "packages.lock.json"))


def publish(plan: Plan, results: dict[str, StageResult], out_root: Path) -> Path:
    img = plan.image
    final = out_root / img.name
    partial = out_root / f".{img.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    outputs = []
    for stage, src, pattern in ARTIFACTS:
        name = pattern.format(name=img.name, version=img.version)
        with progress.step(f"Publishing {name}"):
            copy_with_progress(results[stage].path / src, partial / name)
        outputs.append({"file": name, "size": (partial / name).stat().st_size,
                        "sha256": sha256_file(partial / name)})
    lock = json.loads((results["fetch"].path / "packages.lock.json").read_text())
    config = plan.stages[-1].options.get("config")
    rootfs = next(s for s in plan.stages if s.name == "rootfs").options
    k3s = k3s_stage.content(json.loads((results["k3s"].path / "k3s.lock.json").read_text()))
    manifest: dict[str, Any] = {
        "image": img.name, "version": img.version, "arch": str(img.arch),
        "source_date_epoch": rootfs["source_date_epoch"],
        "inputs": {
            "image_definition": {"file": str(img.source), "sha256": sha256_file(img.source)},
            "config": {"sha256": hashlib.sha256(config.encode()).hexdigest()} if config else None,
            "packages": [{k: p[k] for k in ("name", "version", "sha256", "role")} for p in lock["packages"]],
            "k3s": k3s,
            "k3s_charts": [{"name": c["name"], "sha256": c["digest"]} for c in rootfs["k3s_charts"]],
            "overlays": rootfs["overlays"],
            "agent_digest": rootfs["agent_digest"],
        },
        "stages": [{"name": r.name, "id": r.id, "cached": r.cached, "seconds": round(r.seconds, 2)}
                   for r in results.values()],
        "outputs": outputs,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    # The rootfs tree stays in the cache; link it for inspection (not an artifact).
    (partial / "rootfs").symlink_to(results["rootfs"].path)
    old = out_root / f".{img.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def copy_with_progress(src: Path, dest: Path) -> None:
    bar = progress.Bar(dest.name, src.stat().st_size)
    with src.open("rb") as fin, dest.open("wb") as fout:
        while chunk := fin.read(4 << 20):
            fout.write(chunk)
            bar.update(len(chunk))
    bar.close()
