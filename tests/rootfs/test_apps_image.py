"""The apps controller's container image (builder/media/appsimage.py), made from a real root tree and run:
its layer unpacked and the controller started in it with chroot (the image's own Python and
libraries, nothing from the host), stepping a promotion against tests/fake_kube.py (an API stand-in:
no k3s here) in real time; its resident memory once idle is read from /proc."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from fake_kube import FakeKube

from agent.apps import cli, deploy
from builder import manifests
from builder.media import appsimage


@pytest.fixture(scope="module")
def image(built_iso: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    work = tmp_path_factory.mktemp("apps-image")
    archive = work / deploy.IMAGE_FILE
    appsimage.build(built_iso / "rootfs" / "root", archive, "0.1.0", "amd64")
    return archive, work / "layer", appsimage.unpack(archive, work / "layer")


def test_the_image_is_reproducible_and_small(image: tuple[Path, Path, dict[str, object]], built_iso: Path,
                                             tmp_path: Path) -> None:
    archive, layer, meta = image
    again = tmp_path / "again.tar"
    appsimage.build(built_iso / "rootfs" / "root", again, "0.1.0", "amd64")
    assert again.read_bytes() == archive.read_bytes()
    assert archive.stat().st_size < 40 << 20, archive.stat().st_size
    config = meta["config"]
    assert isinstance(config, dict) and config["architecture"] == "amd64"
    assert config["config"]["Cmd"] == ["/usr/bin/python3", "-S", "-m", "agent.apps.controller"]
    index = meta["index"]
    assert isinstance(index, dict)
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == deploy.image("0.1.0")
    assert (layer / "app/agent/apps/controller.py").is_file() and not (layer / "app/agent/pid1/init.py").exists()


def test_the_controller_runs_in_its_image_and_steps_a_promotion(image: tuple[Path, Path, dict[str, object]],
                                                                 tmp_path: Path) -> None:
    _, layer, _ = image
    with FakeKube() as api:
        conf = api.kubeconfig(layer / "kubeconfig.json")
        assert cli.standalone(["--kubeconfig", str(conf), "run", "nginx:1", "--name", "shop", "--port", "80"]) == 0
        assert cli.standalone(["--kubeconfig", str(conf), "stage", "shop", "nginx:2"]) == 0
        log = (tmp_path / "controller.log").open("wb")
        proc = subprocess.Popen(appsimage.chroot_argv(layer), stdout=log, stderr=subprocess.STDOUT,
                                env={**appsimage.CHROOT_ENV, "KUBECONFIG": "/kubeconfig.json",
                                     "BASALT_ACTIVATOR_LISTEN": "127.0.0.1:0"})
        try:
            assert cli.standalone(["--kubeconfig", str(conf), "promote", "shop", "v2", "--increment", "50",
                                   "--interval", "1s"]) == 0
            deadline = time.monotonic() + 60
            while api.weights("shop") != {"v1": 0, "v2": 100} and time.monotonic() < deadline:
                assert proc.poll() is None, (tmp_path / "controller.log").read_text()
                time.sleep(0.2)
            assert api.weights("shop") == {"v1": 0, "v2": 100}, (tmp_path / "controller.log").read_text()
            time.sleep(12)  # an idle tick or more
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kib = int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])
            assert rss_kib < 30 * 1024, f"controller RSS {rss_kib} KiB"
        finally:
            proc.kill()
            proc.wait(10)
            log.close()
        events = [json.loads(x) for x in (tmp_path / "controller.log").read_text().splitlines()]
        steps = [e["message"] for e in events if e["event"] == "step"]
        assert steps == ["weights v1=50 v2=50", "weights v1=0 v2=100", "promoted v2", "scaled v1 down (0%)"]
        assert api.get("Deployment", "shop-v1")["spec"]["replicas"] == 0


def test_the_controller_manifest_is_valid_kubernetes() -> None:
    for obj in deploy.objects("0.1.0"):
        assert manifests.object_problems(obj, manifests.kubernetes_version("v1.34.2+k3s1")) == [], obj["kind"]
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in deploy.objects("0.1.0")}
    dep = by_kind[("Deployment", "basalt-apps-controller")]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == ("docker.io/basalt/apps-controller:0.1.0", "Never")
    # the mDNS announcer: every node, the host's network, the same image, reading TraefikServices only
    mdns = by_kind[("DaemonSet", "basalt-mdns")]["spec"]["template"]["spec"]
    assert mdns["hostNetwork"] is True and mdns["tolerations"] == [{"operator": "Exists"}]
    assert mdns["containers"][0]["image"] == container["image"]
    assert mdns["containers"][0]["command"] == ["/usr/bin/python3", "-S", "-m", "agent.apps.mdns"]
    assert by_kind[("ClusterRole", "basalt-mdns")]["rules"] == [
        {"apiGroups": ["traefik.io"], "resources": ["traefikservices"], "verbs": ["list"]}]
