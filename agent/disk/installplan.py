"""The install plan: what `basalt install` writes to a disk, as the ISO's builder describes it.

One record on both sides: builder/stages/iso.py makes a ``Plan`` and stores ``to_json()`` at
``/basalt/install/plan.json`` on the ISO; agent/disk/install.py reads it back with ``load()``,
which checks the format and every field, so a plan from another Basalt (or a damaged medium)
is a clear error instead of a KeyError halfway through writing a disk.

The plan names the sha256 of every file it takes from the medium (``digests``), and the build
signs it with the image's upgrade key (``plan.json.minisig``), so an ISO fetched from a URL
(``install.iso_url``) is verified as an upgrade bundle is — the signature first, then every
file's hash — before a byte is written (``verify_medium``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from agent.disk.partitions import Disk, Partition
from agent.errors import BasaltError, Problem

FORMAT = 1
MAX_BYTES = 1 << 20  # a plan is a few KiB; the boot files it carries inline are small
CONTENTS = ("bios", "boot", "slot", "state")  # what a partition receives (None: left empty)


@dataclass(frozen=True)
class BootFile:
    """A file of the boot partition: copied from the medium (``medium``) or carried inline (``data``)."""
    path: str  # where on the boot partition: /EFI/BOOT/BOOTX64.EFI
    medium: str = ""  # its path on the medium
    data: bytes = b""


@dataclass(frozen=True)
class Plan:
    image: str
    version: str
    arch: str
    table: str  # "gpt" or "dos"
    partitions: tuple[Partition, ...]  # content: one of CONTENTS, or None
    images: dict[str, str]  # content -> its image on the medium ("slot": /basalt/root.squashfs)
    files: tuple[BootFile, ...]
    bios: tuple[str, str] | None = None  # GRUB's boot.img and core.img on the medium, for BIOS
    digests: dict[str, str] | None = None  # medium path -> sha256, for every file taken from the medium

    @property
    def on_medium(self) -> list[str]:
        """Every file the plan takes from the medium."""
        return [*self.images.values(), *(f.medium for f in self.files if f.medium), *(self.bios or ())]

    @property
    def min_mib(self) -> int:
        return Disk(self.table, self.partitions, "").min_size_mib()

    def disk(self, seed: str) -> Disk:
        return Disk(self.table, self.partitions, seed)

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "image": self.image, "version": self.version, "arch": self.arch,
            "table": self.table, "min_mib": self.min_mib,
            "partitions": [{"name": p.name, "type": p.type, "size_mib": p.size_mib, "content": p.content}
                           for p in self.partitions],
            "images": self.images,
            "bios": {"boot_img": self.bios[0], "core_img": self.bios[1]} if self.bios else None,
            "files": [{"path": f.path, "medium": f.medium} if f.medium
                      else {"path": f.path, "data": base64.b64encode(f.data).decode()} for f in self.files],
            "digests": self.digests,
        }, indent=1, sort_keys=True).encode()


def load(path: str) -> Plan:
    """The plan at ``path``; a missing file, another format or a damaged field is a BasaltError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError:
        raise BasaltError(Problem(f"{path}: no installer on this medium",
                                  hint="basalt install runs from the live ISO (or give --iso-url)")) from None
    return parse(raw, path)


def parse(raw: bytes, source: str) -> Plan:
    def bad(what: str) -> BasaltError:
        return BasaltError(Problem(f"{source}: {what}", hint="the medium is damaged or from another Basalt: "
                                                             "use an ISO built by this version"))
    if len(raw) > MAX_BYTES:
        raise bad(f"larger than {MAX_BYTES >> 10} KiB: not an install plan")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    if doc.get("format") != FORMAT:
        raise bad(f"format {doc.get('format')} is not one this agent reads (it reads {FORMAT})")
    try:
        parts = tuple(Partition(str(p["name"]), str(p["type"]), int(p["size_mib"]),
                                           p.get("content")) for p in doc["partitions"])
        bios = doc.get("bios")
        plan = Plan(
            image=str(doc["image"]), version=str(doc["version"]), arch=str(doc["arch"]), table=str(doc["table"]),
            partitions=parts, images={str(k): str(v) for k, v in doc["images"].items()},
            files=tuple(BootFile(str(f["path"]), medium=str(f["medium"])) if "medium" in f
                        else BootFile(str(f["path"]), data=base64.b64decode(f["data"], validate=True))
                        for f in doc["files"]),
            bios=(str(bios["boot_img"]), str(bios["core_img"])) if bios else None,
            digests={str(k): str(v) for k, v in doc["digests"].items()} if doc.get("digests") is not None else None)
    except KeyError as exc:
        raise bad(f"no {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise bad(f"a field has the wrong type ({exc})") from None
    if plan.table not in ("gpt", "dos"):
        raise bad(f"table {plan.table!r} is neither gpt nor dos")
    for p in plan.partitions:
        if p.content is not None and p.content not in CONTENTS:
            raise bad(f"partition {p.name}: content {p.content!r} is not one of {', '.join(CONTENTS)}")
        if p.content in ("boot", "slot", "state") and p.content not in plan.images:
            raise bad(f"partition {p.name}: no image for its content {p.content!r}")
    missing = [c for c in ("boot", "slot", "state") if c not in {p.content for p in plan.partitions}]
    if missing:
        raise bad(f"no partition for {', '.join(missing)}")
    for where in (*plan.on_medium, *(f.path for f in plan.files)):
        if not where.startswith("/") or ".." in where.split("/"):
            raise bad(f"{where!r}: not an absolute path inside the medium or the boot partition")
    if plan.digests is not None:
        missing = [m for m in plan.on_medium if m not in plan.digests]
        bad_digest = [d for d in plan.digests.values() if len(d) != 64 or d.strip("0123456789abcdef")]
        if missing or bad_digest:
            raise bad(f"digests: {'no sha256 for ' + missing[0] if missing else repr(bad_digest[0]) + ' is not one'}")
    return plan


SIGNATURE = ".minisig"  # beside the plan: plan.json.minisig


def verify_medium(read: Callable[[str], BinaryIO], plan_path: str, public_key: str, work: str, source: str) -> Plan:
    """The plan of a medium that is not the one this node booted (``install.iso_url``), checked as
    an upgrade bundle is: its signature by ``public_key`` (this node's upgrade key), then the
    sha256 of every file it takes from the medium. ``read(path)`` opens a file of the medium (the
    mounted ISO on a node). A BasaltError names what failed."""
    import hashlib

    from agent import minisign
    try:
        with read(plan_path) as f:
            raw = f.read(MAX_BYTES + 1)
        with read(plan_path + SIGNATURE) as f:
            signature = f.read(64 << 10)
    except OSError as exc:
        raise BasaltError(Problem(f"{source}: refused: no signed install plan ({exc.strerror or exc})",
                                  hint="an ISO built by this Basalt carries /basalt/install/plan.json and its "
                                       ".minisig")) from None
    minisign.verify(raw, signature, public_key, work, source, "install plan")
    plan = parse(raw, source)
    if plan.digests is None:
        raise BasaltError(Problem(f"{source}: refused: its install plan names no sha256 of its files",
                                  hint="build the ISO with this Basalt"))
    for where in plan.on_medium:
        h = hashlib.sha256()
        try:
            with read(where) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except OSError as exc:
            raise BasaltError(Problem(f"{source}: refused: {where}: {exc.strerror or exc}",
                                      hint="fetch the ISO again")) from None
        if h.hexdigest() != plan.digests[where]:
            raise BasaltError(Problem(f"{source}: refused: bad hash: {where} has sha256 {h.hexdigest()[:16]}…, the "
                                      f"signed plan says {plan.digests[where][:16]}…",
                                      hint="the ISO was changed or damaged: fetch it again"))
    return plan
