"""Host-side media for a node: a NoCloud seed ISO (label ``cidata``) and a state disk
(ext4 labelled ``BASALT_STATE``), both made without mounts or root."""

from __future__ import annotations

import io
import os
from pathlib import Path

from agent import layout
from agent.errors import BasaltError, Problem
from builder import host

SEED_LABEL = "cidata"
STATE_LABEL = layout.STATE_LABEL


def check_user_data(path: Path) -> bytes:
    """user-data as the node will read it: a ``#!`` script, or a config that must validate."""
    data = path.read_bytes()
    if data.startswith(b"#!"):
        return data
    from agent.config.validate import load_config
    loaded = load_config(str(path))
    if loaded.problems:
        raise BasaltError(loaded.problems)
    return data


def make_seed(out: Path, user_data: Path, meta_data: Path | None = None, instance_id: str = "") -> Path:
    """A NoCloud seed ISO with ``user-data`` and ``meta-data`` (Rock Ridge names, so the
    node sees them as written). Written beside ``out`` and renamed into place."""
    import pycdlib
    files = {"user-data": check_user_data(user_data)}
    if meta_data is not None:
        files["meta-data"] = meta_data.read_bytes()
    else:
        files["meta-data"] = f"instance-id: {instance_id or 'basalt-seed'}\n".encode()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=SEED_LABEL, rock_ridge="1.09", joliet=3)
    for i, (name, data) in enumerate(sorted(files.items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i};1", rr_name=name, joliet_path=f"/{name}")
    tmp = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    iso.write(str(tmp))
    iso.close()
    os.replace(tmp, out)
    return out


def make_state_disk(out: Path, size_mb: int = 512) -> Path:
    """An empty ext4 state disk (sparse file) the initramfs mounts for /var, /home, /root, /opt."""
    mkfs = host.which("mkfs.ext4") or host.which("mke2fs")
    if mkfs is None:
        raise BasaltError(Problem("mkfs.ext4 not found", hint="apt-get install e2fsprogs"))
    tmp = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.truncate(size_mb << 20)
    try:
        host.run([mkfs, "-q", "-F", "-L", STATE_LABEL, "-E", "root_owner=0:0", str(tmp)], "mkfs.ext4")
    except BasaltError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return out
