"""``inv configure`` on real artifacts (builder/fleet/stamp.py): a site config stamped onto a copy of the
built ISO and raw disk, read back without mounting (pycdlib, mtools); the input unchanged (sha256);
stamping twice replaces; a bad config stamps nothing; no secret in the manifest."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest

from agent import layout
from builder.fleet import render, stamp
from builder.media import disk
from tests.conftest import Build

SECRET = "K10-join-token-7f3a9c"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def raw(build: Build) -> Path:
    return build("x86_64-raw")


def site_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"hostname: {name}\nk3os:\n  server_url: https://10.0.2.100:6443\n  token: {SECRET}\n")
    return path


def iso_site(iso: Path) -> bytes:
    cd = pycdlib.PyCdlib()
    cd.open(str(iso))
    try:
        import io
        buf = io.BytesIO()
        cd.get_file_from_iso_fp(buf, rr_path=layout.MEDIUM_SITE)
        return buf.getvalue()
    finally:
        cd.close()


def disk_site(image: Path) -> bytes:
    offset = disk.boot_partition(image)
    return subprocess.run(["mtype", "-i", f"{image}@@{offset}", "::" + layout.MEDIUM_SITE], capture_output=True,
                          check=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])


def test_an_iso_is_stamped_in_a_copy_and_restamped(built_iso: Path, tmp_path: Path) -> None:
    iso = next(built_iso.glob("*.iso"))
    before = sha(iso)
    assert iso_site(iso) == bytes(layout.SITE_RESERVE)  # unstamped: the reservation is NULs
    proc = run_cli("configure", "--image", str(iso), "--config", str(site_config(tmp_path, "site-a")),
                   "-o", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip())
    assert out == tmp_path / "a" / f"{iso.stem}-site-a.iso"
    data = iso_site(out)
    assert len(data) == layout.SITE_RESERVE
    index = json.loads(data.rstrip(b"\0"))
    assert index["default"]["name"] == "site-a" and "hostname: site-a" in index["default"]["config"]
    assert out.stat().st_size == iso.stat().st_size and sha(iso) == before
    assert out.stat().st_mode & 0o777 == 0o600  # it holds the site's secrets
    # stamping the stamped ISO again replaces the site config
    again = stamp.configure(out, site_config(tmp_path, "site-b"), tmp_path / "b", "site-b")
    assert json.loads(iso_site(again).rstrip(b"\0"))["default"]["name"] == "site-b"
    manifest = (tmp_path / "a" / "manifest.json").read_text()
    assert SECRET not in manifest and SECRET not in proc.stdout + proc.stderr
    listed = json.loads(manifest)
    assert listed["stamped_from"]["sha256"] == before
    assert [(o["file"], o["sha256"]) for o in listed["outputs"]] == [(out.name, sha(out))]
    assert (tmp_path / "a" / f"{out.name}.sha256").read_text() == f"{sha(out)}  {out.name}\n"


def test_a_raw_disk_is_stamped_on_its_boot_partition_with_new_flashables(raw: Path, tmp_path: Path) -> None:
    image = next(p for p in raw.glob("*.img") if p.name != "initrd.img")
    before = {p.name: sha(p) for p in raw.iterdir() if p.is_file()}
    out = stamp.configure(image, site_config(tmp_path, "edge-1"), tmp_path / "edge-1", "edge-1")
    assert json.loads(disk_site(out))["default"]["name"] == "edge-1"
    assert {p.name: sha(p) for p in raw.iterdir() if p.is_file()} == before  # the input artifact untouched
    names = sorted(p.name for p in out.parent.iterdir())
    base = out.name
    assert names == sorted([base, f"{base}.sha256", f"{base}.bmap", f"{base}.bmap.sha256", f"{base}.xz",
                            f"{base}.xz.sha256", "manifest.json"])
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.parent.iterdir()}
    assert modes == {**{n: 0o644 for n in names}, base: 0o600, f"{base}.xz": 0o600}  # what holds the secrets
    import lzma
    with lzma.open(out.with_name(base + ".xz")) as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha(out)
    bmap = out.with_name(base + ".bmap").read_text()
    assert f"<ImageSize> {out.stat().st_size} </ImageSize>" in bmap
    # the rest of the disk is the input's, byte for byte, outside the boot partition
    start = disk.boot_partition(image)
    with image.open("rb") as a, out.open("rb") as b:
        assert a.read(start) == b.read(start)
    restamped = stamp.configure(out, site_config(tmp_path, "edge-2"), tmp_path / "edge-2", "edge-2")
    assert json.loads(disk_site(restamped))["default"]["name"] == "edge-2"
    assert SECRET not in (tmp_path / "edge-1" / "manifest.json").read_text()


def test_a_bad_config_stamps_nothing(built_iso: Path, tmp_path: Path) -> None:
    iso = next(built_iso.glob("*.iso"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("hostname: bad_name!\n")
    proc = run_cli("configure", "--image", str(iso), "--config", str(bad), "-o", str(tmp_path / "bad"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {bad}:1: hostname: ") and "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    proc = run_cli("configure", "--image", str(tmp_path / "bad.yaml"), "--config", str(bad))
    assert proc.returncode == 2 and "neither an ISO 9660 image nor a disk image" in proc.stderr


def test_fleet_build_stamps_each_site_and_one_image_for_all(built_iso: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = Path(__file__).resolve().parents[1] / "data" / "fleet"
    monkeypatch.setenv("FLEET_TEST_TOKEN", SECRET)
    iso = next(built_iso.glob("*.iso"))
    before = sha(iso)
    outs = render.build(data / "sites.yaml", iso, tmp_path / "fleet")
    assert [p.parent.name for p in outs] == ["depot-1", "depot-2"]
    for path in outs:
        index = json.loads(iso_site(path).rstrip(b"\0"))
        assert index["default"]["name"] == path.parent.name and f"token: {SECRET}" in index["default"]["config"]
        assert SECRET not in (path.parent / "manifest.json").read_text()
    [one] = render.build(data / "sites.yaml", iso, tmp_path / "one", one_image=True)
    index = json.loads(iso_site(one).rstrip(b"\0"))
    assert [(d["name"], d["macs"], d["serials"]) for d in index["devices"]] == [
        ("depot-1", ["52:54:00:00:0a:01"], []), ("depot-2", [], ["10000000abcdef01"])]
    assert index["default"]["name"] == "default" and "hostname: unknown-node" in index["default"]["config"]
    assert sha(iso) == before
