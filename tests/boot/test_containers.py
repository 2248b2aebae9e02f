"""Real containers without k3s: the containerd image variant (Debian's containerd and runc).

An OCI image is built on the host from the image's own static busybox (no registry),
copied in over SSH, imported with ``ctr image import`` and run with a memory limit that
cgroup v2 must enforce. An app image built from git with buildah (builder/appbuild.py) is
delivered over SSH the way a k3s node gets it, and runs. ``basalt doctor`` must pass on that boot, and fail, naming the
block and its fix, when the kernel command line blocks br_netfilter.

Guests are bounded by timeouts and killed on exit; their network is restricted to the
SSH forward."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from buildah import make_base, repository

from builder import appbuild
from builder.media import oci
from builder.vm import seed
from builder.vm.qemu import IDLE, READY, Guest
from tests.conftest import Build

BOOT_TIMEOUT = 300
IMAGE = "docker.io/basalt/busybox:test"
LIMIT = 32 * 1024 * 1024
DIRECT = "console=ttyS0,115200 quiet basalt.label=BASALT basalt.mode=live"


@pytest.fixture(scope="module")
def containerd_image(build: Build) -> Path:
    return build("x86_64-containerd")


@pytest.fixture(scope="module")
def key_seed(key: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("seed")
    (d / "user-data").write_text(f"ssh_authorized_keys:\n- {key.with_suffix('.pub').read_text().strip()}\n")
    return seed.make_seed(d / "seed.iso", d / "user-data", None)


def test_containerd_runs_an_imported_oci_image_under_a_cgroup_v2_memory_limit(
        containerd_image: Path, key: Path, key_seed: Path, tmp_path: Path, qemu_available: None) -> None:
    tarball = tmp_path / "busybox-oci.tar"
    busybox = (containerd_image / "rootfs/root/usr/bin/busybox").resolve()
    oci.single_binary_image(tarball, busybox, IMAGE, "amd64",
                            links=("sh", "echo", "cat", "head", "tail", "wc", "sleep"))
    iso = next(containerd_image.glob("*.iso"))
    with Guest(iso, extra_cdroms=[key_seed], memory_mb=768, firmware="direct") as guest:
        assert "errors=0" in guest.wait_for(READY, BOOT_TIMEOUT).group(0), guest.tail()
        guest.wait_ssh(key)

        def sh(cmd: str, timeout: float = 120) -> str:
            return guest.ssh(cmd, key, timeout=timeout)

        doctor = sh("basalt doctor")
        assert doctor.endswith("ready for k3s and containers"), doctor
        assert re.search(r"OK +cgroup v2 controllers: cpu cpuset memory pids available and delegated", doctor)
        assert "OK    module br_netfilter" in doctor and "OK    mount propagation: / is shared" in doctor
        # containerd is supervised by the agent and answers on its socket.
        sh("for i in $(seq 90); do ctr version >/dev/null 2>&1 && break; sleep 1; done; ctr version")
        status = json.loads(sh("basalt status --json"))
        assert status["services"]["containerd"]["state"] == "running"

        assert guest.ssh("cat > /var/tmp/busybox-oci.tar", key, stdin=tarball, timeout=120) == ""
        assert sh("sha256sum /var/tmp/busybox-oci.tar").split()[0] == hashlib.sha256(tarball.read_bytes()).hexdigest()
        imported = sh("ctr image import /var/tmp/busybox-oci.tar", timeout=180)
        assert IMAGE in imported, imported
        assert IMAGE in sh("ctr image ls -q").splitlines()

        out = sh(f"ctr run --rm {IMAGE} marker sh -c 'echo MARKER-$((6*7))'", timeout=180)
        assert out == "MARKER-42", out
        # An app built from git on this host (builder/appbuild.py: buildah, FROM a base made of this
        # image's busybox) and delivered over SSH into this containerd (and its air-gap directory).
        store = make_base(tmp_path / "buildah", busybox)
        repo = repository(tmp_path / "shop", hello="hello-from-git\n")
        built = appbuild.once(SimpleNamespace(
            source=str(repo), ref="main", name="shop", namespace="default", kubeconfig=None, out=str(tmp_path / "apps"),
            store=str(store), deliver=f"ssh://root@127.0.0.1:{guest.ssh_port}", identity=str(key),
            known_hosts=str(tmp_path / "known_hosts"), registry=None, insecure_registry=False, no_stage=True))
        assert sh(f"sha256sum {appbuild.IMAGES_DIR}/{built.archive.name}").split()[0] == built.sha256
        assert built.image in sh("ctr -n k8s.io image ls -q").splitlines()
        assert sh(f"ctr -n k8s.io run --rm {built.image} from-git", timeout=180) == "hello-from-git"
        # A long-running container with a 32 MiB limit, in a cgroup the host can read.
        group = "/sys/fs/cgroup/basalt-test/limited"
        sh(f"ctr run -d --cgroup /basalt-test/limited --memory-limit {LIMIT} {IMAGE} limited sleep 600", timeout=180)
        assert sh(f"cat {group}/memory.max") == str(LIMIT)
        # Under the limit a 16 MiB buffer is fine; past it the kernel's OOM killer ends the process.
        out = sh("ctr task exec --exec-id small limited sh -c 'head -c 16m /dev/zero | tail | wc -c'", timeout=180)
        assert out == str(16 * 1024 * 1024), out
        assert re.search(r"^oom_kill 0$", sh(f"cat {group}/memory.events"), re.M)
        out = sh("ctr task exec --exec-id big limited sh -c 'head -c 256m /dev/zero | tail >/dev/null; "
                 "echo tail-exit=$?'", timeout=300)
        assert out == "tail-exit=137", out
        assert re.search(r"^oom_kill [1-9]", sh(f"cat {group}/memory.events"), re.M)
        assert int(sh(f"cat {group}/memory.peak 2>/dev/null || cat {group}/memory.current")) <= LIMIT
        sh("ctr task kill -s KILL limited; for i in $(seq 30); do ctr task ls -q | grep -q limited || break; "
           "sleep 1; done; ctr task rm limited 2>/dev/null; ctr container rm limited", timeout=120)
        assert "Memory cgroup out of memory" in sh("dmesg")


def test_doctor_names_a_blocked_module_and_how_to_fix_it(containerd_image: Path, key: Path, key_seed: Path,
                                                         qemu_available: None) -> None:
    out = containerd_image
    cmdline = f"{DIRECT} module_blacklist=br_netfilter"
    with Guest(next(out.glob("*.iso")), extra_cdroms=[key_seed], memory_mb=768,
               direct=(out / "vmlinuz", out / "initrd.img", cmdline)) as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_for(IDLE, 120)
        guest.wait_ssh(key)
        result = guest.ssh("basalt doctor; echo exit=$?", key, check=False)
        assert "exit=1" in result, result
        assert "FAIL  module br_netfilter: not loaded: blocked by module_blacklist=br_netfilter on the kernel " \
               "command line" in result
        assert "fix: remove that block, then 'modprobe br_netfilter'" in result
        assert "FAIL  sysctl net.bridge.bridge-nf-call-iptables: absent (br_netfilter not loaded)" in result
        assert result.rstrip().endswith("k3s cannot run here: 3 problems\nexit=1"), result
        report = json.loads(guest.ssh("basalt doctor --json", key, check=False))
        assert report["ready"] is False
        assert {c["what"] for c in report["checks"] if c["status"] == "fail"} == \
            {"module br_netfilter", "sysctl net.bridge.bridge-nf-call-iptables",
             "sysctl net.bridge.bridge-nf-call-ip6tables"}
