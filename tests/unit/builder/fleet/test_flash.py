"""inv flash on real small images (made with the disk layer, mapped by the real bmaptool): a
regular file stands in for the card; only mapped blocks are written, from the .img or streamed out
of the .img.xz, and checked against the map; a corrupt image is caught. Each refusal for a block
device on a stand-in /sys/block, with its exact message."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.disk import targets
from agent.errors import BasaltError
from builder.fleet import flash
from builder.media import disk
from tests.unit.agent.disk.test_installer import fake_block

MIB = 1 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    content = tmp_path / "slot.img"
    content.write_bytes(b"A" * (3 * MIB) + bytes(MIB) + b"B" * MIB)  # a hole inside: unmapped blocks
    d = disk.Disk("dos", (disk.Partition("BASALT_BOOT", disk.ESP, 2),
                          disk.Partition("BASALT_A", disk.LINUX_DATA, 6, content),
                          disk.Partition("BASALT_STATE", disk.LINUX_DATA, 4)), seed="flash")
    img = tmp_path / "card.img"
    disk.write(d, img)
    if shutil.which("bmaptool") is None:
        pytest.fail("bmaptool is missing: ./inv installs bmap-tools")
    disk.flashables(img)
    return img


def test_flash_writes_the_mapped_blocks_and_verifies(image: Path, tmp_path: Path) -> None:
    bmap = flash.read_bmap(image.with_name(image.name + ".bmap"))
    assert bmap.image_size == 14 * MIB and 4 * MIB <= bmap.mapped_bytes < 6 * MIB
    card = tmp_path / "card"
    card.write_bytes(b"\xff" * (16 * MIB))  # an old card: what is not mapped keeps its bytes
    done = flash.flash(image, str(card))
    assert done == {"written": bmap.mapped_bytes, "image_size": 14 * MIB}
    data, src = card.read_bytes(), image.read_bytes()
    for first, last, _ in bmap.ranges:
        a, b = first * bmap.block_size, (last + 1) * bmap.block_size
        assert data[a:b] == src[a:b]
    hole = 3 * MIB + 3 * MIB + MIB // 2  # inside slot A's zero run: unmapped, not written
    assert data[hole:hole + 4096] == b"\xff" * 4096
    assert len(data) == 16 * MIB


def test_flash_streams_out_of_the_xz(image: Path, tmp_path: Path) -> None:
    original = image.read_bytes()
    image.unlink()  # only .img.xz and .img.bmap, as downloaded
    card = tmp_path / "card.img"
    flash.flash(image, str(card))  # a new file: its holes read as zeros, as the image's do
    assert hashlib.sha256(card.read_bytes()).hexdigest() == hashlib.sha256(original).hexdigest()


def test_a_corrupt_image_is_caught(image: Path, tmp_path: Path) -> None:
    with image.open("r+b") as f:
        f.seek(3 * MIB + 100)
        f.write(b"Z")
    with pytest.raises(BasaltError, match=r"card\.img: blocks \d+-\d+ do not match its block map"):
        flash.flash(image, str(tmp_path / "card"))


@pytest.fixture
def host(tmp_path: Path) -> targets.Host:
    root = tmp_path / "block"
    fake_block(root, "sda", 64 << 30, parts=("root",), model="Internal SSD")
    fake_block(root, "sdb", 32 << 30, removable=True, model="SD Card Reader")
    fake_block(root, "sdc", 8 << 20, removable=True)
    fake_block(root, "sdd", 32 << 30, removable=True, parts=("data",))
    fake_block(root, "sde", 500 << 30, model="USB HDD")
    return targets.Host(sys_block=str(root), mounts=[("/dev/sda1", "/"), ("/dev/sdd1", "/media/card")],
                        boot_devices=["/dev/sda1"])


@pytest.mark.parametrize(("device", "force", "expected"), [
    ("/dev/sda", True, ["/dev/sda: it holds this machine's root filesystem (/dev/sda1); nothing was written",
                        "hint: pick the card's device: lsblk shows it (often /dev/sdX or /dev/mmcblkN)"]),
    ("/dev/sdd", True, ["/dev/sdd: is in use: /dev/sdd1 is mounted at /media/card; nothing was written",
                        "hint: unmount it first (umount /dev/sdd*)"]),
    ("/dev/sdc", False, ["/dev/sdc: is too small: 8 MiB, the image is 14 MiB; nothing was written",
                         "hint: use a larger card"]),
    ("/dev/sde", False, ["/dev/sde: is not a removable disk (USB HDD, 500.0 GiB); nothing was written",
                         "hint: --force writes to it anyway, if it really is the card or disk to erase"]),
    ("/dev/sdd1", False, ["/dev/sdd1: is a partition of /dev/sdd; nothing was written",
                          "hint: flash the whole disk: --device /dev/sdd"]),
])
def test_flash_refusals(image: Path, host: targets.Host, device: str, force: bool, expected: list[str]) -> None:
    bmap = flash.read_bmap(image.with_name(image.name + ".bmap"))
    with pytest.raises(BasaltError) as exc:
        flash.check_device(device, bmap, host, force)
    assert exc.value.render().splitlines() == expected


def test_flash_accepts_a_removable_card_or_a_forced_disk(image: Path, host: targets.Host) -> None:
    bmap = flash.read_bmap(image.with_name(image.name + ".bmap"))
    flash.check_device("/dev/sdb", bmap, host)
    flash.check_device("/dev/sde", bmap, host, force=True)


@pytest.fixture
def in_dev() -> Iterator[Path]:
    """A name in /dev that nothing else uses; removed afterwards whatever flash did with it."""
    import uuid
    path = Path(f"/dev/basalt-test-{uuid.uuid4().hex[:12]}")
    yield path
    if path.is_file() or path.is_symlink():
        path.unlink()


def test_a_typo_in_dev_is_refused_not_created(image: Path, in_dev: Path) -> None:
    with pytest.raises(BasaltError) as exc:
        flash.flash(image, str(in_dev))
    assert exc.value.render().splitlines() == [f"{in_dev}: no such device; nothing was written",
                                               "hint: lsblk lists the disks: check the name"]
    assert not in_dev.exists()


def test_a_regular_file_in_dev_is_refused(image: Path, in_dev: Path) -> None:
    in_dev.write_bytes(b"left by an earlier typo")
    with pytest.raises(BasaltError, match=r"is a regular file in /dev, not a device"):
        flash.flash(image, str(in_dev))
    assert in_dev.read_bytes() == b"left by an earlier typo"


def test_links_and_other_files_are_refused(image: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    (tmp_path / "card-link").symlink_to(victim)
    with pytest.raises(BasaltError) as exc:
        flash.flash(image, str(tmp_path / "card-link"))
    assert exc.value.render().startswith(f"{tmp_path / 'card-link'}: is a link to {victim}, which is not a block "
                                         "device")
    assert victim.read_bytes() == b"precious"
    with pytest.raises(BasaltError, match=r"/dev/null: is neither a block device nor a regular file"):
        flash.flash(image, "/dev/null")


def bmap_text(image_size: str, block_size: str, ranges: str) -> str:
    return (f'<?xml version="1.0" ?>\n<bmap version="2.0"><ImageSize>{image_size}</ImageSize>'
            f"<BlockSize>{block_size}</BlockSize><BlocksCount>1</BlocksCount><MappedBlocksCount>1</MappedBlocksCount>"
            f"<ChecksumType>sha256</ChecksumType><BlockMap>{ranges}</BlockMap></bmap>\n")


GOOD = f'<Range chksum="{"0" * 64}">0-1</Range>'


@pytest.mark.parametrize(("text", "message"), [
    (bmap_text(str(10 ** 30), "4096", GOOD), "an image size of 1000000000000000000000000000000 bytes is not one"),
    (bmap_text("0", "4096", GOOD), "an image size of 0 bytes is not one a card or disk has"),
    (bmap_text("-4096", "4096", GOOD), "an image size of -4096 bytes"),
    (bmap_text("8192", "3", GOOD), "a block size of 3 bytes is not a power of two from 512 to 1 MiB"),
    (bmap_text("8192", "4096", f'<Range chksum="{"0" * 64}">0-99999999999</Range>'),
     "the range 0-99999999999 is not within the image's 2 blocks"),
    (bmap_text("8192", "4096", f'<Range chksum="{"0" * 64}">1-0</Range>'), "the range 1-0 is not within"),
    (bmap_text("8192", "4096", '<Range chksum="../../etc">0-1</Range>'), "the range 0-1 has no sha256"),
    (bmap_text("8192", "4096", f'<Range chksum="{"0" * 64}">x-y</Range>'), "invalid literal for int()"),
    ("<bmap version='2.0'>" * 3, "no element found"),
])
def test_an_absurd_block_map_is_refused_and_writes_nothing(image: Path, tmp_path: Path, text: str,
                                                          message: str) -> None:
    image.with_name(image.name + ".bmap").write_text(text)
    with pytest.raises(BasaltError) as exc:
        flash.flash(image, str(tmp_path / "card"))
    assert message in exc.value.render(), exc.value.render()
    assert not (tmp_path / "card").exists()


def test_a_failed_flash_leaves_no_file_it_made(image: Path, tmp_path: Path) -> None:
    with image.open("r+b") as f:
        f.seek(3 * MIB + 100)
        f.write(b"Z")
    with pytest.raises(BasaltError, match="do not match its block map"):
        flash.flash(image, str(tmp_path / "new-card.img"))
    assert not (tmp_path / "new-card.img").exists()  # nothing that looks like a flashed card
