"""Write a minimal OCI image archive (an OCI layout in a tar) without a registry or daemon.

One layer holding a static binary and links to it, e.g. a static busybox: enough for
``ctr image import`` and for k3s's air-gap image directory. The output is byte-for-byte
reproducible (fixed mtimes, sorted entries, gzip without a timestamp).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o755, data: bytes | None = None,
           link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
    info.size = len(data) if data is not None else 0
    return info, data


def _blob(data: bytes) -> tuple[str, int]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)


def single_binary_image(out: Path, binary: Path, name: str, arch: str, links: tuple[str, ...] = (),
                        cmd: tuple[str, ...] = ()) -> str:
    """Write ``out`` (an OCI archive) with ``binary`` at /bin/<its name> and ``links`` to it
    in /bin; returns the manifest digest."""
    exe = binary.name
    entries = [entry("bin", tarfile.DIRTYPE), entry(f"bin/{exe}", data=binary.read_bytes()),
               *[entry(f"bin/{link}", tarfile.SYMTYPE, 0o777, link=exe) for link in links if link != exe],
               entry("tmp", tarfile.DIRTYPE, 0o1777)]
    return archive(out, entries, name, arch, cmd or (f"/bin/{exe}",))


def archive(out: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]], name: str, arch: str,
            cmd: tuple[str, ...], compress: bool = True, labels: dict[str, str] | None = None,
            env: tuple[str, ...] = ("PATH=/bin",)) -> str:
    """Write ``out``: an OCI image archive of one layer holding ``entries``; returns the manifest
    digest. A layer of data that is compressed already (a bundle) is stored uncompressed."""
    layer_tar = _tar(entries)
    layer = gzip.compress(layer_tar, mtime=0) if compress else layer_tar
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Env": list(env), "Cmd": list(cmd), **({"Labels": labels} if labels else {})},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }, sort_keys=True).encode()
    (config_digest, config_size), (layer_digest, layer_size) = _blob(config), _blob(layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER if compress else LAYER_TAR, "digest": layer_digest, "size": layer_size}],
    }, sort_keys=True).encode()
    manifest_digest, manifest_size = _blob(manifest)
    ref = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST, "digest": manifest_digest, "size": manifest_size,
        "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": ref}}]},
        sort_keys=True).encode()
    blobs = sorted({d.split(":")[1]: b for d, b in ((config_digest, config), (layer_digest, layer),
                                                    (manifest_digest, manifest))}.items())
    out.write_bytes(_tar([
        entry("blobs", tarfile.DIRTYPE), entry("blobs/sha256", tarfile.DIRTYPE),
        *[entry(f"blobs/sha256/{h}", mode=0o644, data=b) for h, b in blobs],
        entry("index.json", mode=0o644, data=index),
        entry("oci-layout", mode=0o644, data=b'{"imageLayoutVersion":"1.0.0"}'),
    ]))
    return manifest_digest
