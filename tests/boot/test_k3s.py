"""k3s in the image, run by the agent.

1. Always: an image built with k3s through the full pipeline, the binary downloaded from a
   local HTTP server laid out like a k3s release. GitHub (and so a real k3s binary) is not
   reachable from these machines, so the "release binary" here is a stand-in shell script that
   records how it was started and then sleeps; this is the one mock, at that unreachable
   boundary. Everything around it is real: checksum verification, /usr/bin/k3s and its links,
   the bundled chart and air-gap images, the generated config/manifests, supervision with
   restart and backoff, the log, a restart on config change, and ``basalt doctor``.
2. With ``BASALT_K3S_BINARY`` pointing at a real k3s binary: the real end-to-end test (node
   Ready, a manifest from ``k3s.manifests`` applied, the labels). Skipped otherwise.

Guests are bounded by timeouts and killed on exit; the HTTP server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Server

from agent.apps import deploy
from builder import pipeline, plan
from builder.fleet import stamp
from builder.media import appsimage
from builder.vm.qemu import READY, Guest

# One worker runs this module: its tests share one k3s image, whose stand-in binary is new each run.
pytestmark = pytest.mark.xdist_group("k3s")
BOOT_TIMEOUT = 300
VERSION = "v1.34.2+k3s1"
STAND_IN = """#!/bin/sh
# Stand-in for the k3s release binary (unreachable here): records its runs, fails the first.
n=$(cat /run/k3s-stand-in.runs 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /run/k3s-stand-in.runs
echo "run $n: $*" >> /run/k3s-stand-in.argv
echo "HTTP_PROXY=$HTTP_PROXY" > /run/k3s-stand-in.env
if [ "$n" = 1 ]; then echo "stand-in: first run exits 1"; exit 1; fi
echo "stand-in: running"
exec sleep 100000
"""


def chart_tgz(path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"apiVersion: v2\nname: site-app\nversion: 1.0.0\n"
        info = tarfile.TarInfo("site-app/Chart.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def site_config(pub: str, extra_label: str = "depot-7") -> str:
    return f"""\
ssh_authorized_keys: ["{pub}"]
k3os:
  token: cluster-secret
  labels: {{site: {extra_label}}}
  taints: ["dedicated=edge:NoSchedule"]
  k3s_args: [server, --disable=traefik]
  environment: {{HTTP_PROXY: "http://proxy.invalid:3128"}}
k3s:
  config: {{write-kubeconfig-mode: "0644"}}
  manifests:
  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: site, namespace: default}}, data: {{site: depot-7}}}}
  helm_charts:
  - {{name: site-app, bundled: site-app-1.0.0.tgz, target_namespace: apps, create_namespace: true}}
"""


@dataclass
class StandIn:
    out: Path
    fetched: list[str]
    stand_in: str
    airgap: bytes


@pytest.fixture(scope="module")
def stand_in_build(key: Path, tmp_path_factory: pytest.TempPathFactory) -> StandIn:
    """The k3s image, its binary and air-gap images downloaded from a local release server."""
    tmp_path = tmp_path_factory.mktemp("k3s")
    # Unique bytes and a unique release URL per run: the blob cache is shared (and the release's
    # checksum file is kept per URL and version), and these must really be downloaded. The URL
    # alone is not unique: a later run's server may get an earlier one's port.
    nonce = uuid.uuid4().hex
    www = tmp_path / "www"
    release = www / nonce / VERSION
    release.mkdir(parents=True)
    stand_in = STAND_IN.replace("#!/bin/sh\n", f"#!/bin/sh\n# {nonce}\n", 1)
    (release / "k3s").write_text(stand_in)
    airgap = f"(stand-in air-gap image tarball {nonce})\n".encode() * 64
    (release / "k3s-airgap-images-amd64.tar.zst").write_bytes(airgap)
    (release / "sha256sum-amd64.txt").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(release.iterdir())))
    defs = tmp_path / "defs"
    defs.mkdir()
    chart_tgz(defs / "site-app-1.0.0.tgz")
    pub = key.with_suffix(".pub").read_text().strip()
    (tmp_path / "site.yaml").write_text(site_config(pub))
    with Server(www) as server:
        (defs / "k3s-stand-in.yaml").write_text(
            f"extends: x86_64-k3s\nname: k3s-stand-in\nk3s:\n  enabled: true\n  version: {VERSION}\n"
            f"  url: {server.url}/{nonce}\n  airgap_images: true\n  charts: [site-app-1.0.0.tgz]\n"
            "qemu: {memory_mb: 768}\n")
        out = pipeline.build(plan.plan(str(defs / "k3s-stand-in.yaml"), str(tmp_path / "site.yaml")),
                             out=tmp_path / "out")
        fetched = [p.removeprefix(f"/{nonce}") for p, _ in server.requests]
    return StandIn(out, fetched, stand_in, airgap)


def test_k3s_image_from_a_release_server_runs_under_the_agent(stand_in_build: StandIn, key: Path,
                                                              qemu_available: None) -> None:
    out, fetched, stand_in, airgap = (stand_in_build.out, stand_in_build.fetched, stand_in_build.stand_in,
                                      stand_in_build.airgap)
    assert fetched == ["/v1.34.2%2Bk3s1/sha256sum-amd64.txt", "/v1.34.2%2Bk3s1/k3s",
                       "/v1.34.2%2Bk3s1/k3s-airgap-images-amd64.tar.zst"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["k3s"]["binary"]["sha256"] == hashlib.sha256(stand_in.encode()).hexdigest()
    root = out / "rootfs" / "root"
    assert (root / "usr/bin/k3s").read_text() == stand_in and os.access(root / "usr/bin/k3s", os.X_OK)
    assert {n: os.readlink(root / "usr/bin" / n) for n in ("kubectl", "crictl", "ctr")} == \
        {"kubectl": "k3s", "crictl": "k3s", "ctr": "k3s"}

    with Guest(next(out.glob("*.iso")), memory_mb=768, firmware="direct") as guest:
        assert "errors=0" in guest.wait_for(READY, BOOT_TIMEOUT).group(0), guest.tail()
        guest.wait_ssh(key)

        def sh(cmd: str, timeout: float = 60) -> str:
            return guest.ssh(cmd, key, timeout=timeout)

        # Runtime phase: started, failed once, restarted after a backoff, now running.
        sh("for i in $(seq 90); do [ \"$(cat /run/k3s-stand-in.runs 2>/dev/null)\" = 2 ] && break; sleep 1; done")
        assert sh("cat /run/k3s-stand-in.argv") == "run 1: server --disable=traefik\nrun 2: server --disable=traefik"
        assert sh("cat /run/k3s-stand-in.env") == "HTTP_PROXY=http://proxy.invalid:3128"
        log = sh("cat /run/basalt/log/k3s.log")
        assert log.splitlines() == ["stand-in: first run exits 1", "stand-in: running"], log
        status = json.loads(sh("basalt status --json"))
        assert status["services"]["k3s"]["state"] == "running" and status["services"]["k3s"]["failures"] == 1
        assert status["errors"] == []

        conf = json.loads(sh("cat /etc/rancher/k3s/config.yaml"))
        assert conf == {"token": "cluster-secret", "write-kubeconfig-mode": "0644",
                        "node-label": ["basalt.io/mode=live", "basalt.io/slot=live", "basalt.io/version=0.1.0",
                                       "site=depot-7"],
                        "node-taint": ["dedicated=edge:NoSchedule"]}
        d = "/var/lib/rancher/k3s"
        assert sh(f"ls {d}/server/manifests") == ("basalt-00-configmap-site.yaml\nbasalt-apps-controller.yaml\n"
                                                  "basalt-apps-tls.yaml\nbasalt-chart-site-app.yaml")
        # HTTPS for apps by default: the node made its site CA with the image's openssl, kept it
        # private on the state partition, and gave it to k3s as the controller's Secret
        assert sh("stat -c '%a %U' /var/lib/basalt/apps-ca /var/lib/basalt/apps-ca/ca.key "
                  f"{d}/server/manifests/basalt-apps-tls.yaml") == "700 root\n600 root\n600 root"
        site_ca = sh("cat /var/lib/basalt/apps-ca/ca.crt")
        tls_docs = [json.loads(x) for x in sh(f"cat {d}/server/manifests/basalt-apps-tls.yaml").split("---\n")
                    if x.strip()]
        assert [(x["kind"], x["metadata"]["name"]) for x in tls_docs] == [("ConfigMap", "basalt-apps"),
                                                                         ("Secret", "basalt-site-ca")]
        assert tls_docs[0]["data"] == {"tls": "site-ca", "ca.crt": site_ca + "\n"}
        assert "CN = Basalt site CA" in subprocess.run(["openssl", "x509", "-noout", "-subject"], input=site_ca,
                                                         capture_output=True, text=True, check=True).stdout
        assert sh(f"readlink {d}/agent/images/basalt-apps-controller.tar") == \
            "/usr/lib/basalt/k3s/images/basalt-apps-controller.tar"  # built by the builder, imported by k3s
        chart = json.loads(sh(f"cat {d}/server/manifests/basalt-chart-site-app.yaml"))
        assert chart["spec"]["chart"] == "https://%{KUBERNETES_API}%/static/charts/site-app-1.0.0.tgz"
        assert sh(f"tar -tzf {d}/server/static/charts/site-app-1.0.0.tgz") == "site-app/Chart.yaml"
        assert sh(f"sha256sum < {d}/agent/images/k3s-airgap-images-amd64.tar.zst").split()[0] == \
            hashlib.sha256(airgap).hexdigest()
        assert sh("readlink /etc/rancher/node") == "/var/lib/rancher/node"
        doctor = sh("basalt doctor")
        assert "OK    k3s binary: /usr/bin/k3s (v1.34.2+k3s1)" in doctor
        assert doctor.endswith("ready for k3s and containers")

        # A changed config restarts k3s with the new files (the same arguments).
        sh("printf 'k3os:\\n  labels: {site: depot-8}\\n' > /var/lib/basalt/config.yaml")
        sh("basalt config apply", timeout=120)
        sh("for i in $(seq 60); do [ \"$(cat /run/k3s-stand-in.runs)\" = 3 ] && break; sleep 1; done")
        assert sh("cat /run/k3s-stand-in.runs") == "3"
        assert "site=depot-8" in json.loads(sh("cat /etc/rancher/k3s/config.yaml"))["node-label"]
        assert sh("cat /var/lib/basalt/apps-ca/ca.crt") == site_ca  # the same CA after the change: kept


def test_the_apps_controller_image_issues_certificates_with_its_own_openssl(stand_in_build: StandIn,
                                                                          tmp_path: Path) -> None:
    """The controller's image as k3s imports it from this image (no boot needed): its layer holds
    openssl, and the controller's code issues a certificate with it in a chroot (none of the host's);
    the mDNS announcer's library is there too."""
    archive = stand_in_build.out / "rootfs" / "root" / "usr/lib/basalt/k3s/images" / deploy.IMAGE_FILE
    layer = tmp_path / "layer"
    appsimage.unpack(archive, layer)
    assert (layer / "usr/bin/openssl").is_file()
    code = ("from agent.apps import tls\n"
            "ca, key = tls.make_ca('test CA')\n"
            "cert, _ = tls.issue(ca, key, ['shop.local', 'v1-shop.local'])\n"
            "open('/tmp/cert.pem', 'wb').write(cert)\n"
            "open('/tmp/ca.pem', 'wb').write(ca)\n")
    subprocess.run(["/usr/sbin/chroot", str(layer), "/usr/bin/python3", "-S", "-c", code],
                   env=appsimage.CHROOT_ENV, check=True, timeout=60)
    checked = subprocess.run(["openssl", "verify", "-CAfile", str(layer / "tmp/ca.pem"), "-purpose", "sslserver",
                              str(layer / "tmp/cert.pem")], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.strip().endswith(": OK"), checked
    # the mDNS announcer (the DaemonSet basalt-mdns) imports Debian's python3-zeroconf from the layer
    mdns = next(o for o in deploy.objects("0.1.0") if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in mdns["containers"][0]["env"] if "value" in e}
    version = subprocess.run(["/usr/sbin/chroot", str(layer), "/usr/bin/python3", "-S", "-c",
                              "import agent.apps.mdns, zeroconf; print(zeroconf.__version__)"],
                             env={**appsimage.CHROOT_ENV, **env}, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == "0.47.3", version


JOIN_TOKEN = "K10-join-token-7f3a91"


def test_a_k3s_image_stamped_with_a_sites_join_settings_joins_as_an_agent(stand_in_build: StandIn, key: Path,
                                                                          tmp_path: Path, qemu_available: None) -> None:
    """The fleet path (builder/fleet/stamp.py): the same k3s image, stamped after the build with one
    site's config, which layers over the baked one and turns this node into an agent."""
    site = tmp_path / "join.yaml"
    site.write_text(f"hostname: depot-join\nk3os:\n  server_url: https://10.0.2.100:6443\n  token: {JOIN_TOKEN}\n"
                    f"  k3s_args: [--with-node-id]\n  labels: {{site: depot-join}}\n"
                    f"k3s:\n  manifests: []\n  helm_charts: []\n")
    iso = next(stand_in_build.out.glob("*.iso"))
    before = hashlib.sha256(iso.read_bytes()).hexdigest()
    stamped = stamp.configure(iso, site, tmp_path / "stamped", "depot-join")
    assert hashlib.sha256(iso.read_bytes()).hexdigest() == before
    with Guest(stamped, memory_mb=768, firmware="direct") as guest:
        assert "errors=0" in guest.wait_for(READY, BOOT_TIMEOUT).group(0), guest.tail()
        guest.wait_ssh(key)

        def sh(cmd: str, timeout: float = 60) -> str:
            return guest.ssh(cmd, key, timeout=timeout)

        assert sh("hostname") == "depot-join"
        sh("for i in $(seq 90); do [ \"$(cat /run/k3s-stand-in.runs 2>/dev/null)\" = 2 ] && break; sleep 1; done")
        assert sh("cat /run/k3s-stand-in.argv") == "run 1: agent --with-node-id\nrun 2: agent --with-node-id"
        assert sh("stat -c '%a %U' /etc/rancher/k3s/config.yaml") == "600 root"
        conf = json.loads(sh("cat /etc/rancher/k3s/config.yaml"))
        assert conf == {"server": "https://10.0.2.100:6443", "token": JOIN_TOKEN, "write-kubeconfig-mode": "0644",
                        "node-label": ["basalt.io/mode=live", "basalt.io/slot=live", "basalt.io/version=0.1.0",
                                       "site=depot-join"],
                        "node-taint": ["dedicated=edge:NoSchedule"]}
        status = json.loads(sh("basalt status --json"))
        assert status["site"] == {"site": "depot-join", "by": "stamped", "macs": [], "serials": []}
        assert status["errors"] == [] and status["services"]["k3s"]["state"] == "running"
        shown = sh("basalt config show")
        assert "k3os.token = '<redacted>'    # /run/basalt/site/config.yaml" in shown.splitlines(), shown
        # the token is in force on the node, in root's files only: not in what anyone reads
        assert JOIN_TOKEN not in shown and JOIN_TOKEN not in guest.console()
        assert JOIN_TOKEN not in sh("cat /run/basalt/log/*.log /run/basalt/agent.log 2>/dev/null; true")
    assert JOIN_TOKEN not in (stamped.parent / "manifest.json").read_text()


@pytest.mark.skipif(not os.environ.get("BASALT_K3S_BINARY"),
                    reason="BASALT_K3S_BINARY is not set: no real k3s binary here (GitHub releases are unreachable)")
def test_real_k3s_node_becomes_ready_and_deploys_a_manifest(key: Path, tmp_path: Path, qemu_available: None) -> None:
    binary = Path(os.environ["BASALT_K3S_BINARY"])
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(v\d+\.\d+\.\d+\+k3s\d+)", version)
    assert match, f"{binary} --version printed no k3s version: {version!r}"
    defs = tmp_path / "defs"
    defs.mkdir()
    # The operator vouches for this binary: pin its checksum, as an air-gapped site would.
    (defs / "k3s-e2e.yaml").write_text(f"extends: x86_64-k3s\nname: k3s-e2e\nk3s:\n  enabled: true\n"
                                       f"  version: {match.group(1)}\n  sha256: {{x86_64: {digest}}}\n")
    pub = key.with_suffix(".pub").read_text().strip()
    (tmp_path / "site.yaml").write_text(site_config(pub).replace("  helm_charts:\n  - {name: site-app, bundled: "
                                                                 "site-app-1.0.0.tgz, target_namespace: apps, "
                                                                 "create_namespace: true}\n", ""))
    out = pipeline.build(plan.plan(str(defs / "k3s-e2e.yaml"), str(tmp_path / "site.yaml"), k3s_binary=str(binary)),
                         out=tmp_path / "out")
    with Guest(next(out.glob("*.iso")), memory_mb=2048, cpus=2) as guest:
        guest.wait_for(READY, BOOT_TIMEOUT)
        guest.wait_ssh(key)
        deadline = time.monotonic() + 900
        node: dict[str, object] = {}
        while time.monotonic() < deadline:
            text = guest.ssh("k3s kubectl get nodes -o json 2>/dev/null", key, check=False, timeout=120)
            items = json.loads(text).get("items", []) if text.startswith("{") else []
            if items and any(c["type"] == "Ready" and c["status"] == "True"
                             for c in items[0]["status"]["conditions"]):
                node = items[0]
                break
            time.sleep(10)
        assert node, "the k3s node did not become Ready within 15 minutes:\n" + guest.ssh(
            "tail -n 40 /run/basalt/log/k3s.log", key, check=False)
        labels = node["metadata"]["labels"]  # type: ignore[index]
        assert labels["basalt.io/version"] == "0.1.0" and labels["basalt.io/slot"] == "live"
        assert labels["site"] == "depot-7"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            got = guest.ssh("k3s kubectl get configmap site -o jsonpath='{.data.site}'", key, check=False)
            if got == "depot-7":
                break
            time.sleep(5)
        assert got == "depot-7"
