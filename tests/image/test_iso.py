"""The default ISO, built for real and inspected: files, El Torito entries, EFI image, manifest."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import uuid
from pathlib import Path

import pycdlib

from agent import layout
from agent.disk import installplan
from builder import pipeline, plan
from builder.download import BlobStore
from builder.stages import StageContext
from builder.stages import iso as iso_stage


def open_iso(path: Path) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    return iso


def read(iso: pycdlib.PyCdlib, rr_path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=rr_path)
    return out.getvalue()


def test_iso_layout(built_iso: Path) -> None:
    iso_path = next(built_iso.glob("*.iso"))
    iso = open_iso(iso_path)
    try:
        listing = {d: sorted(files) for d, _, files in iso.walk(rr_path="/")}
        assert listing["/basalt"][:2] == sorted(listing["/basalt"])[:2]
        assert {"vmlinuz", "initrd.img", "rootfs.squashfs", "version"} <= set(listing["/basalt"])
        assert [f for f in listing["/basalt"] if f.startswith("id-")]  # the boot loaders' marker
        assert {"grub.cfg", "bios.img", "efi.img", "boot.cat"} <= set(listing["/boot/grub"])
        assert iso.pvd.volume_identifier.rstrip() == b"BASALT"
        cfg = read(iso, "/boot/grub/grub.cfg").decode()
        assert "menuentry \"Basalt" in cfg and "(rescue shell)" in cfg and "basalt.label=BASALT" in cfg
        squashfs = read(iso, "/basalt/rootfs.squashfs")
        assert squashfs[:4] == b"hsqs"
        assert hashlib.sha256(squashfs).hexdigest() == hashlib.sha256(
            (built_iso / "rootfs.squashfs").read_bytes()).hexdigest()
        wanted = installplan.parse(read(iso, layout.INSTALL_PLAN), layout.INSTALL_PLAN)  # as the installer reads it
        assert [p.content for p in wanted.partitions] == ["bios", "boot", "slot", None, "state"]
        for where in (*wanted.images.values(), *(f.medium for f in wanted.files if f.medium), *(wanted.bios or ())):
            assert read(iso, where), where  # everything the plan names is on the ISO
    finally:
        iso.close()


def test_el_torito_entries(built_iso: Path) -> None:
    iso = open_iso(next(built_iso.glob("*.iso")))
    try:
        catalog = iso.eltorito_boot_catalog
        assert catalog.validation_entry.platform_id == 0  # x86 BIOS first
        assert catalog.initial_entry.boot_media_type == 0  # no emulation
        assert catalog.initial_entry.sector_count == 4
        sections = catalog.sections
        assert len(sections) == 1 and sections[0].platform_id == 0xEF  # UEFI
        bios_extent = iso.get_record(rr_path="/boot/grub/bios.img").extent_location()
        assert catalog.initial_entry.load_rba == bios_extent
        efi_extent = iso.get_record(rr_path="/boot/grub/efi.img").extent_location()
        assert sections[0].section_entries[0].load_rba == efi_extent
        bios = read(iso, "/boot/grub/bios.img")
        pvd, lba, length, _ = struct.unpack_from("<IIII", bios, 8)  # boot info table
        assert (pvd, lba, length) == (16, bios_extent, len(bios))
        assert struct.unpack_from("<Q", bios, 2548)[0] == bios_extent * 4 + 5  # GRUB2 boot info
    finally:
        iso.close()


def test_efi_system_image_holds_the_loader(built_iso: Path, tmp_path: Path) -> None:
    iso = open_iso(next(built_iso.glob("*.iso")))
    try:
        (tmp_path / "efi.img").write_bytes(read(iso, "/boot/grub/efi.img"))
    finally:
        iso.close()
    listing = subprocess.run(["mdir", "-b", "-i", str(tmp_path / "efi.img"), "::/EFI/BOOT"], capture_output=True,
                             text=True, env={"MTOOLS_SKIP_CHECK": "1"}, check=True).stdout
    assert "::/EFI/BOOT/BOOTX64.EFI" in listing
    subprocess.run(["mcopy", "-i", str(tmp_path / "efi.img"), "::/EFI/BOOT/BOOTX64.EFI", str(tmp_path / "x.efi")],
                   check=True, env={"MTOOLS_SKIP_CHECK": "1"})
    assert (tmp_path / "x.efi").read_bytes()[:2] == b"MZ"  # a PE/COFF executable


def test_manifest_describes_every_artifact(built_iso: Path) -> None:
    manifest = json.loads((built_iso / "manifest.json").read_text())
    names = {o["file"] for o in manifest["outputs"]}
    assert names == {f.name for f in built_iso.iterdir() if f.suffix != ".sha256"} - {"manifest.json", "rootfs"}
    assert {f.name for f in built_iso.glob("*.sha256")} == {n + ".sha256" for n in names}
    for out in manifest["outputs"]:
        data = (built_iso / out["file"]).read_bytes()
        assert out["size"] == len(data) and out["sha256"] == hashlib.sha256(data).hexdigest()
    kinds = {p["role"] for p in manifest["inputs"]["packages"]}
    assert kinds == {"rootfs", "kernel", "boot"}
    assert all(len(p["sha256"]) == 64 for p in manifest["inputs"]["packages"])
    assert [s["name"] for s in manifest["stages"]] == ["fetch", "k3s", "rootfs", "squashfs", "initramfs", "bundle",
                                                       "iso"]
    assert manifest["inputs"]["k3s"] == {"enabled": False} and manifest["inputs"]["k3s_charts"] == []


def test_iso_size_without_k3s_is_under_100_mb(built_iso: Path) -> None:
    assert next(built_iso.glob("*.iso")).stat().st_size <= 100 * 1024 * 1024


def test_config_only_rebuild_reruns_only_the_iso_stage(built_iso: Path, tmp_path: Path) -> None:
    hostname = f"edge-{uuid.uuid4().hex[:8]}"  # a config no earlier build has seen
    config = tmp_path / "config.yaml"
    config.write_text(f"hostname: {hostname}\n")
    out = pipeline.build(plan.plan("x86_64-iso", str(config)), out=tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    ran = [s["name"] for s in manifest["stages"] if not s["cached"]]
    assert ran in (["fetch", "iso"], ["iso"])  # fetch re-checks the archive; it keeps its id when unchanged
    assert {s["name"]: s["id"] for s in manifest["stages"]}["rootfs"] == \
        {s["name"]: s["id"] for s in json.loads((built_iso / "manifest.json").read_text())["stages"]}["rootfs"]
    iso = open_iso(next(out.glob("*.iso")))
    try:
        assert read(iso, "/basalt/config.yaml") == f"hostname: {hostname}\n".encode()
        for path in ("/basalt/config.yaml", "/basalt/config.bin", "/basalt/site.json"):  # may hold secrets
            record = iso.get_record(rr_path=path)
            assert record.rock_ridge is not None and record.rock_ridge.get_file_mode() == 0o100400, path
    finally:
        iso.close()


def test_iso_stage_is_reproducible(built_iso: Path, tmp_path: Path) -> None:
    compiled = plan.plan("x86_64-iso")
    results = pipeline.Pipeline(compiled).run()
    inputs = {name: r.path for name, r in results.items()}
    digests = []
    for n in range(2):
        out = tmp_path / f"o{n}"
        work = tmp_path / f"w{n}"
        out.mkdir()
        work.mkdir()
        ctx = StageContext(out=out, inputs=inputs, store=BlobStore(), work=work)
        iso_stage.run(ctx, compiled.stages[-1].options)
        digests.append(hashlib.sha256((out / "basalt.iso").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_failed_build_leaves_no_finished_looking_output(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from agent.errors import BasaltError

    def explode(ctx, options):  # type: ignore[no-untyped-def]
        (ctx.out / "basalt.iso").write_bytes(b"half")
        raise BasaltError.simple("simulated failure in the iso stage")
    monkeypatch.setattr(iso_stage, "run", explode)
    config = tmp_path / "c.yaml"
    config.write_text("hostname: never-built\n")
    try:
        pipeline.build(plan.plan("x86_64-iso", str(config)), out=tmp_path / "out")
    except BasaltError:
        pass
    assert not (tmp_path / "out" / "x86_64-iso").exists()


def extent_of(path: Path, rr_path: str) -> tuple[int, int]:
    """(byte offset, length) of a file's data inside the ISO."""
    iso = open_iso(path)
    try:
        record = iso.get_record(rr_path=rr_path)
        return record.extent_location() * 2048, record.get_data_length()
    finally:
        iso.close()


def flip(src: Path, dest: Path, rr_path: str, at: float = 0.5) -> Path:
    offset, length = extent_of(src, rr_path)
    data = bytearray(src.read_bytes())
    data[offset + int(length * at)] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def test_an_iso_from_a_url_is_verified_before_anything_is_written(built_iso: Path, tmp_path: Path,
                                                                  http_server) -> None:  # type: ignore[no-untyped-def]
    """install.iso_url: downloaded as the node does it, then the plan's signature (the image's
    upgrade key) and every file it takes from the medium are checked before a disk is touched.
    The node reads the ISO through a loop mount; this host's kernel has no iso9660, so here the
    same files are read with pycdlib (the check is installplan.verify_medium either way)."""
    from agent.disk import install
    from agent.errors import BasaltError
    from builder import signing
    iso = next(built_iso.glob("*.iso"))
    key = str(signing.resolve(None).public)
    www = http_server.root
    (www / "good.iso").write_bytes(iso.read_bytes())
    flip(iso, www / "root.iso", layout.MEDIUM_ROOT)
    flip(iso, www / "plan.iso", layout.INSTALL_PLAN, at=0.3)
    cases = [("good.iso", key, None),
             ("root.iso", key, f"refused: bad hash: {layout.MEDIUM_ROOT} has sha256 "),
             ("plan.iso", key, "refused: bad signature"),
             ("good.iso", str(signing.generate(tmp_path / "other.key", "another").public),
              "refused: it is signed with another key")]
    for n, (name, public, refusal) in enumerate(cases):
        url = f"{http_server.url}/{name}"
        downloaded = Path(install.download_iso(url, str(tmp_path / f"work-{n}")))
        assert downloaded.read_bytes() == (www / name).read_bytes()
        medium = open_iso(downloaded)

        def read(path: str, medium: pycdlib.PyCdlib = medium) -> io.BytesIO:
            out = io.BytesIO()
            try:
                medium.get_file_from_iso_fp(out, rr_path=path)
            except pycdlib.pycdlibexception.PyCdlibException as exc:  # not found, as open() would say it
                raise FileNotFoundError(path) from exc
            out.seek(0)
            return out
        try:
            if refusal is None:
                verified = installplan.verify_medium(read, layout.INSTALL_PLAN, public, str(tmp_path / "v"), url)
                assert verified.digests and set(verified.digests) == set(verified.on_medium)
                assert layout.MEDIUM_ROOT in verified.digests
                continue
            try:
                installplan.verify_medium(read, layout.INSTALL_PLAN, public, str(tmp_path / "v"), url)
            except BasaltError as exc:
                assert exc.render().startswith(f"{url}: {refusal}"), exc.render()
            else:
                raise AssertionError(f"{name} was not refused")
        finally:
            medium.close()
