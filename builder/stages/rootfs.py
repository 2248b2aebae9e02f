"""rootfs: unpack packages, add the kernel's modules, prune, lay overlays and the agent.

Output: ``root/`` (the inspectable tree that squashfs packs) and
``kernel/vmlinuz`` + ``kernel/release``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from agent import layout
from agent.errors import BasaltError, Problem
from agent.pid1 import modalias
from builder import host, progress
from builder.backends import BACKENDS
from builder.debian import blobs_by_role
from builder.download import sha256_file
from builder.imagedef import OVERLAYS, ROOT
from builder.media import elf, hardware, pytree, readahead, tree
from builder.stages import StageContext
from builder.stages.k3s import locked as k3s_locked

NAME = "rootfs"
VERSION = 1
SOURCES = ("builder/backends.py", "builder/debian.py", "builder/stages/k3s.py", "agent/layout.py",
           "builder/media/suc.py", "builder/media/appsimage.py", "builder/media/oci.py",
           "builder/media/elf.py", "builder/media/readahead.py",
           "builder/media/pytree.py", "builder/media/tree.py")
VOLATILE = False
INPUTS = ("fetch", "k3s")
# The config schema this image's agent validates with, for editors (docs/config.md, "Editors").
PUBLISH = (("kernel/vmlinuz", "vmlinuz"), ("root" + layout.LIB_SCHEMA, "config.schema.json"))
INSPECT = "rootfs"  # out/<image>/rootfs links to this stage's tree (not an artifact)
TOOLS = {"dpkg-deb": "dpkg", "depmod": "kmod"}
SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["backend", "arch", "suite", "sources", "prune", "unused_libraries", "overlays", "agent_digest",
                 "version",
                 "modules_exclude", "modules_keep", "modules_profile", "initramfs_modules",
                 "source_date_epoch", "k3s_charts", "upgrade_key",
                 "upgrade_controller", "controller_images"],
    "properties": {
        "backend": {"enum": sorted(BACKENDS)},
        "arch": {"type": "string"}, "suite": {"type": "string"}, "sources": {"type": "array"},
        "prune": {"type": "array", "items": {"type": "string"}},
        "unused_libraries": {"type": "array", "items": {"type": "string"}},
        "overlays": {"type": "array", "items": {"type": "object", "required": ["name", "digest"]}},
        "agent_digest": {"type": "string"}, "version": {"type": "string"},
        "modules_exclude": {"type": "array", "items": {"type": "string"}},
        "modules_keep": {"type": "array", "items": {"type": "string"}},
        # the hardware class's data (builder/media/hardware.py), so that editing it rebuilds
        "modules_profile": {"type": "object", "required": ["name", "drivers", "devices", "dtbs", "except"]},
        "initramfs_modules": {"type": "array", "items": {"type": "string"}},
        "source_date_epoch": {"type": "integer"},
        "k3s_charts": {"type": "array", "items": {"type": "object", "required": ["name", "path", "digest"]}},
        "upgrade_key": {"type": "string"},  # the minisign public key bundles are checked with
        "upgrade_controller": {"type": "boolean"},  # ship the system-upgrade-controller (upgrade.kubernetes)
        "controller_images": {"type": ["object", "null"], "required": ["path", "digest"]},
    },
}

# Mount points and state directories the read-only root must provide.
SKELETON = ("proc", "sys", "dev", "run", "tmp", "var", "var/tmp", "home", "opt", "mnt", "media", "root",
            "etc/basalt", layout.VAR_LIB.lstrip("/"), layout.LIB.lstrip("/"))


def run(ctx: StageContext, options: dict[str, Any]) -> None:
    root = ctx.out / "root"
    with progress.step(f"Unpacking packages ({options['backend']})"):
        packages = blobs_by_role(ctx.input("fetch"), ctx.store, "rootfs")
        BACKENDS[options["backend"]].unpack(packages, root, options, ctx.work)
    merge_usr(root)
    with progress.step("Installing kernel modules"):
        install_kernel(ctx, root, options)
    with progress.step("Pruning"):
        prune(root, options["prune"])
    for overlay in options["overlays"]:
        with progress.step(f"Overlay {overlay['name']}"):
            apply_overlay(OVERLAYS / overlay["name"], root)
    with progress.step("Installing the agent"):
        install_agent(root, options["version"])
        tree.write(root, layout.LIB_UPGRADE_KEY, options["upgrade_key"])
    lock = k3s_locked(ctx.input("k3s"), ctx.store)
    if lock["enabled"]:
        with progress.step(f"Installing k3s {lock['version']}"):
            install_k3s(root, lock, options["k3s_charts"])
        if options["upgrade_controller"]:
            install_upgrade_controller(root, options["controller_images"])
        with progress.step("Building the apps controller's image"):
            from agent.apps import deploy
            from builder.media import appsimage
            out = tree.write(root, f"{K3S_SHARE}/images/{deploy.IMAGE_FILE}", b"")  # a plain file, not a link
            appsimage.build(root, out, options["version"], options["arch"])  # Debian's names are OCI's
    if options["unused_libraries"]:
        with progress.step("Pruning the libraries nothing loads"):
            elf.prune_unused(root, options["unused_libraries"])
    with progress.step("Checking every program's libraries"):
        check_libraries(root, options["prune"])
    finish(root, options["source_date_epoch"])


def check_libraries(root: Path, patterns: list[str]) -> None:
    """Every program and library left in the root finds the libraries it needs: a prune pattern
    or an excluded package that took one away fails the build, not the node at run time."""
    triplet = next((d.name for d in sorted((root / "usr/lib").glob("*-linux-gnu")) if d.is_dir()), "*-linux-gnu")
    problems = []
    for program, lib in elf.missing(root):
        took = [p for p in patterns if fnmatch.fnmatch(f"usr/lib/{triplet}/{lib}", p)]
        why = f"rootfs.prune '{took[0]}' removes it" if took else "no installed package has it"
        problems.append(Problem(f"/{program} needs {lib}, which the image does not have: {why}",
                                hint="keep the library (take the pattern out of rootfs.prune, or move it to "
                                     "rootfs.unused_libraries, which keeps what something loads; an image that extends "
                                     "another: rootfs.prune: {remove: [PATTERN]}), prune the program too, or add the "
                                     "package that has the library"))
    if problems:
        raise BasaltError(problems)


def manifest(options: dict[str, Any], tree: Path) -> dict[str, Any]:
    return {"k3s_charts": [{"name": c["name"], "sha256": c["digest"]} for c in options["k3s_charts"]],
            "overlays": options["overlays"], "agent_digest": options["agent_digest"]}


def install_kernel(ctx: StageContext, root: Path, options: dict[str, Any]) -> None:
    (row, blob), = blobs_by_role(ctx.input("fetch"), ctx.store, "kernel")
    unpacked = ctx.work / "kernel"
    host.run(["dpkg-deb", "-x", str(blob), str(unpacked)], f"unpacking {row['name']}")
    kernels = sorted((unpacked / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BasaltError(Problem(f"kernel package {row['name']} has no /boot/vmlinuz-*",
                                  hint="kernel.package must be a linux-image package"))
    release = kernels[0].name.removeprefix("vmlinuz-")
    (ctx.out / "kernel").mkdir()
    shutil.copyfile(kernels[0], ctx.out / "kernel" / "vmlinuz")
    (ctx.out / "kernel" / "release").write_text(release + "\n")
    dtbs = unpacked / "usr/lib" / f"linux-image-{release}"
    if dtbs.is_dir():  # device trees (arm64), for a board's boot partition (builder/media/rpi.py)
        shutil.copytree(dtbs, ctx.out / "kernel" / "dtbs")
    src = next(p for p in (unpacked / "lib/modules" / release, unpacked / "usr/lib/modules" / release) if p.is_dir())
    # The image's kernel is this one: a backend that installed its own (diskimage-builder
    # does) must not leave a second, unpruned module tree or kernel behind.
    for stale in (root / "usr/lib/modules", root / "boot"):
        if stale.is_symlink():
            stale.unlink()
        elif stale.is_dir():
            shutil.rmtree(stale)
    (root / "boot").mkdir()
    dest = tree.mkdir(root, f"usr/lib/modules/{release}")
    # The hardware class decides which modules stay, from the whole kernel's tables.
    host.run(["depmod", "-b", str(unpacked), release], "depmod (the whole kernel)")
    full_aliases, full_deps = (src / "modules.alias").read_text(), (src / "modules.dep").read_text()
    profile = options["modules_profile"]
    wanted = hardware.select(profile, full_aliases, full_deps, options["initramfs_modules"],
                             ctx.out / "kernel" / "dtbs")
    kept = dropped = 0
    left_out: set[str] = set()
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_dir():
            continue
        kept_by_class = not rel.endswith((".ko", ".ko.xz", ".ko.zst")) or rel in wanted
        excluded = module_excluded(rel, options["modules_exclude"], options["modules_keep"])
        if excluded or (not kept_by_class and not matches(rel, options["modules_keep"])):
            dropped += path.stat().st_size
            if not excluded:  # the class left it out (not the definition's own exclude list)
                left_out.add(modalias.module_name(rel))
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)
        kept += path.stat().st_size
    progress.log(f"kernel {release}: modules kept {kept / 1048576:.0f} MiB, dropped {dropped / 1048576:.0f} MiB")
    if not (root / "lib").exists():
        (root / "lib").symlink_to("usr/lib")
    config = unpacked / "boot" / f"config-{release}"
    if config.is_file():  # for `basalt doctor` (Debian's kernels have no /proc/config.gz)
        tree.copy(root, f"usr/lib/modules/{release}/config", config)
    host.run(["depmod", "-b", str(root), release], "depmod")
    # Which driver each device wants, indexed once here rather than matched against every
    # pattern at each boot (agent/pid1/modalias.py).
    # The drivers the class left out are named in it, for `basalt doctor` to name a device's.
    absent = "\n".join(line for line in full_aliases.splitlines()
                       if line.startswith("alias ") and line.split()[-1] in left_out)
    aliases, deps = (dest / "modules.alias").read_text(), (dest / "modules.dep").read_text()
    makers = hardware.watchdog_makers(dest, aliases, deps)
    tree.write(root, f"usr/lib/modules/{release}/{modalias.INDEX}", modalias.build(aliases, deps, absent, makers))


def merge_usr(root: Path) -> None:
    """Move /bin, /sbin, /lib* into /usr and leave links (Debian's merged-/usr layout)."""
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = root / name
        if not top.is_dir() or top.is_symlink():
            continue
        usr = root / "usr" / name
        usr.mkdir(parents=True, exist_ok=True)
        for src in sorted(top.rglob("*"), key=lambda p: len(p.parts)):
            dest = usr / src.relative_to(top)
            if src.is_dir() and not src.is_symlink():
                dest.mkdir(exist_ok=True)
            elif not dest.exists() and not dest.is_symlink():
                os.rename(src, dest)
        shutil.rmtree(top)
        top.symlink_to(f"usr/{name}")
    for name in ("bin", "sbin", "lib"):  # the paths programs and the kernel name (/sbin/modprobe)
        if not (root / name).exists() and not (root / name).is_symlink():
            (root / "usr" / name).mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(f"usr/{name}")


def matches(rel: str, patterns: list[str]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") or fnmatch.fnmatch(rel, p) for p in patterns)


def module_excluded(rel: str, exclude: list[str], keep: list[str]) -> bool:
    return matches(rel, exclude) and not matches(rel, keep)


def prune(root: Path, patterns: list[str]) -> None:
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def apply_overlay(overlay: Path, root: Path) -> None:
    spec = yaml.safe_load((overlay / "overlay.yaml").read_text()) or {}
    files = overlay / "rootfs"
    if files.is_dir():  # in the tree's own terms: a link the tree (or this overlay) has is followed in it
        for src in sorted(files.rglob("*")):
            rel = src.relative_to(files).as_posix()
            if src.is_symlink():
                tree.symlink(root, rel, os.readlink(src))
            elif src.is_dir():
                tree.mkdir(root, rel)
            else:
                tree.copy(root, rel, src, 0o755 if src.stat().st_mode & 0o111 else 0o644)
    for name in spec.get("busybox_applets", []):
        if not tree.path(root, f"usr/bin/{name}").exists() and not tree.path(root, f"usr/sbin/{name}").exists():
            tree.symlink(root, f"usr/bin/{name}", "busybox")
    for name in spec.get("busybox_sbin_applets", []):  # where the kernel runs them (e.g. /sbin/modprobe)
        if not tree.path(root, f"usr/sbin/{name}").exists():
            tree.symlink(root, f"usr/sbin/{name}", "../bin/busybox")
    for rel, mode in spec.get("modes", {}).items():
        tree.path(root, rel).chmod(int(str(mode), 8))


def install_agent(root: Path, version: str) -> None:
    agent = f"{layout.LIB}/agent"
    stale = tree.path(root, agent)
    if stale.is_dir():
        shutil.rmtree(stale)
    code = hashlib.sha256()
    for src in sorted(p for p in (ROOT / "agent").rglob("*.py") if "__pycache__" not in p.parts):
        rel = src.relative_to(ROOT / "agent").as_posix()
        tree.copy(root, f"{agent}/{rel}", src)
        code.update(rel.encode() + b"\0" + src.read_bytes() + b"\0")
    tree.write(root, layout.LIB_VERSION, version + "\n")
    tree.copy(root, layout.LIB_SCHEMA, ROOT / "config" / "config.schema.json")
    tree.write(root, layout.LIB_AGENT_DIGEST, code.hexdigest() + "\n")  # a node's validated-config cache's key
    # -S skips site.py (a tenth of a second on a slow board); dist-packages is added by hand.
    # `basalt init` (PID 1) skips the CLI's argparse: it is on the boot's critical path.
    # STARTED: when the interpreter ran its first line (the boot timeline's interpreter step).
    tree.write(root, "usr/sbin/basalt",
               "#!/usr/bin/python3 -S\nimport sys, time\nSTARTED = time.clock_gettime(time.CLOCK_BOOTTIME)\n"
               f"sys.path[:0] = ['{layout.LIB}', '/usr/lib/python3/dist-packages']\n"
               "if sys.argv[1:] == ['init']:\n    from agent.pid1.init import main\n"
               "else:\n    from agent.cli import main\n"
               "sys.exit(main())\n", 0o755)
    os_release = (f'NAME="Basalt"\nID=basalt\nID_LIKE=debian\nVERSION="{version}"\nVERSION_ID="{version}"\n'
                  f'PRETTY_NAME="Basalt {version}"\nHOME_URL="https://basalt.invalid/"\n')
    tree.write(root, "usr/lib/os-release", os_release)
    tree.symlink(root, "etc/os-release", "../usr/lib/os-release")


K3S_LINKS = ("kubectl", "crictl", "ctr")
K3S_SHARE = layout.LIB_K3S.lstrip("/")  # read-only parts the agent links into /var/lib/rancher at boot


def install_upgrade_controller(root: Path, images: dict[str, str] | None) -> None:
    """The system-upgrade-controller's manifest (the k3s server deploys it) and, when given, its
    images into the air-gap set (re-verified as copied)."""
    from builder.media import suc
    tree.write(root, layout.LIB_UPGRADE_CONTROLLER, suc.manifest())
    if images:
        dest = tree.copy(root, f"{layout.LIB_K3S}/images/system-upgrade-controller-{suc.VERSION}.tar",
                         Path(images["path"]))
        if sha256_file(dest) != images["digest"]:
            raise BasaltError(Problem(f"{images['path']} changed while the image was built", hint="build again"))


def install_k3s(root: Path, lock: dict[str, Any], charts: list[dict[str, str]]) -> None:
    """/usr/bin/k3s and its tool links (a tool the image already has, e.g. Debian's ctr, is
    kept); air-gap images and bundled charts under /usr/lib/basalt/k3s, version stamped."""
    with progress.step(f"Copying k3s ({lock['binary']['size'] / 1048576:.0f} MiB)"):
        copy_verified(root, "usr/bin/k3s", Path(lock["binary"]["path"]), lock["binary"]["sha256"], 0o755)
    bin_dir = tree.path(root, "usr/bin")
    for name in K3S_LINKS:  # anything at the name, a dangling link too, is kept
        if not os.path.lexists(bin_dir / name) and not tree.path(root, f"usr/sbin/{name}").exists():
            tree.symlink(root, f"usr/bin/{name}", "k3s")
    tree.mkdir(root, f"{K3S_SHARE}/images")
    tree.mkdir(root, f"{K3S_SHARE}/charts")
    if lock.get("airgap"):
        copy_verified(root, f"{K3S_SHARE}/images/{lock['airgap']['file']}", Path(lock["airgap"]["path"]),
                      lock["airgap"]["sha256"])
    for chart in charts:
        copy_verified(root, f"{K3S_SHARE}/charts/{chart['name']}", Path(chart["path"]), chart["digest"])
    tree.write(root, f"{K3S_SHARE}/version", lock["version"] + "\n")


def copy_verified(root: Path, rel: str, src: Path, sha256: str, mode: int = 0o644) -> None:
    """Copy ``src`` to ``rel`` in ``root`` and check the copy: what lands in the image is what was verified."""
    dest = tree.copy(root, rel, src, mode)
    if sha256_file(dest) != sha256:
        raise BasaltError(Problem(f"{src}: changed since it was verified (sha256 differs)",
                                  hint="remove it from the cache (~/.cache/basalt/blobs) and build again"))


def finish(root: Path, epoch: int) -> None:
    """Remove host leftovers, add mount points, precompile Python, stamp every mtime."""
    for leftover in ("etc/resolv.conf", "etc/hostname", "etc/apt", "etc/dpkg"):
        path = root / leftover
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    dev = root / "dev"
    if dev.is_symlink():
        dev.unlink()
    elif dev.is_dir():
        shutil.rmtree(dev)
    for d in SKELETON:
        tree.mkdir(root, d)
    tree.mkdir(root, "tmp", 0o1777)
    tree.mkdir(root, "var/tmp", 0o1777)
    tree.mkdir(root, "root", 0o700)
    bundle_ca_certificates(root)
    compile_python(root)
    if tree.path(root, layout.AGENT).exists():
        readahead.write(root)
    for path in [root, *root.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def bundle_ca_certificates(root: Path) -> None:
    certs = sorted((root / "usr/share/ca-certificates").rglob("*.crt"))
    if certs:
        tree.write(root, "etc/ssl/certs/ca-certificates.crt", b"".join(c.read_bytes() for c in certs))


def compile_python(root: Path) -> None:
    """Debian compiles .pyc in maintainer scripts, which extract does not run.

    Unchecked-hash pycs are reproducible and never rewritten; they need a host
    interpreter of the target's minor version (same bytecode), else we skip."""
    lib = pytree.stdlib(root)
    if lib is None:
        return
    target = lib.name  # python3.11
    ours = f"python{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = shutil.which(target) or (sys.executable if ours == target else None)
    if interpreter is None:
        progress.warn(f"no host {target}: the image's Python modules are not precompiled (slower agent start)")
        return
    dirs = [str(d) for d in (lib, root / "usr/lib/python3/dist-packages", root / layout.LIB.lstrip("/"))
            if d.is_dir()]
    host.run([interpreter, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
              "-s", str(root), "-p", "/", *dirs], "precompiling the image's Python modules")
