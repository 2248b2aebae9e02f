"""Upgrade bundles made wrong on purpose, from a real build's bundle (tests/boot)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from agent.upgrade import bundle
from builder import signing
from builder.stages import bundle as bundle_stage


def forged(src: Path, work: Path, name: str, arch: str | None = None, key: signing.SigningKey | None = None,
           flip: str | None = None, version: str | None = None, parts: dict[str, bytes] | None = None) -> Path:
    """``src`` made wrong in one way, as ``work/<name>.bundle``:

    - ``flip``: one byte of that part changed after signing (the manifest and its signature untouched);
    - otherwise re-signed properly (by the build's development key unless ``key``), for another
      ``arch``, as another ``version`` or with some ``parts`` replaced by other bytes."""
    dest = work / f"{name}.bundle"
    if flip is not None:
        data = bytearray(src.read_bytes())
        with tarfile.open(src) as tar:
            member = tar.getmember(flip)
        data[member.offset_data + member.size // 2] ^= 0xFF
        dest.write_bytes(bytes(data))
        return dest
    unpacked = work / name
    unpacked.mkdir()
    with tarfile.open(src) as tar:
        tar.extractall(unpacked)
    for part, content in (parts or {}).items():
        (unpacked / part).write_bytes(content)
    man = json.loads((unpacked / bundle.MANIFEST).read_text())
    bundle_stage.write(dest, {p: unpacked / p for p in bundle.PARTS}, man["image"], version or man["version"],
                       arch or man["arch"], 0, key or signing.resolve(None), unpacked)
    return dest
