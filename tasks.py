"""invoke tasks: thin wrappers over builder/ (argument parsing only).

Run through ./inv, which installs what a fresh Debian 12 machine lacks first.
"""

from __future__ import annotations

import os
import sys

from invoke import Context, task

from builder.stages import ORDER
from builder.vm.qemu import ACCELS

PY = sys.executable
RUN_NEEDS = "20G"  # free disk a full test run writes at its peak: new stage outputs and its guests' disks


def _builder(c: Context, *args: str, debug: bool = False, pty: bool = False) -> None:
    argv = [PY, "-m", "builder", *(["--debug"] if debug else []), *args]
    c.run(" ".join(_quote(a) for a in argv), pty=pty and sys.stdin.isatty())


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


@task
def setup(c: Context) -> None:
    """Install host packages and the Python environment (what ./inv does before every task)."""
    c.run("./inv --version")


@task(help={"image": "image definition name or path", "config": "site config.yaml to bake in",
            "json": "machine-readable output"})
def plan(c: Context, image: str = "x86_64-iso", config: str = "", json: bool = False) -> None:
    """Print the resolved stage plan without building."""
    _builder(c, "plan", "--image", image, *(["--config", config] if config else []),
             *(["--json"] if json else []))


@task(help={"image": "image definition name or path", "config": "site config.yaml to bake in",
            "until": f"build only this stage and what it reads ({', '.join(ORDER)})",
            "k3s_binary": "air-gapped: the k3s release binary", "k3s_artifacts": "air-gapped: the release files' dir",
            "debug": "show tracebacks"})
def build(c: Context, image: str = "x86_64-iso", config: str = "", until: str = "", k3s_binary: str = "",
          k3s_artifacts: str = "", debug: bool = False) -> None:
    """Build an image into out/<image>/ (cached by stage)."""
    _builder(c, "build", "--image", image, *(["--config", config] if config else []),
             *(["--until", until] if until else []), *(["--k3s-binary", k3s_binary] if k3s_binary else []),
             *(["--k3s-artifacts", k3s_artifacts] if k3s_artifacts else []), debug=debug)


@task
def validate(c: Context, file: str) -> None:
    """Validate a site config.yaml or an image definition (images/*.yaml)."""
    _builder(c, "validate", file)


@task(help={"firmware": "bios, uefi, or direct (the medium's kernel loaded by QEMU: no firmware, no GRUB)",
            "accel": f"{' or '.join(ACCELS)} (tcg: single-threaded, the default)",
            "cpus": "vCPUs (default: the image definition's)", "check": "wait for ready, power off",
            "timeout": "seconds to wait for the ready line with --check",
            "seed": "a NoCloud seed ISO to attach (inv seed)", "state": "a state disk (created if missing)",
            "disk_size": "MiB: a disk image boots as a virtual disk this large (an overlay; default 4096)"})
def boot(c: Context, image: str = "x86_64-iso", firmware: str = "", accel: str = "tcg", cpus: int = 0,
         check: bool = False, timeout: int = 180, seed: str = "", state: str = "", disk_size: int = 0) -> None:
    """Boot a built image in QEMU (serial console on this terminal; --check for CI)."""
    _builder(c, "boot", "--image", image, *(["--firmware", firmware] if firmware else []), "--accel", accel,
             *(["--cpus", str(cpus)] if cpus else []), *(["--disk-size", str(disk_size)] if disk_size else []),
             *(["--check", "--timeout", str(timeout)] if check else []),
             *(["--seed", seed] if seed else []), *(["--state", state] if state else []), pty=not check)


@task(help={"image": "image definition (default x86_64-raw)", "device": "the card or disk, e.g. /dev/sdb",
            "artifact": "a .img to write instead of out/<image>/'s", "force": "write to a non-removable disk too"})
def flash(c: Context, device: str, image: str = "x86_64-raw", artifact: str = "", force: bool = False) -> None:
    """Write a disk image to a card or disk by its block map (only mapped blocks), sync, verify."""
    _builder(c, "flash", "--image", image, "--device", device, *(["--artifact", artifact] if artifact else []),
             *(["--force"] if force else []))


@task(help={"user_data": "config.yaml or #! script", "meta_data": "meta-data file", "output": "the ISO to write"})
def seed(c: Context, user_data: str, meta_data: str = "", output: str = "out/seed.iso") -> None:
    """Make a NoCloud seed ISO (label cidata) to boot with: inv boot --seed out/seed.iso."""
    _builder(c, "seed", user_data, *(["--meta-data", meta_data] if meta_data else []), "--output", output)


@task(help={"image": "the built artifact (.iso, .img) or an image name", "config": "the site config.yaml",
            "o": "output directory (default out/sites/<config name>/)", "name": "site name (default: the file's)"})
def configure(c: Context, image: str, config: str, o: str = "", name: str = "") -> None:
    """Stamp a validated site config onto a built ISO, raw disk or SD-card image (a new artifact)."""
    _builder(c, "configure", "--image", image, "--config", config, *(["--out", o] if o else []),
             *(["--name", name] if name else []))


@task(help={"command": "render, build or diff", "inventory": "sites.yaml (diff: the old one)",
            "new": "diff: the new inventory", "image": "build: the artifact to stamp", "o": "output directory",
            "one_image": "build: one artifact carrying every device's config"})
def fleet(c: Context, command: str, inventory: str, new: str = "", image: str = "", o: str = "",
          one_image: bool = False) -> None:
    """An inventory of sites: render + validate, build (stamp per site, or --one-image), diff."""
    args = {"render": [inventory, *(["--out", o] if o else [])],
            "build": [inventory, "--image", image, *(["--out", o] if o else []),
                      *(["--one-image"] if one_image else [])],
            "diff": [inventory, new]}.get(command)
    if args is None:
        raise SystemExit(f"inv fleet: the command is render, build or diff, not {command!r}")
    _builder(c, "fleet", command, *args)


@task
def app(c: Context) -> None:
    """Apps on a cluster (a kubeconfig) or --dry-run: ./inv app -- run IMAGE --name N --port P, stage, promote,
    weight, scale, ps, top, logs, ca, rm (the node's `basalt app`); ./inv app -- build SOURCE --name N: an
    image from git, delivered and staged (docs/apps.md)."""
    # The arguments as the shell split them (sys.argv after --), passed as argv: never joined into a
    # shell line again, so an argument holding ';' or '$(...)' is only ever an argument.
    import subprocess
    argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    if not argv:
        raise SystemExit("inv app: give the command after --, e.g. ./inv app -- --dry-run run nginx:1.27 "
                         "--name shop --port 80")
    if argv[0] == "build":  # on the build host: from git with buildah, delivered, staged (builder/appbuild.py)
        code = subprocess.run([PY, "-m", "builder", "app-build", *argv[1:]], check=False).returncode
    else:
        code = subprocess.run([PY, "-m", "agent.apps.cli", *argv], check=False).returncode
    if code:
        raise SystemExit(code)


@task(help={"out": "the secret key to write, NAME.key (NAME.pub beside it)", "comment": "a note kept with the key"})
def keygen(c: Context, out: str, comment: str = "basalt upgrade signing key") -> None:
    """Make a minisign key pair for upgrade bundles; name it in an image definition's upgrade.signing_key."""
    _builder(c, "keygen", "--out", out, "--comment", comment)


@task(help={"tier": "unit, rootfs, image, boot, or all (default)", "k": "pytest -k expression",
            "workers": "test processes (default: one per core); 0 runs in this process"})
def test(c: Context, tier: str = "all", k: str = "", workers: int = -1) -> None:
    """Run the test suite (lint first), all tiers by default, on every core; prints each tier's
    wall time and the 25 slowest tests."""
    lint(c)
    if tier != "unit":  # the build and boot tiers: a cache within bounds, and room for a run
        cache(c, prune=True, need=RUN_NEEDS)
    marker = [] if tier == "all" else ["-m", tier]
    n = (os.cpu_count() or 1) if workers < 0 else workers
    # loadgroup: tests marked with one xdist_group share a worker; the rest go one by one, in the
    # order tests/conftest.py sets (longest first).
    parallel = ["-n", str(n), "--dist", "loadgroup", "--no-loadscope-reorder"] if n > 0 else []
    c.run(" ".join([PY, "-m", "pytest", *parallel, "--durations=25", *marker,
                    *(["-k", _quote(k)] if k else [])]), pty=False)


@task(help={"prune": "remove least recently used stage outputs down to --max", "max": "e.g. 20G",
            "need": "fail unless the cache's and the temporary files' disks have this much free"})
def cache(c: Context, prune: bool = False, max: str = "", need: str = "") -> None:
    """The stage cache's size; --prune shrinks it (least recently used first, never what a build holds)."""
    _builder(c, "cache", *(["--prune"] if prune else []), *(["--max", max] if max else []),
             *(["--need", need] if need else []))


@task
def lint(c: Context) -> None:
    """ruff and mypy."""
    c.run(f"{PY} -m ruff check builder agent tests tasks.py")
    c.run(f"{PY} -m mypy builder agent")


@task(help={"image": "image to benchmark", "skip_boot": "only build figures",
            "only": "one section alone: apps, or boot (the floor and Basalt side by side)",
            "rounds": "--only boot: boots of each, alternating (default 3)",
            "against": "--only boot: NAME=ISO, another built ISO booted in turn (e.g. an older commit's)"},
      iterable=["against"])
def bench(c: Context, image: str = "x86_64-iso", skip_boot: bool = False, only: str = "", rounds: int = 3,
          against: list[str] | None = None) -> None:
    """Benchmark builds, sizes, boot time and memory; writes out/bench.json (--only: that section)."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    c.run(f"{PY} -m builder.bench.bench --image {_quote(image)}" + (" --skip-boot" if skip_boot else "")
          + (f" --only {_quote(only)} --rounds {int(rounds)}" if only else "")
          + "".join(f" --against {_quote(a)}" for a in against or []))


@task
def quickstart(c: Context) -> None:
    """Build the default ISO and boot it to the ready line (the README's first command)."""
    build(c)
    boot(c, check=True)
