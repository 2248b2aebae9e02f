"""What every boot medium carries besides the boot loader (the ISO, or a disk's boot partition):
the marker the boot loader finds it by, the version, and the site config with its precompiled form."""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent import layout
from agent.errors import BasaltError


def marker_name(name: str, version: str, config: str | None, kind: str = "") -> str:
    """A file name unique to this build (and config, and kind of medium: an ISO's, a disk's): the
    boot loader's way to find its medium."""
    digest = hashlib.sha256(f"{name}-{version}-{config}{'-' + kind if kind else ''}".encode()).hexdigest()
    return f"id-{digest[:16]}"


def precompiled_config(text: str, schema_raw: bytes) -> bytes:
    """The site config's normalised value for the node to use without parsing it again, keyed
    to ``schema_raw``, the schema the image carries (agent/config/sources.py): a node whose schema
    differs ignores it and parses the YAML."""
    from agent.config.sources import precompile
    from agent.config.validate import check_text
    loaded = check_text(text, "config.yaml")
    if loaded.problems:  # the plan validated it already; this is the same check
        raise BasaltError(loaded.problems)
    return precompile(text.encode(), loaded.value, schema_raw)


def files(name: str, version: str, config: str | None, rootfs_tree: Path,
          marker: str | None = None) -> dict[str, bytes]:
    """Marker, version and (if any) the site config, by their paths on the medium."""
    out = {f"{layout.MEDIUM_DIR}/{marker or marker_name(name, version, config)}": b"",
           layout.MEDIUM_VERSION: (version + "\n").encode()}
    if config is not None:
        out[layout.MEDIUM_CONFIG] = config.encode()
        schema_raw = (rootfs_tree / layout.LIB_SCHEMA.lstrip("/")).read_bytes()
        out[layout.MEDIUM_CONFIG_BIN] = precompiled_config(config, schema_raw)
    return out
