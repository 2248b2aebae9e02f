"""k3s from config: role, config.yaml, registries.yaml, manifests and HelmCharts, generated from
config fixtures through the node's own loader, applied into a scratch root, and checked offline
against the Kubernetes OpenAPI schema (kubernetes-validate) and the HelmChart CRD's fields."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.config.validate import check_text
from agent.errors import BasaltError
from agent.modules import actions, k3s, plans
from builder import manifests, plan

FACTS = {"k3s": True, "version": "0.1.0", "slot": "a", "mode": "installed", "k3s_images": [],
         "k3s_charts": ["site-app-1.0.0.tgz"]}
KUBERNETES = kubernetes_validate.utils.latest_version()


def load(text: str) -> dict[str, Any]:
    loaded = check_text(text)
    assert loaded.problems == (), [p.render() for p in loaded.problems]
    return loaded.value


def written(actions: list[tuple[Any, ...]]) -> dict[str, bytes]:
    return {a[1]: a[2] for a in actions if a[0] == "write"}


def boot_and_runtime(config: dict[str, Any], facts: dict[str, Any] = FACTS) -> tuple[list[Any], list[Any]]:
    boot = dict(plans.plan_phase("boot", config, facts)).get("k3s", [])
    runtime = dict(plans.plan_phase("runtime", config, facts)).get("k3s_service", [])
    return boot, runtime


def test_no_config_is_a_single_node_server_labelled_with_version_and_slot() -> None:
    boot, runtime = boot_and_runtime({})
    conf = json.loads(written(boot)["/etc/rancher/k3s/config.yaml"])
    assert conf == {"node-label": ["basalt.io/mode=installed", "basalt.io/slot=a", "basalt.io/version=0.1.0"]}
    (service,) = runtime
    assert service[:3] == ("service", "k3s", ["/usr/bin/k3s", "server"])
    assert ("symlink", "/var/lib/rancher/node", "/etc/rancher/node") in boot  # node password survives reboots


def test_agent_role_join_labels_taints_environment() -> None:
    config = load("""
k3os:
  server_url: https://10.0.0.1:6443
  token: K10abc::server:secret
  labels: {site: depot-7, basalt.io/slot: overridden-by-user}
  taints: ["dedicated=edge:NoSchedule"]
  k3s_args: [--node-ip, 10.0.0.7]
  environment: {HTTP_PROXY: "http://proxy:3128"}
""")
    boot, runtime = boot_and_runtime(config)
    conf = json.loads(written(boot)["/etc/rancher/k3s/config.yaml"])
    assert conf["server"] == "https://10.0.0.1:6443" and conf["token"] == "K10abc::server:secret"
    assert conf["node-label"] == ["basalt.io/mode=installed", "basalt.io/slot=overridden-by-user",
                                  "basalt.io/version=0.1.0", "site=depot-7"]
    assert conf["node-taint"] == ["dedicated=edge:NoSchedule"]
    (_, _, argv, env), = runtime
    assert argv == ["/usr/bin/k3s", "agent", "--node-ip", "10.0.0.7"]
    assert env["HTTP_PROXY"] == "http://proxy:3128" and len(env["BASALT_K3S_CONFIG_CRC"]) == 8


def test_explicit_role_in_k3s_args_and_native_config_merge() -> None:
    config = load("""
k3os:
  k3s_args: [server, --cluster-init]
  labels: {zone: a}
  token: cluster-secret
k3s:
  config:
    write-kubeconfig-mode: "0644"
    node-label: [extra=yes]
    token: from-native-config
    disable: [traefik]
""")
    boot, runtime = boot_and_runtime(config)
    conf = json.loads(written(boot)["/etc/rancher/k3s/config.yaml"])
    assert conf["write-kubeconfig-mode"] == "0644" and conf["disable"] == ["traefik"]
    assert conf["token"] == "from-native-config"  # native config wins
    assert conf["node-label"][-2:] == ["zone=a", "extra=yes"]  # lists add up
    assert runtime[0][2] == ["/usr/bin/k3s", "server", "--cluster-init"]


def test_a_config_change_restarts_k3s() -> None:
    _, first = boot_and_runtime(load("k3s: {config: {disable: [traefik]}}"))
    _, second = boot_and_runtime(load("k3s: {config: {disable: [servicelb]}}"))
    assert first[0][2] == second[0][2] and first[0][3] != second[0][3]  # same argv, different environment


def test_joining_without_a_token_is_a_config_error() -> None:
    loaded = check_text("k3os:\n  server_url: https://10.0.0.1:6443\n", "site.yaml")
    assert [p.render() for p in loaded.problems] == [
        "site.yaml:2: k3os.server_url: an agent joining a server needs a token\n"
        "hint: add k3os.token (the server's /var/lib/rancher/k3s/server/token)"]


def test_registries_yaml() -> None:
    config = load("""
k3s:
  registries:
    mirrors: {docker.io: {endpoint: ["https://mirror.site:5000"]}}
    configs: {"mirror.site:5000": {auth: {username: u, password: p}}}
""")
    boot, _ = boot_and_runtime(config)
    reg = yaml.safe_load(written(boot)["/etc/rancher/k3s/registries.yaml"])  # JSON is YAML: k3s reads it so
    assert reg == {"mirrors": {"docker.io": {"endpoint": ["https://mirror.site:5000"]}},
                   "configs": {"mirror.site:5000": {"auth": {"username": "u", "password": "p"}}}}


SITE = """
k3s:
  manifests:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: default, labels: {app: web}}
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
          - name: web
            image: registry.site/web:1.2
            ports: [{containerPort: 8080}]
            resources: {limits: {memory: 64Mi}}
  - |
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: site
    data:
      region: north
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web
    spec:
      selector: {app: web}
      ports: [{port: 80, targetPort: 8080}]
  - file: /etc/basalt/extra.yaml
  helm_charts:
  - name: ingress
    chart: ingress-nginx
    repo: https://charts.site/ingress
    version: 4.10.1
    targetNamespace: ingress
    create_namespace: true
    values: {controller: {replicaCount: 1}}
    set: {controller.kind: DaemonSet, controller.hostPort.enabled: true, replicas: 2}
  - name: site-app
    bundled: site-app-1.0.0.tgz
"""


def test_manifests_and_charts_are_written_and_valid_kubernetes(tmp_path: Path) -> None:
    boot, _ = boot_and_runtime(load(SITE))
    files = written(boot)
    names = sorted(os.path.basename(p) for p in files if p.startswith(k3s.MANIFESTS))
    assert names == ["basalt-00-deployment-web.yaml", "basalt-01-inline.yaml", "basalt-chart-ingress.yaml",
                     "basalt-chart-site-app.yaml"]
    assert ("copy", "/etc/basalt/extra.yaml", f"{k3s.MANIFESTS}/basalt-02-extra.yaml", 0o600) in boot
    docs = [d for p, data in files.items() if p.startswith(k3s.MANIFESTS) for d in yaml.safe_load_all(data)]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "HelmChart", "HelmChart", "Service"]
    for doc in docs:
        if doc["kind"] == "HelmChart":
            errors = list(manifests.helmchart_validator().iter_errors(doc))
            assert errors == [], [e.message for e in errors]
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any schema error
    charts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HelmChart"}
    assert charts["ingress"]["spec"] == {
        "chart": "ingress-nginx", "repo": "https://charts.site/ingress", "version": "4.10.1",
        "targetNamespace": "ingress", "createNamespace": True,
        "valuesContent": json.dumps({"controller": {"replicaCount": 1}}, indent=2),
        "set": {"controller.kind": "DaemonSet", "controller.hostPort.enabled": "true", "replicas": 2}}
    assert charts["site-app"]["spec"] == {"chart": "https://%{KUBERNETES_API}%/static/charts/site-app-1.0.0.tgz"}
    assert ("symlink", "/usr/lib/basalt/k3s/charts/site-app-1.0.0.tgz",
            f"{k3s.STATIC_CHARTS}/site-app-1.0.0.tgz") in boot


def test_apply_into_a_scratch_root_prunes_what_is_no_longer_configured(tmp_path: Path) -> None:
    (tmp_path / "etc/basalt").mkdir(parents=True)
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\n")
    (tmp_path / "etc/basalt/extra.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: extra}\n")
    (tmp_path / "usr/lib/basalt/k3s/charts").mkdir(parents=True)
    (tmp_path / "usr/lib/basalt/k3s/charts/site-app-1.0.0.tgz").write_bytes(b"\x1f\x8b chart")
    manifests_dir = tmp_path / k3s.MANIFESTS.lstrip("/")
    manifests_dir.mkdir(parents=True)
    (manifests_dir / "basalt-07-old.yaml").write_text("stale")
    (manifests_dir / "operator-own.yaml").write_text("kept")
    config = load(SITE.replace("/etc/basalt/extra.yaml", str(tmp_path / "etc/basalt/extra.yaml")))
    boot, _ = boot_and_runtime(config)
    assert actions.apply(boot, lambda argv: 0, root=str(tmp_path)) == []
    assert sorted(os.listdir(manifests_dir)) == [
        "basalt-00-deployment-web.yaml", "basalt-01-inline.yaml", "basalt-02-extra.yaml", "basalt-chart-ingress.yaml",
        "basalt-chart-site-app.yaml", "operator-own.yaml"]
    assert (manifests_dir / "basalt-02-extra.yaml").read_text().endswith("name: extra}\n")
    conf = tmp_path / "etc/rancher/k3s/config.yaml"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert os.readlink(tmp_path / "etc/rancher/node") == "/var/lib/rancher/node"


def test_agents_do_not_deploy_manifests() -> None:
    config = load("k3os: {server_url: 'https://s:6443', token: t}\nk3s:\n  manifests:\n  - "
                  "{apiVersion: v1, kind: Namespace, metadata: {name: x}}\n")
    boot, _ = boot_and_runtime(config)
    assert not any(a[0] == "write" and a[1].startswith(k3s.MANIFESTS) for a in boot)
    assert ("error", "k3s", "k3s.manifests and k3s.helm_charts are deployed by servers; this node is an agent, "
                            "so they are not written") in boot


@pytest.mark.parametrize(("text", "facts", "expected"), [
    ("k3s: {enabled: false}", FACTS, ([("stop", "k3s")], [])),
    ("hostname: plain", {**FACTS, "k3s": False}, ([], [])),
    ("k3os: {labels: {a: b}}", {**FACTS, "k3s": False},
     ([("error", "k3s", "this image has no k3s (build one with k3s.enabled in its image definition)")], [])),
    ("k3s:\n  helm_charts: [{name: x, bundled: missing.tgz}]", FACTS,
     ("error", "k3s", "helm chart x: no bundled chart 'missing.tgz' in this image (bundled: site-app-1.0.0.tgz)")),
])
def test_disabled_absent_and_missing(text: str, facts: dict[str, Any], expected: Any) -> None:
    boot, runtime = boot_and_runtime(load(text), facts)
    if isinstance(expected, tuple) and isinstance(expected[0], str):
        assert expected in boot
    else:
        assert (boot, runtime) == expected


def test_build_time_check_points_at_the_bad_manifest_line(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("""hostname: edge
k3s:
  manifests:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      replicas: three
      selector: {matchLabels: {app: web}}
      template: {metadata: {labels: {app: web}}, spec: {containers: [{name: w, image: w}]}}
  - apiVersion: helm.cattle.io/v1
    kind: HelmChart
    metadata: {name: typo, namespace: kube-system}
    spec: {chart: x, targetNamespce: apps}
""")
    with pytest.raises(BasaltError) as exc:
        plan.load_site_config(str(site))
    rendered = [p.render() for p in exc.value.problems]
    assert rendered[0].startswith(f"{site}:4: k3s.manifests[0]: Deployment web: spec.replicas: 'three' is not of "
                                  "type 'integer'")
    assert "\nhint: checked offline against the Kubernetes" in rendered[0]
    assert manifests.kubernetes_version("v1.34.2+k3s1") == "1.34.0"  # the pinned k3s's API, when known
    assert manifests.kubernetes_version("v0.1.0+k3s1") == manifests.kubernetes_version()  # else the newest
    assert rendered[1].startswith(f"{site}:11: k3s.manifests[1]: HelmChart typo: spec: Additional properties are "
                                  "not allowed ('targetNamespce' was unexpected)")  # against the CRD's fields


def test_unknown_custom_resources_pass_and_bad_yaml_text_fails(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("k3s:\n  manifests:\n  - {apiVersion: example.io/v1, kind: Widget, metadata: {name: w}}\n"
                    "  - \"kind: [unclosed\"\n")
    with pytest.raises(BasaltError) as exc:
        plan.load_site_config(str(site))
    (problem,) = exc.value.problems
    assert problem.render().startswith(f"{site}:4: k3s.manifests[1]: the manifest text is not YAML")
