"""Run a plan: each stage cached by content, artifacts published atomically.

A stage declares its inputs (the stages whose outputs it reads). Its id hashes its name,
version, options, code and the ids of its inputs (as osbuild does), so it is reused exactly
when nothing it is built from changed, and a change re-runs the stages that read it, and
only those. A volatile stage (fetch, k3s) always runs and is keyed by what it produced.

Builds may run at once over one cache (two ``inv build``s, the test suite's workers): a stage is
built under its id's lock, so a second build of it waits and reuses the first's output
(builder/locks.py), and publishing into ``out/<image>/`` is serialised per image.
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
from builder import cache as stage_cache
from builder import host, progress
from builder.download import BlobStore, cache_root, sha256_file
from builder.imagedef import OUT, project_version
from builder.locks import Lock, held
from builder.plan import Plan, PlannedStage
from builder.sbom import document
from builder.stages import StageContext, module

ROOT = Path(__file__).resolve().parent.parent
KEEP = 3  # cached outputs kept per image and stage (BASALT_CACHE_KEEP overrides)


def keep() -> int:
    value = os.environ.get("BASALT_CACHE_KEEP", "")
    return max(int(value), 1) if value.isdigit() else KEEP


@dataclass(frozen=True)
class StageResult:
    name: str
    id: str
    path: Path
    cached: bool
    seconds: float


def code_digest(name: str) -> str:
    """The stage's own source and the helpers it declares: editing them invalidates its cache."""
    digest = hashlib.sha256()
    for f in module(name).sources:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def stage_id(stage: PlannedStage, version: int, code: str, inputs: dict[str, str]) -> str:
    """A stage's cache id: everything it is built from."""
    blob = json.dumps({"name": stage.name, "module": stage.kind, "version": version, "options": stage.options,
                       "code": code, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def volatile_id(stage: PlannedStage, version: int, key: str) -> str:
    """A volatile stage's id: what it produced (its key), not how it got there."""
    blob = json.dumps({"name": stage.name, "module": stage.kind, "version": version, "key": key}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def needed(plan: Plan, until: str | None) -> list[PlannedStage]:
    """The plan's stages that ``until`` (and what it reads, transitively) needs; all without it."""
    if until is None:
        return list(plan.stages)
    by_name = {s.name: s for s in plan.stages}
    if until not in by_name:
        raise BasaltError(Problem(f"no stage '{until}' in this plan",
                                  hint=f"stages of {plan.image.name}: {', '.join(by_name)}"))
    want: set[str] = set()
    todo = [until]
    while todo:
        name = todo.pop()
        if name not in want:
            want.add(name)
            todo += module(by_name[name].kind).inputs
    return [s for s in plan.stages if s.name in want]


def check_tools(plan: Plan) -> None:
    """Fail in the first second, naming the Debian package, if a host tool is missing."""
    missing: dict[str, str] = {}
    for s in plan.stages:
        tools = module(s.kind).tools
        if s.kind == "rootfs":
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
        self.locks_dir = self.cache / "stage-locks"  # beside the outputs: stages/ holds outputs only
        self.out = out or OUT
        self.store = BlobStore(self.cache)
        self.results: dict[str, StageResult] = {}
        self._held: list[Lock] = []  # shared locks on the stage outputs this build reads

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Keep the cache within its bounds (builder/cache.py; what this build holds stays), then
        let go of the stage outputs this build read (the cache may collect them again)."""
        if self._held:
            pruned = stage_cache.prune(self.cache)
            if pruned.removed:
                progress.log(f"cache: {pruned.removed} least recently used stage output(s) removed, "
                             f"{pruned.freed >> 20} MiB freed ({pruned.size >> 20} MiB kept)")
        for lock in self._held:
            lock.close()
        self._held.clear()

    def run(self, until: str | None = None) -> dict[str, StageResult]:
        check_tools(self.plan)
        for stage in needed(self.plan, until):
            self.results[stage.name] = self._run_stage(stage)
        return self.results

    def _lock(self, sid: str) -> Lock:
        """The lock of stage output ``sid``, kept (shared, once taken) until close()."""
        lock = Lock(self.locks_dir / f"{sid}.lock")
        self._held.append(lock)
        return lock

    def _remember(self, name: str, sid: str) -> None:
        """Keep the last KEEP outputs of each stage per image; remove older ones that no
        image still lists (a rootfs tree is hundreds of MB)."""
        stage_cache.touch(self.stages_dir / sid)
        history_file = self.stages_dir / "last" / f"{self.plan.image.name}.{name}.history.json"
        with held(self.locks_dir / "history.lock"):
            history = json.loads(history_file.read_text()) if history_file.is_file() else []
            history = [sid, *(h for h in history if h != sid)]
            kept_count = keep()
            dropped, history = history[kept_count:], history[:kept_count]
            kept = {h for f in history_file.parent.glob("*.history.json") if f != history_file
                    for h in json.loads(f.read_text())} | set(history)
            for old in dropped:
                if old in kept:
                    continue
                lock = Lock(self.locks_dir / f"{old}.lock")
                try:
                    if lock.try_take():  # nobody reads or builds it now
                        shutil.rmtree(self.stages_dir / old, ignore_errors=True)
                    else:
                        history.append(old)  # in use by another build: collected next time
                finally:
                    lock.close()
            write_text(history_file, json.dumps(history))

    def _last_record(self, name: str) -> Path:
        return self.stages_dir / "last" / f"{self.plan.image.name}.{name}.json"

    def _explain_miss(self, stage: PlannedStage, record: dict[str, Any]) -> str:
        """Why a stage's id is new: which options, inputs or code changed since this image's last build."""
        path = self._last_record(stage.name)
        if not path.is_file():
            return "first build"
        last = json.loads(path.read_text())
        changed = sorted(k for k in set(last["options"]) | set(stage.options)
                         if last["options"].get(k) != stage.options.get(k))
        reasons = []
        if changed:
            reasons.append("options changed: " + ", ".join(changed))
        inputs = sorted(k for k in set(last.get("inputs", {})) | set(record["inputs"])
                        if last.get("inputs", {}).get(k) != record["inputs"].get(k))
        if inputs:
            reasons.append("inputs changed: " + ", ".join(inputs))
        if last.get("code") != record["code"]:
            reasons.append("stage code changed")
        return "; ".join(reasons) or "previous output was removed from the cache"

    def _run_stage(self, stage: PlannedStage) -> StageResult:
        mod = module(stage.kind)
        started = time.monotonic()
        inputs = {name: self.results[name].id for name in mod.inputs}
        code = code_digest(stage.kind)
        record: dict[str, Any] = {"name": stage.name, "options": stage.options, "code": code, "inputs": inputs}
        if not mod.volatile:
            sid = stage_id(stage, mod.version, code, inputs)
            done = self.stages_dir / sid
            lock = self._lock(sid)
            lock.take(exclusive=False, what=stage.name)  # waits while another build writes it
            if (done / "stage.json").is_file():
                progress.log(f"✓ {stage.name}: cached ({sid[:12]})")
                self._remember(stage.name, sid)
                return StageResult(stage.name, sid, done / "tree", True, 0.0)
            why = self._explain_miss(stage, record)
            lock.take(exclusive=True, what=stage.name)
            if (done / "stage.json").is_file():  # built by another build while this one waited
                lock.take(exclusive=False)
                progress.log(f"✓ {stage.name}: built by another build meanwhile ({sid[:12]})")
                self._remember(stage.name, sid)
                return StageResult(stage.name, sid, done / "tree", True, time.monotonic() - started)
        else:
            why = "always checked"
        with progress.step(f"{stage.name} ({why})"):
            tmp = self.stages_dir / f"tmp-{stage.name}-{os.getpid()}-{id(self)}"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "out").mkdir(parents=True)
            ctx = StageContext(out=tmp / "out", inputs={name: self.results[name].path for name in mod.inputs},
                               store=self.store, work=tmp / "work")
            ctx.work.mkdir()
            try:
                if mod.volatile:  # one at a time: they share downloads and the archive's indexes
                    with held(self.locks_dir / f"volatile-{stage.kind}.lock", what=stage.name):
                        mod.run(ctx, stage.options)
                else:
                    mod.run(ctx, stage.options)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            shutil.rmtree(ctx.work, ignore_errors=True)
            if mod.volatile:
                sid = volatile_id(stage, mod.version, sha256_file(ctx.out / "key"))
                lock = self._lock(sid)
                lock.take(exclusive=False)
            done = self.stages_dir / sid
            cached = (done / "stage.json").is_file()
            if not cached:
                lock.take(exclusive=True, what=stage.name)  # a volatile stage: another may be keeping it
                cached = (done / "stage.json").is_file()
            if cached:
                shutil.rmtree(tmp)  # a volatile stage produced what we already had
            else:
                shutil.rmtree(done, ignore_errors=True)  # a tree a killed build left without its stage.json
                (tmp / "out").rename(tmp / "tree")
                (tmp / "stage.json").write_text(json.dumps(record, indent=1))
                os.rename(tmp, done)  # complete, stage.json and all, or absent
            lock.take(exclusive=False)
            write_text(self._last_record(stage.name), json.dumps(record))
        self._remember(stage.name, sid)
        return StageResult(stage.name, sid, done / "tree", cached, time.monotonic() - started)


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` whole (a concurrent reader sees the old text or the new, never a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build(plan: Plan, out: Path | None = None, until: str | None = None) -> Path:
    """Run ``plan`` and publish its artifacts in ``out/<image>/``; return that directory
    (with ``until``: that stage's output directory in the cache, nothing published)."""
    needed(plan, until)  # an unknown stage is an error before anything runs
    with Pipeline(plan, out=out) as pipe, progress.step(f"Building {plan.image.name} {plan.image.version}"):
        results = pipe.run(until)
        if until:
            return results[until].path
        with held(pipe.out / f".{plan.image.name}.lock", what=f"out/{plan.image.name}"):
            return publish(plan, results, pipe.out)


def publish(plan: Plan, results: dict[str, StageResult], out_root: Path) -> Path:
    """Every stage's declared artifacts and manifest part into ``out/<image>/``, atomically:
    the directory appears only once all of it, manifest.json last, is written."""
    img = plan.image
    final = out_root / img.name
    partial = out_root / f".{img.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    outputs = []
    inputs: dict[str, Any] = {"image_definition": {"file": str(img.source), "sha256": sha256_file(img.source)}}

    def record(name: str, stage: str | None) -> None:
        """An artifact in the manifest, and its NAME.sha256 beside it (for sha256sum -c)."""
        digest = sha256_file(partial / name)
        (partial / f"{name}.sha256").write_text(f"{digest}  {name}\n")
        outputs.append({"file": name, "stage": stage, "size": (partial / name).stat().st_size, "sha256": digest})

    for stage in plan.stages:
        mod, tree = module(stage.kind), results[stage.name].path
        for src, pattern in mod.published(stage.options):
            name = pattern.format(name=img.name, version=img.version)
            with progress.step(f"Publishing {name}"):
                copy_with_progress(tree / src, partial / name)
            record(name, stage.name)
        inputs.update(mod.manifest(stage.options, tree))
        if mod.inspect:  # a link into the cache, for inspection (not an artifact)
            (partial / mod.inspect).symlink_to(tree)
    sbom = partial / "sbom.spdx.json"
    sbom.write_text(json.dumps(document(img.name, img.version, img.arch.to_debian(), plan.source_date_epoch, inputs,
                                        f"Tool: basalt-build-{project_version()}"), indent=1) + "\n")
    record(sbom.name, None)
    manifest: dict[str, Any] = {
        "image": img.name, "version": img.version, "arch": str(img.arch),
        "source_date_epoch": plan.source_date_epoch, "inputs": inputs,
        "stages": [{"name": r.name, "id": r.id, "cached": r.cached, "seconds": round(r.seconds, 2)}
                   for r in results.values()],
        "outputs": outputs,
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    old = out_root / f".{img.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def copy_with_progress(src: Path, dest: Path) -> None:
    """Copy with a progress bar; holes (runs of zeros) stay holes, so a disk image stays sparse."""
    from builder.media import disk
    with dest.open("wb") as fout:
        disk.copy_sparse(src, fout, 0, block=1 << 20, label=dest.name)
        fout.truncate(src.stat().st_size)
