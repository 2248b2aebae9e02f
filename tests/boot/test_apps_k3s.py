"""Apps end to end on a real k3s node: run, stage, weight, promote with ``basalt app`` on the node,
the apps controller running from the image's air-gap set, and the traffic split measured with real
requests through k3s's Traefik (within ±5 points of each weight over 400 requests).

Needs a real k3s binary (``BASALT_K3S_BINARY``) and, since these machines reach no registry, the
release's air-gap images for Traefik and the rest (``BASALT_K3S_AIRGAP``, the
``k3s-airgap-images-amd64.tar.zst`` of the same release); skipped otherwise. The apps are busybox
httpd images the test makes itself (builder/media/oci.py), imported into containerd over SSH."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from builder import pipeline, plan
from builder.media import oci
from builder.vm.qemu import READY, Guest

BINARY = os.environ.get("BASALT_K3S_BINARY", "")
AIRGAP = os.environ.get("BASALT_K3S_AIRGAP", "")
pytestmark = [
    pytest.mark.skipif(not BINARY, reason="BASALT_K3S_BINARY is not set: no real k3s binary here (GitHub releases "
                                          "are unreachable)"),
    pytest.mark.skipif(not AIRGAP, reason="BASALT_K3S_AIRGAP is not set: Traefik's image comes from the release's "
                                          "air-gap images (no registry is reachable here)"),
]


def web_image(out: Path, busybox: Path, revision: str) -> None:
    """docker.io/basalt/web:REVISION: busybox httpd on 8080, answering its revision's name."""
    entry = oci.entry
    oci.archive(out, [entry("bin", tarfile.DIRTYPE), entry("bin/busybox", data=busybox.read_bytes()),
                      entry("www", tarfile.DIRTYPE), entry("www/index.html", mode=0o644, data=revision.encode()),
                      entry("tmp", tarfile.DIRTYPE, 0o1777)],
                f"docker.io/basalt/web:{revision}", "amd64",
                ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"))


def test_run_stage_promote_and_the_split_through_traefik(key: Path, tmp_path: Path, qemu_available: None) -> None:
    version = re.search(r"(v\d+\.\d+\.\d+\+k3s\d+)", subprocess.run([BINARY, "--version"], capture_output=True,
                                                                     text=True).stdout)
    assert version, f"{BINARY} --version printed no k3s version"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copyfile(BINARY, artifacts / "k3s")
    shutil.copyfile(AIRGAP, artifacts / "k3s-airgap-images-amd64.tar.zst")
    (artifacts / "sha256sum-amd64.txt").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(artifacts.iterdir())))
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "k3s-apps.yaml").write_text(f"extends: x86_64-k3s\nname: k3s-apps\nk3s:\n  enabled: true\n"
                                        f"  version: {version.group(1)}\n  airgap_images: true\n")
    pub = key.with_suffix(".pub").read_text().strip()
    (tmp_path / "site.yaml").write_text(f'ssh_authorized_keys: ["{pub}"]\n')
    out = pipeline.build(plan.plan(str(defs / "k3s-apps.yaml"), str(tmp_path / "site.yaml"),
                                   k3s_artifacts=str(artifacts)), out=tmp_path / "out")
    busybox = out / "rootfs" / "root" / "usr/bin/busybox"
    for rev in ("v1", "v2"):
        web_image(tmp_path / f"web-{rev}.tar", busybox, rev)
    with Guest(next(out.glob("*.iso")), memory_mb=2048, cpus=2) as guest:
        guest.wait_for(READY, 300)
        guest.wait_ssh(key)

        def sh(cmd: str, timeout: float = 120) -> str:
            return guest.ssh(cmd, key, timeout=timeout)

        def until(cmd: str, want: str, seconds: float) -> str:
            deadline, got = time.monotonic() + seconds, ""
            while time.monotonic() < deadline:
                got = guest.ssh(cmd, key, check=False, timeout=120)
                if got == want:
                    return got
                time.sleep(5)
            return got

        assert until("k3s kubectl get deploy -n kube-system traefik -o jsonpath='{.status.readyReplicas}'",
                     "1", 900) == "1", sh("k3s kubectl get pods -A", 60)
        assert until("k3s kubectl get deploy -n basalt-system basalt-apps-controller "
                     "-o jsonpath='{.status.readyReplicas}'", "1", 300) == "1"
        # Traefik's ClusterIP: reachable from the node through kube-proxy (a hostPort on 127.0.0.1 may not be)
        traefik = sh("k3s kubectl get svc -n kube-system traefik -o jsonpath='{.spec.clusterIP}'")
        for rev in ("v1", "v2"):
            subprocess.run(["scp", "-q", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-i", str(key), "-P", str(guest.ssh_port), str(tmp_path / f"web-{rev}.tar"),
                            "root@127.0.0.1:/tmp/"], check=True, timeout=120)
            sh(f"k3s ctr -n k8s.io images import /tmp/web-{rev}.tar")

        def split(n: int = 400) -> dict[str, int]:
            get = f"wget -q -O - --header 'Host: web.local' http://{traefik}/"
            text = sh(f"for i in $(seq {n}); do {get}; echo; done", 600)
            lines = text.splitlines()
            return {rev: lines.count(rev) for rev in ("v1", "v2")}

        sh("basalt app run docker.io/basalt/web:v1 --name web --port 8080")
        assert until(f"wget -q -O - --header 'Host: web.local' http://{traefik}/", "v1", 300) == "v1"
        sh("basalt app stage web docker.io/basalt/web:v2")
        preview = f"wget -q -O - --header 'Host: v2-web.local' http://{traefik}/"
        assert until(preview, "v2", 300) == "v2"  # its preview host
        assert split(100) == {"v1": 100, "v2": 0}  # staged at 0%
        sh("basalt app weight web v1=70 v2=30")
        until("k3s kubectl get traefikservice web -o jsonpath='{.spec.weighted.services[1].weight}'", "30", 60)
        counts = split()
        assert abs(counts["v2"] / 400 * 100 - 30) <= 5 and counts["v1"] + counts["v2"] == 400, counts
        sh("basalt app promote web v2 --increment 35 --interval 2s")
        assert until("k3s kubectl get traefikservice web -o jsonpath='{.metadata.annotations.basalt\\.io/rollout}'",
                     "idle", 120) == "idle"
        assert split(100) == {"v1": 0, "v2": 100}
        assert until("k3s kubectl get deploy web-v1 -o jsonpath='{.spec.replicas}'", "0", 60) == "0"  # scaled down
        ps = sh("basalt app ps")
        assert re.search(r"^web\s+v2\s+docker.io/basalt/web:v2\s+100%\s+1/1", ps, re.M), ps
