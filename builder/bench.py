"""``inv bench``: build times, artifact sizes, boot-to-ready and idle memory.

A benchmark, not a test: it measures and reports (``out/bench.json`` and a
table), and never fails on a slow figure. Targets are printed beside figures.

- cold build: a fresh stage cache; downloaded packages are reused (the network
  is not what is being measured), so it times fetch resolution and every stage.
- warm rebuild: the cache as it is, after a config-only change (a new hostname).
- boot: kernel start to the agent's ready line (``boot_ms``, the guest's own
  clock) and wall time from QEMU start, under TCG, for BIOS and UEFI; idle
  memory is the agent's ``idle`` line 5 s after ready (MemTotal - MemAvailable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from agent.errors import BasaltError
from builder import pipeline, plan
from builder.download import cache_root
from builder.qemu import IDLE, READY, Guest

OUT = pipeline.OUT
TARGETS = {"warm_rebuild_s": 30, "iso_mb": 100, "boot_ms": 8000, "idle_mem_used_mb": 64, "config_modules_ms": 1000,
           "agent_rss_mb": 25}
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "examples" / "edge-site.yaml"


def timed_build(compiled: plan.Plan, out: Path) -> tuple[float, Path]:
    started = time.monotonic()
    result = pipeline.build(compiled, out=out)
    return time.monotonic() - started, result


def cold_build(image: str, work: Path) -> float:
    cache = work / "cache"
    cache.mkdir()
    real = cache_root()
    for shared in ("blobs", "indexes"):
        if (real / shared).is_dir():
            (cache / shared).symlink_to(real / shared)
    old = os.environ.get("BASALT_CACHE")
    os.environ["BASALT_CACHE"] = str(cache)
    try:
        seconds, _ = timed_build(plan.plan(image), work / "out-cold")
    finally:
        if old is None:
            os.environ.pop("BASALT_CACHE", None)
        else:
            os.environ["BASALT_CACHE"] = old
    return seconds


def boot(iso: Path, firmware: str, timeout: float = 300) -> dict[str, Any]:
    with Guest(iso, firmware=firmware) as guest:
        m = guest.wait_for(READY, timeout)
        wall = time.monotonic() - guest.started
        idle = guest.wait_for(IDLE, 60)
        return {"boot_ms": int(m.group(2)), "wall_s": round(wall, 1), "ready_mem_used_kb": int(m.group(3)),
                "idle_mem_used_kb": int(idle.group(1)), "agent_rss_kb": int(idle.group(2))}


def provisioned_boot(image: str, work: Path, timeout: float = 300) -> dict[str, Any]:
    """Boot with the example site config: how long PID 1 spends applying config modules up to
    the end of the boot phase, and the agent's memory once idle."""
    out = pipeline.build(plan.plan(image, str(EXAMPLE)), out=work / "out-example")
    with Guest(next(out.glob("*.iso"))) as guest:
        ready = guest.wait_for(READY.pattern + r" errors=(\d+)", timeout)
        idle = guest.wait_for(IDLE, 60)
        phases = json.loads(guest.run("basalt status --json"))["phases"]
    # Config work: merge + host name + initrd modules, and the boot modules; driver coldplug and
    # starting DHCP (not config) sit between them and are reported apart.
    config_ms = (phases["initrd_modules_done_ms"] - phases["agent_start_ms"]) + \
        (phases["boot_modules_done_ms"] - phases["network_done_ms"])
    return {"errors": int(ready.group(4)), "boot_ms": int(ready.group(2)),
            "pid1_start_to_boot_modules_ms": phases["boot_modules_done_ms"] - phases["agent_start_ms"],
            "config_modules_ms": config_ms,
            "coldplug_ms": phases["coldplug_done_ms"] - phases["initrd_modules_done_ms"],
            "agent_rss_kb": int(idle.group(2)), "idle_mem_used_kb": int(idle.group(1))}


def run(image: str, skip_boot: bool, skip_cold: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"image": image, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "host_cpus": os.cpu_count(), "accel": "tcg"}
    with tempfile.TemporaryDirectory(prefix="basalt-bench-") as tmp:
        work = Path(tmp)
        baseline = pipeline.build(plan.plan(image))  # everything cached for the warm figure
        if not skip_cold:
            results["cold_build_s"] = round(cold_build(image, work), 1)
        config = work / "config.yaml"
        config.write_text(f"hostname: bench-{uuid.uuid4().hex[:6]}\n")
        warm, _ = timed_build(plan.plan(image, str(config)), work / "out-warm")
        results["warm_rebuild_s"] = round(warm, 1)
    iso = next(baseline.glob("*.iso"))
    results["iso_mb"] = round(iso.stat().st_size / 1048576, 1)
    results["squashfs_mb"] = round((baseline / "rootfs.squashfs").stat().st_size / 1048576, 1)
    results["initrd_mb"] = round((baseline / "initrd.img").stat().st_size / 1048576, 1)
    results["kernel_mb"] = round((baseline / "vmlinuz").stat().st_size / 1048576, 1)
    if not skip_boot:
        for firmware in ("bios", "uefi"):
            results[f"boot_{firmware}"] = boot(iso, firmware)
        with tempfile.TemporaryDirectory(prefix="basalt-bench-") as tmp:
            results["example_config"] = provisioned_boot(image, Path(tmp))
    return results


def table(r: dict[str, Any]) -> str:
    rows = [("cold build (stage cache empty, downloads cached)", f"{r.get('cold_build_s', '-')} s", ""),
            ("warm rebuild after a config-only change", f"{r['warm_rebuild_s']} s", "≤ 30 s"),
            ("ISO size (no k3s)", f"{r['iso_mb']} MiB", "≤ 100 MB"),
            ("squashfs root", f"{r['squashfs_mb']} MiB", ""),
            ("initramfs", f"{r['initrd_mb']} MiB", ""), ("kernel", f"{r['kernel_mb']} MiB", "")]
    for fw in ("bios", "uefi"):
        b = r.get(f"boot_{fw}")
        if b:
            rows.append((f"{fw.upper()}: kernel start → ready (boot_ms, TCG)", f"{b['boot_ms']} ms", "≤ 8000 ms"))
            rows.append((f"{fw.upper()}: QEMU start → ready (wall)", f"{b['wall_s']} s", ""))
            rows.append((f"{fw.upper()}: idle memory used", f"{b['idle_mem_used_kb'] / 1024:.1f} MiB", "≤ 64 MB"))
            rows.append((f"{fw.upper()}: agent (PID 1) RSS", f"{b['agent_rss_kb'] / 1024:.1f} MiB", ""))
    ex = r.get("example_config")
    if ex:
        rows += [("example config: PID 1 start → config modules applied (excl. coldplug)",
                  f"{ex['config_modules_ms']} ms", "≤ 1000 ms"),
                 ("example config: PID 1 start → boot phase done (incl. coldplug)",
                  f"{ex['pid1_start_to_boot_modules_ms']} ms", ""),
                 ("example config: kernel start → ready", f"{ex['boot_ms']} ms", ""),
                 ("example config: agent (PID 1) RSS once idle", f"{ex['agent_rss_kb'] / 1024:.1f} MiB", "≤ 25 MB"),
                 ("example config: idle memory used", f"{ex['idle_mem_used_kb'] / 1024:.1f} MiB", "")]
    width = max(len(a) for a, _, _ in rows)
    return "\n".join(f"{a:<{width}}  {b:>12}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inv bench")
    parser.add_argument("--image", default="x86_64-iso")
    parser.add_argument("--skip-boot", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args(argv)
    try:
        results = run(args.image, args.skip_boot, args.skip_cold)
    except BasaltError as exc:
        print(f"error: {exc.render()}", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    (OUT / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {OUT / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
