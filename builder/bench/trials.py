"""Boot trials: how often does a QEMU guest hang, and how long does a boot take, per setting?

``python -m builder.bench.trials --runs 30 [--settings mttcg:2,tcg:2] [--images x86_64-iso,x86_64-containerd]``

Not a test (it takes an hour or more): it is how the default QEMU setting was chosen
(docs/architecture.md, "QEMU"). Settings are interleaved run by run, so the host's load
falls on each alike. Nothing is retried: every hang counts. A trial:

- ``x86_64-iso``: boot the ISO (BIOS) to the ready line, then power off by ACPI;
- ``x86_64-containerd``: boot with an SSH key seed, import a one-binary OCI image, then
  ``ctr run`` two containers (where a multi-threaded TCG guest was seen to lock up).

Each trial is bounded in time; a guest that misses a bound is a hang, its console tail
and registers kept in the report (``out/trials.json``).

``python -m builder.bench.trials --power-cuts 100 [--seed N] [--jobs 2]``: the long soak of the power-cut test
(builder/bench/powercut.py; CI runs 10 cuts): the x86_64-raw disk and a version 2 bundle are built,
then the power is cut that many times during upgrades and trial boots; every cut that leaves the
node stranded or its state partition unclean is counted, with why (``out/powercuts.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from builder.imagedef import OUT, load_image
from builder.media import oci
from builder.vm import qemu, seed

OCI_IMAGE = "docker.io/basalt/busybox:trial"
LOCKUP = re.compile(r"soft lockup|rcu_sched self-detected stall|rcu: INFO: rcu_preempt|hung_task|BUG: ")


def ssh_key(work: Path) -> Path:
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def trial(image: str, iso: Path, accel: str, cpus: int, media: dict[str, Any], bound: float) -> dict[str, Any]:
    img = load_image(image)
    result: dict[str, Any] = {"image": image, "accel": accel, "cpus": cpus}
    started = time.monotonic()
    guest = qemu.Guest(iso, img.arch, "bios", accel, max(img.memory_mb, 768 if media else 0), cpus,
                       extra_cdroms=media.get("cdroms", []))
    with guest:
        try:
            m = guest.wait_for(qemu.READY, bound)
            result["boot_ms"] = int(m.group(2))
            result["ready_s"] = round(time.monotonic() - started, 2)
            if media:
                key = media["key"]
                guest.wait_ssh(key, timeout=bound)
                guest.ssh("cat > /var/tmp/oci.tar", key, stdin=media["tarball"], timeout=bound)
                guest.ssh("for i in $(seq 90); do ctr version >/dev/null 2>&1 && break; sleep 1; done", key,
                          timeout=bound)
                guest.ssh("ctr image import /var/tmp/oci.tar", key, timeout=bound)
                for n in (1, 2):
                    said = guest.ssh(f"ctr run --rm {OCI_IMAGE} c{n} sh -c 'echo RUN-$((20+{n}))'", key,
                                     timeout=bound)
                    if said != f"RUN-{20 + n}":
                        raise RuntimeError(f"ctr run said {said!r}")
                result["containers_s"] = round(time.monotonic() - started - result["ready_s"], 2)
            if not guest.powerdown(bound):
                raise TimeoutError("no power-off after the ACPI button")
            result["ok"] = True
        except (TimeoutError, RuntimeError, subprocess.TimeoutExpired) as exc:
            result["ok"] = False
            result["error"] = str(exc).splitlines()[0][:300]
            result["console_tail"] = guest.tail(15)
            result["lockup"] = bool(LOCKUP.search(guest.console()))
            result["cpu_state"] = guest.cpu_state()
        result["wall_s"] = round(time.monotonic() - started, 2)
    return result


def summary(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["image"], r["accel"], r["cpus"]) for r in results})
    for image, accel, cpus in keys:
        runs = [r for r in results if (r["image"], r["accel"], r["cpus"]) == (image, accel, cpus)]
        ok = [r for r in runs if r["ok"]]
        ready = sorted(r["ready_s"] for r in ok)
        rows.append({"image": image, "accel": accel, "cpus": cpus, "runs": len(runs), "hangs": len(runs) - len(ok),
                     "lockups": sum(1 for r in runs if r.get("lockup")),
                     "ready_s_median": statistics.median(ready) if ready else None,
                     "ready_s_max": ready[-1] if ready else None,
                     "wall_s_median": statistics.median(r["wall_s"] for r in ok) if ok else None})
    return rows


def power_cut_soak(count: int, seed: int, report: Path, jobs: int = 1) -> int:
    """The power-cut trials (module docstring); 0 when no cut stranded the node. ``jobs`` nodes are
    cut at once, each on its own disk (its own qcow2 over the same image, prepared on its own) with
    its own share of the cuts and seed ``seed + job``: a core each, one report."""
    import threading

    import yaml

    from builder import pipeline, plan
    from builder.bench import powercut
    work = Path(tempfile.mkdtemp(prefix="basalt-powercuts-"))
    key = ssh_key(work)
    health_timeout = 30
    (work / "config.yaml").write_text(yaml.safe_dump({
        "hostname": "powercut-node", "ssh_authorized_keys": [key.with_suffix(".pub").read_text().strip()],
        "basalt": {"upgrade": {"health_timeout": health_timeout}}}))
    v1 = load_image("x86_64-raw").version
    disk = next(pipeline.build(plan.plan("x86_64-raw", str(work / "config.yaml")), out=work / "out")
                .glob("x86_64-raw-*.img"))
    (work / "v2.yaml").write_text(yaml.safe_dump({"extends": "x86_64-raw", "version": "2"}))
    bundle = pipeline.build(plan.plan(str(work / "v2.yaml")), until="bundle") / "upgrade.bundle"
    results: list[dict[str, Any]] = []
    windows: dict[int, dict[str, float]] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()
    report.parent.mkdir(parents=True, exist_ok=True)

    def summary() -> dict[str, Any]:
        return {"cuts": len(results), "seed": seed, "jobs": jobs, "windows_s": [windows[j] for j in sorted(windows)],
                "stranded": sum(1 for r in results if r["stranded"]),
                "unclean_state": sum(1 for r in results if r["fsck"]),
                "during_upgrade": sum(1 for r in results if r["when"].startswith("upgrade")),
                "during_trial_boot": sum(1 for r in results if r["when"].startswith("trial"))}

    def job(j: int, share: int) -> None:
        mine = work / f"job{j}"
        mine.mkdir()
        try:
            windows[j] = powercut.prepare(disk, bundle, key, mine / "disk.qcow2", 2048, 300)
            for record in powercut.cuts(mine / "disk.qcow2", key, mine, share, seed + j, windows[j],
                                        health_timeout + 120):
                record["job"] = j
                record["stranded"] = powercut.stranded(record, (v1, "2"))
                record["status"] = {k: record["status"][k] for k in ("slot", "version", "boot")} \
                    if record["status"] else None
                with lock:
                    results.append(record)
                    print(json.dumps(record), flush=True)
                    report.write_text(json.dumps({"summary": summary(), "cuts": results}, indent=1))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread, which exits non-zero
            failures.append(exc)

    threads = [threading.Thread(target=job, args=(j, count // jobs + (j < count % jobs))) for j in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(summary()))
    shutil.rmtree(work, ignore_errors=True)
    if failures:
        raise failures[0]
    return 1 if summary()["stranded"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builder.bench.trials", description=__doc__.splitlines()[0])
    parser.add_argument("--power-cuts", type=int, default=0, metavar="N", help="the power-cut soak: N cuts")
    parser.add_argument("--seed", type=int, default=0, help="the power cuts' random seed (default: the time)")
    parser.add_argument("--jobs", type=int, default=1, help="the power-cut soak: nodes cut at once (a core each)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--settings", default="mttcg:2,tcg:2", help="ACCEL:CPUS,... (accel: tcg, mttcg, kvm)")
    parser.add_argument("--images", default="x86_64-iso,x86_64-containerd")
    parser.add_argument("--bound", type=float, default=300.0, help="seconds each step may take")
    parser.add_argument("--report", default=str(OUT / "trials.json"))
    args = parser.parse_args(argv)
    if args.power_cuts:
        report = OUT / "powercuts.json" if args.report == parser.get_default("report") else Path(args.report)
        return power_cut_soak(args.power_cuts, args.seed or int(time.time()), report, max(1, args.jobs))
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings.split(",")]
    images = args.images.split(",")
    work = Path(tempfile.mkdtemp(prefix="basalt-trials-"))
    media: dict[str, dict[str, Any]] = {image: {} for image in images}
    isos = {}  # copies: a build during the trials replaces out/<image>/
    for image in images:
        isos[image] = work / f"{image}.iso"
        shutil.copyfile(next((OUT / image).glob("*.iso")), isos[image])
    if "x86_64-containerd" in images:
        key = ssh_key(work)
        (work / "user-data").write_text(f"ssh_authorized_keys:\n- {key.with_suffix('.pub').read_text().strip()}\n")
        tarball = work / "oci.tar"
        busybox = work / "busybox"
        shutil.copyfile((OUT / "x86_64-containerd/rootfs/root/usr/bin/busybox").resolve(), busybox)
        oci.single_binary_image(tarball, busybox, OCI_IMAGE, "amd64", links=("sh", "echo"))
        media["x86_64-containerd"] = {"key": key, "tarball": tarball,
                                      "cdroms": [seed.make_seed(work / "seed.iso", work / "user-data", None)]}
    results: list[dict[str, Any]] = []
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    for n in range(args.runs):
        for image in images:
            for accel, cpus in settings:
                r = trial(image, isos[image], accel, cpus, media[image], args.bound)
                r["run"] = n
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k not in ("console_tail", "cpu_state")}),
                      flush=True)
                report.write_text(json.dumps({"summary": summary(results), "runs": results}, indent=1))
    for row in summary(results):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
