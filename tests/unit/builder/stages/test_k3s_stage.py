"""The k3s artifact stage against a local HTTP server laid out like a k3s GitHub release.

GitHub is unreachable here, so the "release" is a real executable (the host's Python)
and a ``sha256sum-amd64.txt`` for it, served from 127.0.0.1 under the release's URL
layout (``<url>/v1.30.5%2Bk3s1/k3s``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.errors import BasaltError
from builder.download import BlobStore
from builder.stages import StageContext
from builder.stages import k3s as stage

VERSION = "v1.30.5+k3s1"
REAL_BINARY = Path(os.path.realpath(sys.executable))  # a few MiB: downloads arrive in several chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(root: Path, files: dict[str, bytes], sums: dict[str, str] | None = None, arch: str = "amd64") -> Path:
    """A release directory: the files and a sha256sum file listing them (or ``sums``)."""
    d = root / VERSION
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    listed = sums if sums is not None else {name: sha(data) for name, data in files.items()}
    (d / f"sha256sum-{arch}.txt").write_text("".join(f"{h}  {n}\n" for n, h in listed.items()))
    return d


def options(url: str, **over: Any) -> dict[str, Any]:
    o = {"enabled": True, "version": VERSION, "asset": "k3s", "arch": "amd64", "sha256": None, "url": url,
         "binary": None, "artifacts": None, "airgap_images": False}
    return {**o, **over}


def run(tmp_path: Path, o: dict[str, Any], cache: Path | None = None) -> dict[str, Any]:
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (tmp_path / "work").mkdir(exist_ok=True)
    store = BlobStore(cache or tmp_path / "cache")
    stage.run(StageContext(out=out, inputs={}, store=store, work=tmp_path / "work"), o)
    return stage.locked(out, store)


def test_downloads_the_release_binary_verified_by_its_checksum_file(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    binary = REAL_BINARY.read_bytes()
    release(http_server.root, {"k3s": binary})
    lock = run(tmp_path, options(http_server.url))
    assert (lock["route"], lock["version"], lock["binary"]["sha256"]) == ("download", VERSION, sha(binary))
    assert Path(lock["binary"]["path"]).read_bytes() == binary
    paths = [p for p, _ in http_server.requests]
    assert paths == ["/v1.30.5%2Bk3s1/sha256sum-amd64.txt", "/v1.30.5%2Bk3s1/k3s"]
    # Warm rebuild: the checksum file and the binary both come from the cache, offline.
    http_server.requests.clear()
    again = run(tmp_path, options(http_server.url))
    assert again["route"] == "cache" and again["binary"]["sha256"] == sha(binary)
    assert http_server.requests == []
    # The key ignores the route: same content, same downstream cache.
    assert (tmp_path / "out" / "key").read_text() == hashlib.sha256(json.dumps(
        {k: v for k, v in json.loads((tmp_path / "out" / "k3s.lock.json").read_text()).items() if k != "route"},
        sort_keys=True).encode()).hexdigest()


def test_an_arm64_image_downloads_the_arm64_release_asset(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    """The Raspberry Pi card with k3s: the plan names k3s-arm64 and sha256sum-arm64.txt (builder/arch.py)."""
    from builder import plan
    from builder.imagedef import load_image
    arm_binary = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\xb7\x00" + bytes(4096)  # an ELF header, EM_AARCH64
    release(http_server.root, {"k3s-arm64": arm_binary}, arch="arm64")
    definition = tmp_path / "rpi-k3s.yaml"
    definition.write_text(f"extends: rpi\nname: rpi-k3s\nk3s:\n  enabled: true\n  version: {VERSION}\n"
                          f"  url: {http_server.url}\n")
    o = plan.k3s_options(load_image(str(definition)), None, None)
    assert (o["asset"], o["arch"]) == ("k3s-arm64", "arm64")
    lock = run(tmp_path, o)
    assert lock["route"] == "download" and Path(lock["binary"]["path"]).read_bytes() == arm_binary
    assert [p for p, _ in http_server.requests] == ["/v1.30.5%2Bk3s1/sha256sum-arm64.txt",
                                                     "/v1.30.5%2Bk3s1/k3s-arm64"]


def test_wrong_checksum_is_rejected_with_the_three_routes(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    release(http_server.root, {"k3s": REAL_BINARY.read_bytes()}, sums={"k3s": "b" * 64})
    with pytest.raises(BasaltError) as exc:
        run(tmp_path, options(http_server.url))
    text = exc.value.render()
    assert f"k3s {VERSION} (amd64): downloaded 'k3s' failed verification" in text
    assert "expected " + "b" * 64 in text
    for route in ("(1) online", "(2) --k3s-binary PATH", "(3) --k3s-artifacts DIR"):
        assert route in text
    assert not BlobStore(tmp_path / "cache").has("b" * 64)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_pinned_checksum_must_agree_with_the_release(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    release(http_server.root, {"k3s": REAL_BINARY.read_bytes()})
    with pytest.raises(BasaltError) as exc:
        run(tmp_path, options(http_server.url, sha256="c" * 64))
    assert "the pinned k3s.sha256 (cccccccccccc...) disagrees with the release's sha256sum-amd64.txt" in \
        exc.value.render()


def test_truncated_download_resumes(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    binary = REAL_BINARY.read_bytes()
    release(http_server.root, {"k3s": binary})
    http_server.truncate["/v1.30.5%2Bk3s1/k3s"] = len(binary) // 3
    lock = run(tmp_path, options(http_server.url, sha256=sha(binary)))
    assert Path(lock["binary"]["path"]).read_bytes() == binary
    ranges = [r for p, r in http_server.requests if p.endswith("/k3s")]
    assert ranges[0] is None and ranges[1] is not None
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(binary) // 3  # resumed, not restarted


def test_unknown_version_404_names_the_routes(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BasaltError) as exc:
        run(tmp_path, options(http_server.url))
    text = exc.value.render()
    assert "cannot download sha256sum-amd64.txt" in text and "not found (HTTP 404)" in text
    assert "--k3s-binary PATH" in text and "--k3s-artifacts DIR" in text
    # With the checksum pinned, the binary itself is what is missing.
    with pytest.raises(BasaltError) as exc:
        run(tmp_path, options(http_server.url, sha256="d" * 64))
    assert "/v1.30.5%2Bk3s1/k3s: not found (HTTP 404)" in exc.value.render()


def test_air_gapped_binary_is_checked_against_the_pinned_value(tmp_path: Path) -> None:
    binary = REAL_BINARY.read_bytes()
    offline = "http://127.0.0.1:9/"  # nothing listens: any network use would fail the build
    lock = run(tmp_path, options(offline, binary=str(REAL_BINARY), sha256=sha(binary)))
    assert (lock["route"], lock["binary"]["sha256"]) == ("local", sha(binary))
    wrong = tmp_path / "k3s-from-a-usb-stick"
    wrong.write_bytes(binary + b"\0")
    with pytest.raises(BasaltError) as exc:
        run(tmp_path, options(offline, binary=str(wrong), sha256=sha(binary)))  # even with the right one cached
    assert f"{wrong}: sha256 mismatch: expected {sha(binary)}" in exc.value.render()
    assert not BlobStore(tmp_path / "cache").has(sha(binary + b"\0"))


def test_artifacts_directory_with_airgap_images(tmp_path: Path) -> None:
    binary = REAL_BINARY.read_bytes()
    images = b"zstd-frames-standing-in-for-the-airgap-tarball" * 100
    d = release(tmp_path / "artifacts", {"k3s": binary, "k3s-airgap-images-amd64.tar.zst": images})
    lock = run(tmp_path, options("http://127.0.0.1:9/", artifacts=str(d), airgap_images=True))
    assert lock["route"] == "local"
    assert lock["airgap"]["file"] == "k3s-airgap-images-amd64.tar.zst"
    assert Path(lock["airgap"]["path"]).read_bytes() == images
    (d / "k3s-airgap-images-amd64.tar.zst").unlink()
    with pytest.raises(BasaltError) as exc:
        run(tmp_path, options("http://127.0.0.1:9/", artifacts=str(d), airgap_images=True),
            cache=tmp_path / "cache2")
    assert "'k3s-airgap-images-amd64.tar.zst' is not beside the binary or in the artifacts directory" in \
        exc.value.render()


def test_disabled_stage_produces_an_empty_lock(tmp_path: Path) -> None:
    lock = run(tmp_path, options("http://127.0.0.1:9/", enabled=False, version=None))
    assert lock == {"enabled": False}
