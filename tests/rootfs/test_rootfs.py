"""Real root filesystems from each backend, checked by content."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder import host, pipeline, plan
from builder.imagedef import ROOT

EPOCH = plan.DEFAULT_EPOCH


def check_basalt_tree(root: Path) -> None:
    """What every Basalt root must contain, whichever backend unpacked it."""
    assert (root / "usr/sbin/basalt").stat().st_mode & 0o111
    assert (root / "usr/lib/basalt/agent/pid1/init.py").is_file()
    assert (root / "usr/lib/basalt/version").read_text().strip() == plan.load_image("x86_64-iso").version
    assert os.path.realpath(root / "usr/bin/python3").startswith(str(root))
    assert (root / "usr/lib/python3/dist-packages/yaml/__init__.py").is_file()
    release = next((root / "usr/lib/modules").iterdir())
    assert (release / "modules.dep").stat().st_size > 0
    assert (release / "kernel/fs/squashfs/squashfs.ko").is_file()
    assert not (release / "kernel/drivers/gpu").exists()  # kernel.modules.exclude applied
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
    for d in ("proc", "sys", "dev", "run", "tmp", "var"):
        assert (root / d).is_dir()
    assert not (root / "usr/share/doc").exists()


def test_mmdebstrap_backend_builds_exact_locked_set() -> None:
    compiled = plan.plan("x86_64-iso")
    out = pipeline.build(compiled, until="rootfs")
    root = out / "root"
    check_basalt_tree(root)
    assert (root / "bin").is_symlink() and os.readlink(root / "bin") == "usr/bin"  # merged /usr
    assert (root / "usr/bin/sh").is_symlink() and os.readlink(root / "usr/bin/sh") == "busybox"
    # The kernel's on-demand module loader (/proc/sys/kernel/modprobe, /sbin -> usr/sbin) exists.
    assert (root / "sbin/modprobe").resolve() == (root / "usr/bin/busybox").resolve()
    assert not (root / "usr/bin/perl").exists()  # excluded: no maintainer scripts, no perl
    assert not (root / "var/lib/dpkg/status").exists() or "debconf" not in (root / "var/lib/dpkg/status").read_text()
    assert list((root / "dev").iterdir()) == []  # no device nodes from the host
    # Reproducible timestamps everywhere.
    stamps = {p.lstat().st_mtime for p in [root, *list(root.rglob("*"))[:2000]]}
    assert stamps == {EPOCH}
    # Precompiled, hash-checked bytecode (no mtime dependence).
    assert list((root / "usr/lib/python3.11/__pycache__").glob("os.cpython-311.pyc"))
    assert (out.parent / "kernel/vmlinuz").stat().st_size > 1_000_000 if (out.parent / "kernel").exists() \
        else (out / "kernel/vmlinuz").stat().st_size > 1_000_000


@pytest.mark.skipif(host.which("disk-image-create") is None,
                    reason="diskimage-builder is not installed (the optional [dib] extra); ./inv installs it")
def test_dib_backend_builds_a_basalt_root(tmp_path: Path) -> None:
    text = (ROOT / "images/x86_64-iso.yaml").read_text().replace("backend: mmdebstrap", "backend: dib")
    text = text.replace("name: x86_64-iso", "name: x86_64-dib")
    path = tmp_path / "x86_64-dib.yaml"
    path.write_text(text)
    out = pipeline.build(plan.plan(str(path)), until="rootfs")
    root = out / "root"
    check_basalt_tree(root)
    assert (root / "etc/debian_version").read_text().startswith("12")
    assert (root / "usr/bin/busybox").is_file()
    assert (out / "kernel/vmlinuz").stat().st_size > 1_000_000
