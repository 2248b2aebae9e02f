"""``inv configure``: stamp a validated site config onto an already-built artifact, without
rebuilding it and without mounts or loop devices; the input is never modified.

- ISO: the build reserves ``/basalt/site.json`` (``layout.SITE_RESERVE`` bytes of NULs, agent/config/site.py
  reads it); a copy of the ISO gets the index written over that reservation, in place.
- Raw disk / SD card: a copy of the image gets ``/basalt/site.json`` on its boot partition (FAT)
  with mtools (``mcopy -o``), at the partition's offset (GPT name ``BASALT_BOOT``, or the MBR's
  first partition on the Pi's card). Then the ``.img.bmap`` and ``.img.xz`` are made again, if the
  input had them.

Stamping again replaces the earlier site config. The output directory gets its own manifest.json
(sizes and hashes; no config text, so no secret) and ``NAME.sha256`` files; it appears only once
complete.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from agent import layout
from agent.config.site import FORMAT
from agent.errors import BasaltError, Problem
from builder import host, progress
from builder.download import sha256_file
from builder.media import disk


def index(configs: list[dict[str, Any]], default: dict[str, Any] | None, image: str = "") -> bytes:
    """The site index agent/config/site.py reads: ``default`` ({name, config}) and per-device entries
    ({name, config, macs, serials}). Each entry also carries its config precompiled (``compiled``:
    the sidecar agent/config/sources.py reads, base64), keyed to this tree's config schema, so that
    a node built from this tree skips the YAML parser and the validator at every boot (seconds
    under emulation); a node with another schema ignores it and parses the YAML."""
    import base64

    from builder.imagedef import ROOT
    from builder.media.medium import precompiled_config
    schema_raw = (ROOT / "config" / "config.schema.json").read_bytes()

    def compiled(entry: dict[str, Any]) -> dict[str, Any]:
        return {**entry, "compiled": base64.b64encode(precompiled_config(entry["config"], schema_raw)).decode()}
    return json.dumps({"format": FORMAT, "image": image, "default": compiled(default) if default else None,
                       "devices": [compiled(c) for c in configs]}, sort_keys=True).encode()


def kind_of(path: Path) -> str:
    """iso, or disk (a raw image with a GPT or an MBR)."""
    if not path.is_file():
        raise BasaltError(Problem(f"{path}: no such artifact", hint="build it first: ./inv build --image NAME"))
    with path.open("rb") as f:
        head = f.read(32774)
    if head[32769:32774] == b"CD001":
        return "iso"
    if head[510:512] == b"\x55\xaa":
        return "disk"
    raise BasaltError(Problem(f"{path}: neither an ISO 9660 image nor a disk image",
                              hint="give a built artifact: out/<image>/<name>-<version>.iso or .img"))


def iso_reservation(path: Path) -> tuple[int, int]:
    """(byte offset, size) of the ISO's ``/basalt/site.json``."""
    import pycdlib
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        record = iso.get_record(rr_path=layout.MEDIUM_SITE)
        return record.extent_location() * 2048, record.get_data_length()
    except pycdlib.pycdlibexception.PyCdlibInvalidInput:
        raise BasaltError(Problem(f"{path}: this ISO has no {layout.MEDIUM_SITE} reservation",
                                  hint="it was built by an older Basalt: rebuild it (./inv build)")) from None
    finally:
        iso.close()


def _copy(src: Path, dest: Path) -> None:
    """A sparse (or reflinked) copy: a 1 GiB card with 200 MiB on it copies 200 MiB."""
    host.run(["cp", "--sparse=always", "--reflink=auto", str(src), str(dest)], f"copying {src}",
             hint="is there room for the copy?")


def _mtools(argv: list[str]) -> None:
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    host.run(argv, env=env)


SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_stamp_output(out: Path) -> bool:
    """Whether ``out`` is what an earlier stamp wrote (its manifest says so): the only directory a
    stamp replaces, besides an empty one."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("stamped_from"), dict)


def check_out(out: Path, artifact: Path, name: str) -> Path:
    """The output directory, made absolute, after the refusals that keep a stamp from replacing
    anything but an earlier stamp's own output (``-o ~``, ``-o .``, ``--name ..``)."""
    def refuse(message: str, hint: str) -> BaseException:
        return BasaltError(Problem(message, hint=hint))
    if name and not SITE_NAME.fullmatch(name):
        raise refuse(f"{name!r}: a site name is letters, digits, '.', '_' and '-' (at most 64), not starting "
                     "with '.' or '-'", "--name depot-7")
    if out.is_symlink():
        raise refuse(f"{out}: the output directory is a link: not followed", "give the directory itself")
    out = out.resolve()
    if out == artifact.resolve().parent or out in artifact.resolve().parents:
        raise refuse(f"{out}: the output directory holds the input", "choose another: -o out/sites/NAME")
    if out.exists():
        if not out.is_dir():
            raise refuse(f"{out}: exists and is not a directory", "choose a new directory: -o out/sites/NAME")
        if any(out.iterdir()) and not is_stamp_output(out):
            raise refuse(f"{out}: exists and is not an earlier stamp's output (no stamp manifest.json): "
                         "a stamp replaces only its own output", "choose a new or empty directory: -o out/sites/NAME")
    return out


def stamp(artifact: Path, payload: bytes, out: Path, name: str = "") -> Path:
    """Write ``payload`` (an index) into a copy of ``artifact`` in the directory ``out``, with its
    manifest; returns the stamped artifact's path."""
    kind = kind_of(artifact)
    if kind == "iso" and len(payload) > layout.SITE_RESERVE:
        raise BasaltError(Problem(f"the site index is {len(payload)} bytes; the ISO reserves {layout.SITE_RESERVE}",
                                  hint="stamp fewer devices per image (inv fleet build without --one-image)"))
    out = check_out(out, artifact, name)
    partial = out.with_name(f".{out.name}.partial")
    if partial.is_symlink() or partial.is_file():
        partial.unlink()
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    started = time.monotonic()
    # The input's and the output's sha256 are the slow part (two reads of a whole card): each is
    # hashed on a thread of its own (hashlib lets go of the GIL) while the copy and mtools run.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    try:
        source_digest = pool.submit(sha256_file, artifact)
        dest = partial / (artifact.name if not name else f"{artifact.stem}-{name}{artifact.suffix}")
        with progress.step(f"Copying {artifact.name}"):
            _copy(artifact, dest)
        digests: dict[Path, concurrent.futures.Future[str]] = {}
        if kind == "iso":
            offset, size = iso_reservation(dest)
            with dest.open("r+b") as f:
                f.seek(offset)
                f.write(payload + bytes(size - len(payload)))
            digests[dest] = pool.submit(sha256_file, dest)
        else:
            offset = disk.boot_partition(dest)
            staged = partial / "site.json"
            staged.write_bytes(payload)
            with progress.step("Writing the site config to the boot partition (mtools)"):
                # /basalt is there on every Basalt boot partition (the version, the marker)
                _mtools(["mcopy", "-o", "-i", f"{dest}@@{offset}", str(staged), "::" + layout.MEDIUM_SITE])
            staged.unlink()
            digests[dest] = pool.submit(sha256_file, dest)
            bmap, xz = (artifact.with_name(artifact.name + ext).exists() for ext in (".bmap", ".xz"))
            if bmap or xz:
                disk.flashables(dest, xz=xz)
        for item in partial.iterdir():  # the stamped artifacts hold the site's secrets: the owner's alone
            if item.name in (dest.name, dest.name + ".xz"):
                item.chmod(0o600)
        outputs = []
        for item in sorted(partial.iterdir()):
            digest = (digests.get(item) or pool.submit(sha256_file, item)).result()
            (partial / f"{item.name}.sha256").write_text(f"{digest}  {item.name}\n")
            outputs.append({"file": item.name, "size": item.stat().st_size, "sha256": digest})
        manifest = {"stamped_from": {"file": str(artifact), "sha256": source_digest.result()},
                    "site": name or None, "kind": kind, "seconds": round(time.monotonic() - started, 2),
                    "outputs": outputs}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    except BaseException:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    pool.shutdown()
    return out / dest.name


def configure(artifact: Path, config_file: Path, out: Path, name: str = "") -> Path:
    """``inv configure``: one site's config, validated, stamped onto ``artifact``."""
    from builder import plan
    kind_of(artifact)  # the artifact first: a wrong file is told before the config is read
    text = plan.load_site_config(str(config_file))
    assert text is not None
    site = name or config_file.stem
    return stamp(artifact, index([], {"name": site, "config": text}), out, site)
