"""The disk layer on small real images: the partition table (read back by sfdisk), contents at
their offsets, sparseness, GRUB's BIOS embedding pointers, the environment block, and growing
the state partition's GPT."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from agent import layout
from agent.disk import growstate, partitions
from agent.errors import BasaltError
from builder.media import disk, grub


def table(image: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["partitiontable"]  # type: ignore[no-any-return]


def small_disk(tmp_path: Path, content: bytes = b"SLOT-A" * 1000) -> tuple[disk.Disk, Path]:
    slot = tmp_path / "slot.img"
    slot.write_bytes(content)
    d = disk.Disk("gpt", (disk.Partition(layout.BIOS_LABEL, disk.BIOS_BOOT, 1),
                          disk.Partition(layout.BOOT_LABEL, disk.ESP, 2),
                          disk.Partition(layout.SLOT_LABELS["a"], disk.LINUX_DATA, 3, slot),
                          disk.Partition(layout.SLOT_LABELS["b"], disk.LINUX_DATA, 3),
                          disk.Partition(layout.STATE_LABEL, disk.LINUX_DATA, 2)), seed="test-1")
    return d, slot


def test_a_gpt_disk_is_written_as_described(tmp_path: Path) -> None:
    d, slot = small_disk(tmp_path)
    image = tmp_path / "disk.img"
    placed = disk.write(d, image)
    assert image.stat().st_size == d.min_size_mib() * disk.MIB == 13 * disk.MIB
    t = table(image)
    assert t["label"] == "gpt" and t["id"] == d.uuid("disk").upper()
    assert [(p["name"], p["type"], p["start"], p["size"]) for p in t["partitions"]] == [
        ("BIOS_BOOT", disk.BIOS_BOOT, 2048, 2048), ("BASALT_BOOT", disk.ESP, 4096, 4096),
        ("BASALT_A", disk.LINUX_DATA, 8192, 6144), ("BASALT_B", disk.LINUX_DATA, 14336, 6144),
        ("BASALT_STATE", disk.LINUX_DATA, 20480, 4096)]
    assert all(p["start"] % 2048 == 0 for p in t["partitions"])  # 1 MiB alignment
    verify = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True)
    assert verify.returncode == 0 and "mismatch" not in verify.stdout + verify.stderr, verify
    with image.open("rb") as f:
        f.seek(placed[2].start * disk.SECTOR)
        assert f.read(len(slot.read_bytes())) == slot.read_bytes()
    assert os.stat(image).st_blocks * 512 < 1 * disk.MIB  # sparse: only the tables and the content
    again = tmp_path / "again.img"
    disk.write(d, again)
    assert again.read_bytes() == image.read_bytes()  # reproducible: the same seed, the same bytes
    assert not list(tmp_path.glob("*.partial"))


def test_an_mbr_disk_for_a_card(tmp_path: Path) -> None:
    d = disk.Disk("dos", (disk.Partition(layout.BOOT_LABEL, disk.ESP, 4),
                          disk.Partition(layout.SLOT_LABELS["a"], disk.LINUX_DATA, 3),
                          disk.Partition(layout.STATE_LABEL, disk.LINUX_DATA, 0)), seed="card")
    image = tmp_path / "card.img"
    disk.write(d, image, size_mib=16)
    t = table(image)
    assert t["label"] == "dos" and t["id"] == "0x" + d.uuid("disk")[:8]
    assert [(p["start"], p["size"], p["type"], p.get("bootable", False)) for p in t["partitions"]] == [
        (2048, 8192, "ef", True), (10240, 6144, "83", False), (16384, 14336, "83", False)]


def test_a_table_rewritten_on_a_disk_keeps_the_boot_code(tmp_path: Path) -> None:
    d, _ = small_disk(tmp_path)
    image = tmp_path / "disk.img"
    disk.write(d, image)
    with image.open("r+b") as f:
        f.write(b"\xeb\x63" + b"B" * 438)  # a boot loader's code in the MBR
        guid, entries = partitions.read_gpt(f)
        assert guid == d.uuid("disk").upper() and [e.name for e in entries] == [
            "BIOS_BOOT", "BASALT_BOOT", "BASALT_A", "BASALT_B", "BASALT_STATE"]
        partitions.write_gpt(f, 13 * 2048, guid, entries)
    data = image.read_bytes()
    assert data[:440] == b"\xeb\x63" + b"B" * 438 and data[510:512] == b"\x55\xaa"
    assert [p["name"] for p in table(image)["partitions"]][-1] == "BASALT_STATE"


def test_content_larger_than_its_partition_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    d, _ = small_disk(tmp_path, b"x" * (4 * disk.MIB))
    with pytest.raises(BasaltError) as exc:
        disk.write(d, tmp_path / "disk.img")
    assert exc.value.render() == ("partition BASALT_A: slot.img is 4 MiB, the partition 3 MiB\n"
                                  "hint: make the partition larger in the image definition")
    assert not (tmp_path / "disk.img").exists() and not list(tmp_path.glob("*.partial"))


def test_bios_embedding_points_boot_img_at_core_img(tmp_path: Path) -> None:
    d, _ = small_disk(tmp_path)
    image = tmp_path / "disk.img"
    placed = disk.write(d, image)
    mbr_table = image.read_bytes()[0x1B8:512]
    boot = tmp_path / "boot.img"
    boot.write_bytes(bytes(range(256)) * 2)
    core = tmp_path / "core.img"
    core.write_bytes(b"C" * 1500)  # three sectors once padded
    grub.embed_bios(image, boot, core, placed[0].start, placed[0].sectors)
    data = image.read_bytes()
    assert struct.unpack_from("<Q", data, partitions.BOOT_KERNEL_SECTOR)[0] == 2048
    assert data[partitions.BOOT_DRIVE_CHECK:partitions.BOOT_DRIVE_CHECK + 2] == b"\x90\x90"
    assert data[0x1B8:512] == mbr_table  # the protective MBR's signature and partition table are kept
    core_at = 2048 * 512
    assert struct.unpack_from("<QHH", data, core_at + partitions.BLOCKLIST) == (2049, 2, 0x820)
    assert data[core_at + 512:core_at + 1500] == b"C" * 988
    assert table(image)["partitions"][0]["name"] == "BIOS_BOOT"  # the GPT is untouched
    with pytest.raises(BasaltError, match="does not fit the BIOS boot partition"):
        grub.embed_bios(image, boot, core, placed[0].start, 2)




def test_the_state_partition_grows_to_the_end_of_a_larger_disk(tmp_path: Path) -> None:
    d, _ = small_disk(tmp_path)
    image = tmp_path / "disk.img"
    disk.write(d, image)
    with image.open("r+b") as f:
        f.truncate(64 * disk.MIB)  # flashed onto a bigger disk
    sysfs = tmp_path / "sys"
    fake = {"vda": {"size": 64 * 2048}, "vda/vda5": {"partition": 5, "start": 20480, "size": 4096}}
    for name, values in fake.items():
        (sysfs / name).mkdir(parents=True)
        for key, value in values.items():
            (sysfs / name / key).write_text(f"{value}\n")
    (sysfs / "vda5").symlink_to(sysfs / "vda/vda5")
    plan = growstate.needed("/dev/vda5", str(sysfs))
    last = 64 * 2048 - 34 - (64 * 2048 - 34 + 1) % 2048
    assert plan == ("/dev/vda", 5, last)
    assert growstate.grow_gpt(str(image), 5, last) == (20480, last)
    verify = subprocess.run(["sfdisk", "--verify", str(image)], capture_output=True, text=True)
    assert verify.returncode == 0 and "GPT PMBR size mismatch" not in verify.stderr + verify.stdout, verify
    t = table(image)
    assert t["lastlba"] == 64 * 2048 - 34
    assert t["partitions"][4]["start"] == 20480 and t["partitions"][4]["size"] == last - 20480 + 1
    assert [p["name"] for p in t["partitions"]] == ["BIOS_BOOT", "BASALT_BOOT", "BASALT_A", "BASALT_B", "BASALT_STATE"]
    assert growstate.grow_gpt(str(image), 5, last) == (20480, last)  # a second run changes nothing
    (sysfs / "vda/vda5/size").write_text(f"{last - 20480 + 1}\n")
    assert growstate.needed("/dev/vda5", str(sysfs)) is None
    with pytest.raises(ValueError, match="partition 3 is not the last one"):
        growstate.grow_gpt(str(image), 3, last)


def test_slots_are_described_from_the_boot_partition(tmp_path: Path) -> None:
    from agent.upgrade import slots
    (tmp_path / "basalt/a").mkdir(parents=True)
    (tmp_path / "basalt/a/build.json").write_text(
        '{"version": "0.1.0", "image": "x86_64-raw", "built": "2025-01-01T00:00:00Z"}')
    described = slots.describe(str(tmp_path), booted="a")
    assert described == {"a": {"state": "active", "version": "0.1.0", "image": "x86_64-raw",
                               "built": "2025-01-01T00:00:00Z"}, "b": {"state": "empty"}}
    assert slots.summary(described) == "a active (x86_64-raw 0.1.0, built 2025-01-01T00:00:00Z), b empty"
    assert slots.describe(str(tmp_path), booted="b")["a"]["state"] == "inactive"


def test_the_state_partition_grows_on_an_mbr_card(tmp_path: Path) -> None:
    d = disk.Disk("dos", (disk.Partition(layout.BOOT_LABEL, disk.ESP, 4),
                          disk.Partition(layout.SLOT_LABELS["a"], disk.LINUX_DATA, 3),
                          disk.Partition(layout.SLOT_LABELS["b"], disk.LINUX_DATA, 3),
                          disk.Partition(layout.STATE_LABEL, disk.LINUX_DATA, 2)), seed="card")
    card = tmp_path / "card.img"
    disk.write(d, card)
    with card.open("r+b") as f:
        f.truncate(64 * disk.MIB)  # flashed onto a bigger card
    last = 64 * 2048 - 34 - (64 * 2048 - 34 + 1) % 2048
    assert growstate.grow_table(str(card), 4, last) == (22528, last)
    parts = table(card)["partitions"]
    assert [(p["start"], p["size"]) for p in parts] == [(2048, 8192), (10240, 6144), (16384, 6144),
                                                         (22528, last - 22528 + 1)]
    assert growstate.grow_table(str(card), 4, last) == (22528, last)  # a second run changes nothing
    with pytest.raises(ValueError, match="partition 2 is not the last one"):
        growstate.grow_table(str(card), 2, last)
