"""The install plan, one typed record on both sides of the ISO: what the builder writes
(builder/stages/iso.py) is what the installer reads, and a damaged or foreign plan is a clear
error before a disk is touched (agent/disk/installplan.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.disk import installplan
from agent.disk.partitions import Partition
from agent.errors import BasaltError

LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
PLAN = installplan.Plan(
    image="basalt-x86", version="1.2.3", arch="amd64", table="gpt",
    partitions=(Partition("BIOS_BOOT", "21686148-6449-6E6F-744E-656564454649", 1, "bios"),
                Partition("BASALT_BOOT", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", 128, "boot"),
                Partition("BASALT_A", LINUX, 1024, "slot"), Partition("BASALT_B", LINUX, 1024, None),
                Partition("BASALT_STATE", LINUX, 0, "state")),
    images={"boot": "/basalt/install/boot-partition.gz", "slot": "/basalt/root.squashfs",
            "state": "/basalt/install/state-partition.gz"},
    files=(installplan.BootFile("/EFI/BOOT/BOOTX64.EFI", medium="/basalt/install/grub.efi"),
           installplan.BootFile("/grub/grub.cfg", data=b"set timeout=0\n\0binary")),
    bios=("/basalt/install/boot.img", "/basalt/install/core.img"))


def test_what_is_written_is_what_is_read() -> None:
    raw = PLAN.to_json()
    assert installplan.parse(raw, "plan.json") == PLAN
    doc = json.loads(raw)
    assert (doc["format"], doc["min_mib"]) == (1, 2 + 1 + 128 + 1024 + 1024)
    assert PLAN.disk("seed").partitions == PLAN.partitions


def doc(**change: Any) -> bytes:
    d = json.loads(PLAN.to_json())
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    return json.dumps(d).encode()


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "plan.json: not JSON"),
    (b"[1]", "plan.json: not a JSON object"),
    (b"{" * 100_000, "plan.json: not JSON"),
    (b"[" * 100_000, "plan.json: not JSON"),  # nested past Python's recursion limit
    (b" " * (installplan.MAX_BYTES + 1), "plan.json: larger than 1024 KiB: not an install plan"),
    (doc(format=2), "plan.json: format 2 is not one this agent reads (it reads 1)"),
    (doc(format=None), "plan.json: format None is not one this agent reads (it reads 1)"),
    (doc(version=None), "plan.json: no 'version'"),
    (doc(partitions=[{"name": "A"}]), "plan.json: no 'type'"),
    (doc(partitions="BASALT_A"), "plan.json: a field has the wrong type"),
    (doc(partitions=[{"name": "A", "type": LINUX, "size_mib": "big"}]), "plan.json: a field has the wrong type"),
    (doc(table="apm"), "plan.json: table 'apm' is neither gpt nor dos"),
    (doc(partitions=[{"name": "A", "type": LINUX, "size_mib": 1, "content": "swap"}]),
     "plan.json: partition A: content 'swap' is not one of bios, boot, slot, state"),
    (doc(images={"slot": "/basalt/root.squashfs", "state": "/s.gz"}),
     "plan.json: partition BASALT_BOOT: no image for its content 'boot'"),
    (doc(partitions=[{"name": "A", "type": LINUX, "size_mib": 1, "content": "slot"}]),
     "plan.json: no partition for boot, state"),
    (doc(files=[{"path": "/../../etc/shadow", "data": ""}]), "plan.json: '/../../etc/shadow': not an absolute path"),
    (doc(files=[{"path": "EFI/x", "data": ""}]), "plan.json: 'EFI/x': not an absolute path"),
    (doc(files=[{"path": "/x", "medium": "/../../dev/sda"}]), "plan.json: '/../../dev/sda': not an absolute path"),
    (doc(files=[{"path": "/x", "data": "not base64!"}]), "plan.json: a field has the wrong type"),
    (doc(images={"boot": "../boot.gz", "slot": "/r", "state": "/s"}), "plan.json: '../boot.gz': not an absolute path"),
    (doc(bios={"boot_img": "/b"}), "plan.json: no 'core_img'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_damaged_or_foreign_plan_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(BasaltError) as err:
        installplan.parse(raw, "plan.json")
    assert str(err.value.problems[0].message).startswith(message)
    assert "use an ISO built by this version" in (err.value.problems[0].hint or "")


def test_a_medium_without_a_plan_says_so(tmp_path: Any) -> None:
    with pytest.raises(BasaltError, match="no installer on this medium"):
        installplan.load(str(tmp_path / "plan.json"))


def test_digests_name_every_medium_file_and_are_sha256s() -> None:
    plan = json.loads(PLAN.to_json())
    plan["digests"] = {where: "a" * 64 for where in PLAN.on_medium}
    assert installplan.parse(json.dumps(plan).encode(), "p").digests == plan["digests"]
    missing = dict(plan, digests={k: v for k, v in list(plan["digests"].items())[1:]})
    with pytest.raises(BasaltError, match="p: digests: no sha256 for "):
        installplan.parse(json.dumps(missing).encode(), "p")
    wrong = dict(plan, digests={k: "zz" for k in plan["digests"]})
    with pytest.raises(BasaltError, match="p: digests: 'zz' is not one"):
        installplan.parse(json.dumps(wrong).encode(), "p")
