"""The install plan: what `basalt install` writes to a disk, as the ISO's builder describes it.

One record on both sides: builder/stages/iso.py makes a ``Plan`` and stores ``to_json()`` at
``/basalt/install/plan.json`` on the ISO; agent/disk/install.py reads it back with ``load()``,
which checks the format and every field, so a plan from another Basalt (or a damaged medium)
is a clear error instead of a KeyError halfway through writing a disk.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

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
            bios=(str(bios["boot_img"]), str(bios["core_img"])) if bios else None)
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
    on_medium = [*plan.images.values(), *(f.medium for f in plan.files if f.medium), *(plan.bios or ())]
    for where in (*on_medium, *(f.path for f in plan.files)):
        if not where.startswith("/") or ".." in where.split("/"):
            raise bad(f"{where!r}: not an absolute path inside the medium or the boot partition")
    return plan
