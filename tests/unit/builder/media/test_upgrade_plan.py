"""The Kubernetes side of upgrades, offline: the system-upgrade-controller manifests against the
Kubernetes OpenAPI schema, the generated Plan against the Plan CRD's own openAPIV3Schema (read in
place from ../shared/reference/crds, never copied), and where the node writes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agent.modules import k3s
from builder import manifests
from builder.media import suc

ROOT = Path(__file__).resolve().parents[4]
PLAN_CRD = ROOT.parent / "shared" / "reference" / "crds" / "upgrade.cattle.io_plans.yaml"
CONFIG = {"basalt": {"upgrade": {"plan": {"image": "registry.example/basalt/x86_64-k3s", "version": "2.1",
                                          "concurrency": 2}}}}
FACTS = {"k3s": True, "upgrade_controller": True, "version": "1", "slot": "a", "mode": "installed"}


@pytest.fixture(scope="module")
def plan_schema() -> dict[str, Any]:
    if not PLAN_CRD.is_file():
        pytest.skip(f"{PLAN_CRD} is absent: the Plan CRD (system-upgrade-controller v0.20.1) is read from there")
    crd = yaml.safe_load(PLAN_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_the_controller_manifests_are_valid_kubernetes_objects() -> None:
    objects = list(yaml.safe_load_all(suc.manifest()))
    assert [o["kind"] for o in objects] == ["Namespace", "ServiceAccount", "ClusterRoleBinding", "ConfigMap",
                                            "Deployment"]
    for obj in objects:
        assert manifests.object_problems(obj) == [], obj["kind"]
    deployment = objects[-1]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "rancher/system-upgrade-controller:v0.20.1"


def test_the_plan_fits_the_plan_crd(plan_schema: dict[str, Any]) -> None:
    plan = k3s.upgrade_plan(CONFIG)
    assert plan is not None
    errors = list(jsonschema.Draft7Validator(plan_schema).iter_errors(plan))
    assert errors == []
    spec = plan["spec"]
    assert (spec["concurrency"], spec["version"]) == (2, "2.1")
    assert spec["upgrade"]["image"] == "registry.example/basalt/x86_64-k3s"
    assert spec["nodeSelector"]["matchExpressions"] == [
        {"key": "basalt.io/upgrade", "operator": "In", "values": ["true"]},
        {"key": "basalt.io/mode", "operator": "In", "values": ["installed"]}]  # live nodes are left out
    assert spec["cordon"] is True and spec["drain"]["ignoreDaemonSets"] is True
    assert spec["upgrade"]["command"] == ["/bin/upgrade-host"]  # the OCI image's entry point
    undrained = k3s.upgrade_plan({"basalt": {"upgrade": {"plan": {**CONFIG["basalt"]["upgrade"]["plan"],
                                                                   "drain": False}}}})
    assert undrained is not None and "drain" not in undrained["spec"]


def test_a_broken_plan_is_caught_by_the_crd_schema(plan_schema: dict[str, Any]) -> None:
    """The schema check can fail: a Plan without its upgrade container is refused."""
    plan = k3s.upgrade_plan(CONFIG)
    assert plan is not None
    del plan["spec"]["upgrade"]
    assert [e.message for e in jsonschema.Draft7Validator(plan_schema).iter_errors(plan)] == \
        ["'upgrade' is a required property"]


def written(actions: list[tuple[Any, ...]]) -> dict[str, Any]:
    return {a[2 if a[0] == "copy" else 1].rsplit("/", 1)[-1]: a for a in actions if a[0] in ("write", "copy")}


def test_a_server_writes_the_controller_and_the_plan_an_agent_neither() -> None:
    files = written(k3s.plan_files(CONFIG, FACTS))
    assert files["basalt-system-upgrade-controller.yaml"] == (
        "copy", "/usr/lib/basalt/k3s/system-upgrade-controller.yaml",
        "/var/lib/rancher/k3s/server/manifests/basalt-system-upgrade-controller.yaml", 0o600)
    assert json.loads(files["basalt-upgrade-plan.yaml"][2]) == k3s.upgrade_plan(CONFIG)
    agent = {"basalt": {**CONFIG["basalt"], "server_url": "https://10.0.0.1:6443", "token": "t"}}
    assert not any("upgrade" in name for name in written(k3s.plan_files(agent, FACTS)))


def test_a_plan_on_an_image_without_the_controller_is_an_error() -> None:
    actions = k3s.plan_files(CONFIG, {**FACTS, "upgrade_controller": False})
    assert ("error", "k3s", "upgrade.plan needs the system-upgrade-controller, which this image does not ship "
            "(build it with upgrade.kubernetes: true)") in actions
    assert "basalt-upgrade-plan.yaml" not in written(actions)
