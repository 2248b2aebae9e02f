"""kernel.deb: an image's kernel from a local .deb instead of Debian's archive (what a Raspberry
Pi 5 needs): checked, stored by hash, locked like any package; a bad file is a clear error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder.download import BlobStore, ChecksumMismatch, sha256_file
from builder.imagedef import load_image
from builder.stages import fetch


def make_deb(tmp: Path, name: str, arch: str) -> Path:
    root = tmp / f"{name}-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "boot").mkdir()
    (root / "boot" / "vmlinuz-6.6.0-test").write_bytes(b"\0" * 64)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 6.6.0-1\nArchitecture: {arch}\n"
                                             "Maintainer: Basalt tests <tests@invalid>\nDescription: a test kernel\n")
    deb = tmp / f"{name}_{arch}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_a_local_kernel_package_is_stored_and_locked(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "linux-image-6.6.0-test-arm64", "arm64")
    store = BlobStore(tmp_path / "cache")
    digest = sha256_file(deb)
    row = fetch.local_kernel(deb, digest, "arm64", store)
    assert row == {"name": "linux-image-6.6.0-test-arm64", "version": "6.6.0-1", "arch": "arm64",
                   "sha256": digest, "size": deb.stat().st_size, "url": deb.resolve().as_uri(), "role": "kernel"}
    assert store.has(digest) and deb.is_file()  # copied into the store, the user's file left alone


def test_a_kernel_for_another_arch_or_not_a_package_is_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "cache")
    amd64 = make_deb(tmp_path, "linux-image-6.6.0-test-amd64", "amd64")
    with pytest.raises(BasaltError, match="is for amd64, the image for arm64"):
        fetch.local_kernel(amd64, sha256_file(amd64), "arm64", store)
    junk = tmp_path / "junk.deb"
    junk.write_text("not a package")
    with pytest.raises(BasaltError, match="is not a Debian package"):
        fetch.local_kernel(junk, sha256_file(junk), "arm64", store)
    deb = make_deb(tmp_path, "linux-image-6.6.0-test-arm64", "arm64")
    with pytest.raises(ChecksumMismatch):  # the file changed since the plan hashed it
        fetch.local_kernel(deb, "0" * 64, "arm64", store)


def test_the_image_definition_names_the_file_relative_to_itself(tmp_path: Path) -> None:
    deb = make_deb(tmp_path, "linux-image-6.6.0-test-arm64", "arm64")
    definition = tmp_path / "pi5.yaml"
    definition.write_text(f"extends: rpi\nname: pi5\nkernel:\n  package: linux-image-arm64\n  deb: {deb.name}\n")
    assert load_image(str(definition)).kernel_deb == deb.resolve()
    definition.write_text("extends: rpi\nname: pi5\nkernel:\n  package: linux-image-arm64\n  deb: missing.deb\n")
    with pytest.raises(BasaltError) as err:
        load_image(str(definition))
    assert f"{definition}:5: kernel.deb: no such file: missing.deb" in str(err.value)
