"""``basalt app`` and the controller's loop over HTTP, against tests/fake_kube.py (a stand-in for the
API server: no k3s can run here). The clock is the test's: each tick is given its time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kube import FakeKube

from agent.apps import cli, controller, kube


def basalt_app(kubeconfig: Path, *argv: str) -> int:
    return cli.standalone(["--kubeconfig", str(kubeconfig), *argv])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


def test_run_stage_promote_through_the_api_and_the_controller(api: FakeKube, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    conf = api.kubeconfig(tmp_path / "kubeconfig")
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "shop", "--port", "80") == 0
    assert capsys.readouterr().out == "shop: revision v1 at http://shop.local/\n"
    assert api.weights("shop") == {"v1": 100}
    assert basalt_app(conf, "stage", "shop", "nginx:1.28") == 0
    assert api.weights("shop") == {"v1": 100, "v2": 0}
    assert basalt_app(conf, "promote", "shop", "v2", "--increment", "25", "--interval", "10s") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "shop: promoting v2, 25 points every 10s (4 steps, about 30s)"
    client = kube.Client(kube.credentials(str(conf)))
    seen, now = [], 1000.0
    for _ in range(8):
        controller.tick(client, now)
        seen.append(api.weights("shop")["v2"])
        now += 5.0
    assert seen == [25, 25, 50, 50, 75, 75, 100, 100]  # one step per 10 s interval
    assert api.get("Deployment", "shop-v1")["spec"]["replicas"] == 0  # at 0% after serving: scaled down
    notes = api.get("TraefikService", "shop")["metadata"]["annotations"]
    assert notes["basalt.io/rollout"] == "idle" and notes["basalt.io/served"] == "v1,v2"
    assert [line for line in capsys.readouterr().out.splitlines() if '"promoted v2"' in line]  # the log says it
    assert basalt_app(conf, "ps") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["APP", "REVISION", "IMAGE", "WEIGHT", "READY", "SCALE", "URL", "ROLLOUT"]
    assert table[1].split() == ["shop", "v1", "nginx:1.27", "0%", "0/0", "1", "http://v1-shop.local/"]
    assert table[2].split() == ["shop", "v2", "nginx:1.28", "100%", "1/1", "1", "http://v2-shop.local/"]
    assert table[3].split() == ["shop", "*", "http://shop.local/", "idle"]


def test_a_broken_revision_is_held_then_rolled_back_and_scaled_down(api: FakeKube, tmp_path: Path) -> None:
    conf = api.kubeconfig(tmp_path / "kubeconfig")
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "shop", "--port", "80") == 0
    assert basalt_app(conf, "stage", "shop", "nginx:broken") == 0
    assert basalt_app(conf, "promote", "shop", "v2") == 0
    client = kube.Client(kube.credentials(str(conf)))
    controller.tick(client, 0.5)
    notes = api.get("TraefikService", "shop")["metadata"]["annotations"]
    assert notes["basalt.io/message"] == "held: v2 not Ready" and api.weights("shop") == {"v1": 100, "v2": 0}
    controller.tick(client, 100.0)
    assert api.weights("shop") == {"v1": 100, "v2": 0}  # never any weight to the unready revision
    controller.tick(client, 121.0)  # unready for more than 120 s
    notes = api.get("TraefikService", "shop")["metadata"]["annotations"]
    assert notes["basalt.io/rollout"] == "rolled-back"
    assert notes["basalt.io/message"] == "rolled back: v2 was not Ready for 120s (more than 120s)"
    assert api.weights("shop") == {"v1": 100, "v2": 0}


def test_a_command_and_a_step_at_once_the_later_write_loses_and_says_so(api: FakeKube, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    conf = api.kubeconfig(tmp_path / "kubeconfig")
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "shop", "--port", "80") == 0
    assert basalt_app(conf, "stage", "shop", "nginx:1.28") == 0
    assert basalt_app(conf, "promote", "shop", "v2") == 0
    client = kube.Client(kube.credentials(str(conf)))
    stale = client.list("TraefikService", "default")[0]
    controller.tick(client, 10.0)  # v1=95 v2=5, a new resourceVersion
    state = cli.resources.read([stale, *client.list("Deployment", "default")], "shop", "default")
    assert state is not None
    with pytest.raises(kube.Conflict):
        controller.write_or_raise(client, stale, state, state.rollout)
    assert api.weights("shop") == {"v1": 95, "v2": 5}
    capsys.readouterr()
    assert basalt_app(conf, "weight", "shop", "v1=100") == 0  # a fresh read: it goes through
    controller.tick(client, 11.0)
    assert api.weights("shop") == {"v1": 100, "v2": 0}


def test_logs_of_an_app_and_of_one_revision(api: FakeKube, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    conf = api.kubeconfig(tmp_path / "kubeconfig")
    api.add_pod("shop", "v1", "shop-v1-aaa", "GET / 200\nGET /x 404\n")
    api.add_pod("shop", "v2", "shop-v2-bbb", "started\n")
    api.add_pod("cart", "v1", "cart-v1-ccc", "not shop's\n")
    assert basalt_app(conf, "logs", "shop") == 0
    assert capsys.readouterr().out == "shop-v1-aaa: GET / 200\nshop-v1-aaa: GET /x 404\nshop-v2-bbb: started\n"
    assert basalt_app(conf, "logs", "shop", "v2") == 0
    assert capsys.readouterr().out == "shop-v2-bbb: started\n"
    assert basalt_app(conf, "logs", "shop", "v3") == 1
    assert capsys.readouterr().err == "no pods for shop v3\nhint: basalt app ps\n"


def test_no_cluster_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube, "KUBECONFIGS", ())
    assert cli.standalone(["ps"]) == 1
    assert capsys.readouterr().err == ("no cluster to talk to: no service account, no kubeconfig\nhint: give "
                                       "--kubeconfig FILE (on a server node: /etc/rancher/k3s/k3s.yaml), or "
                                       "--dry-run to print the objects\n")
