"""The build cache on real builds: a stage is reused only when everything it is built from is
unchanged (the regression: an image that extends the default with one more package got the
default's squashfs, because the stages after k3s no longer depended on what fetch resolved)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from builder import pipeline, plan


def stages(out: Path) -> dict[str, dict[str, object]]:
    return {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}


def squashfs_files(out: Path) -> set[str]:
    listing = subprocess.run(["unsquashfs", "-lc", "-d", "", str(out / "rootfs.squashfs")],
                             capture_output=True, text=True, check=True).stdout
    return {line.strip() for line in listing.splitlines() if line.strip()}


def test_an_added_package_is_in_the_squashfs(built_iso: Path, tmp_path: Path) -> None:
    definition = tmp_path / "with-less.yaml"
    base = plan.load_image("x86_64-iso")
    packages = "".join(f"  - {p}\n" for p in (*base.packages, "less"))
    definition.write_text(f"extends: x86_64-iso\nname: with-less\npackages:\n{packages}")
    out = pipeline.build(plan.plan(str(definition)), out=tmp_path / "out")
    mine, default = stages(out), stages(built_iso)
    assert [n for n in mine if mine[n]["id"] != default[n]["id"]] == ["fetch", "rootfs", "squashfs", "initramfs",
                                                                     "bundle", "iso"]
    # /usr/bin/less is a busybox applet link in both; lesskey comes only with Debian's less.
    assert "/usr/bin/lesskey" in squashfs_files(out)
    assert "/usr/bin/lesskey" not in squashfs_files(built_iso)
    assert (out / "rootfs.squashfs").read_bytes() != (built_iso / "rootfs.squashfs").read_bytes()
    lock = json.loads((out / "packages.lock.json").read_text())
    assert "less" in {p["name"] for p in lock["packages"]}


def test_an_unchanged_rebuild_runs_no_stage_but_the_volatile_ones(built_iso: Path, tmp_path: Path) -> None:
    out = pipeline.build(plan.plan("x86_64-iso"), out=tmp_path / "out")
    again, before = stages(out), stages(built_iso)
    assert list(again) == ["fetch", "k3s", "rootfs", "squashfs", "initramfs", "bundle", "iso"]
    assert all(s["cached"] for s in again.values())  # fetch and k3s ran, and produced what they had
    assert {n: s["id"] for n, s in again.items()} == {n: s["id"] for n, s in before.items()}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {o["file"]: o["stage"] for o in manifest["outputs"]} == {
        "packages.lock.json": "fetch", "vmlinuz": "rootfs", "config.schema.json": "rootfs",
        "rootfs.squashfs": "squashfs", "initrd.img": "initramfs", "sbom.spdx.json": None,
        f"x86_64-iso-{plan.load_image('x86_64-iso').version}.bundle": "bundle",
        f"x86_64-iso-{plan.load_image('x86_64-iso').version}.oci.tar": "bundle",
        f"x86_64-iso-{plan.load_image('x86_64-iso').version}.iso": "iso"}


def test_two_builds_at_once_build_each_stage_once(tmp_path: Path) -> None:
    """Two real builds of one new image started together, as two processes over one cache (two
    ``inv build``s, or the test suite's two workers): the stage lock lets one build the rootfs and
    squashfs while the other waits and then reuses them; both finish with the same outputs."""
    import os
    import sys
    import uuid
    definition = tmp_path / "locked.yaml"
    definition.write_text(f"extends: x86_64-iso\nversion: lock-{uuid.uuid4().hex[:8]}\n")  # stages no build has
    env = {**os.environ, "BASALT_JSON": "1"}
    argv = [sys.executable, "-m", "builder", "build", "--image", str(definition), "--until", "squashfs"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    events = [[json.loads(line) for line in err.splitlines() if line.startswith("{")] for _, err in results]
    built = [{e["title"].split(" (")[0] for e in ev if e["event"] == "step-start" and e["depth"] == 1} for ev in events]
    for stage in ("rootfs", "squashfs"):  # built by exactly one of the two
        assert sorted(stage in b for b in built) == [False, True], (stage, built)
    reused = [" ".join(e.get("message", "") for e in ev) for ev in events]
    assert all("✓ rootfs: " in r for r, b in zip(reused, built, strict=True) if "rootfs" not in b), reused
    assert results[0][0] == results[1][0]  # the same squashfs stage output
    squashfs = Path(results[0][0].strip()) / "rootfs.squashfs"
    assert squashfs.read_bytes()[:4] == b"hsqs"
    for proc in procs:  # nothing half-built left in the cache
        assert not list(squashfs.parent.parent.parent.glob(f"tmp-*-{proc.pid}-*"))
