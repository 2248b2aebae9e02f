"""k3s from config: role, native config, registries, manifests, Helm charts, the service.

Pure plans (``plan_files`` in the boot phase, ``plan_service`` at runtime, once the
network is up), in the same action language as ``modules``. Files are written as JSON,
which is YAML too: the agent need not import a YAML emitter on the boot path.

Role, as k3OS: no ``server_url`` → server; ``server_url`` + ``token`` → agent; a first
``k3s_args`` item ``server``/``agent`` decides explicitly.
"""

from __future__ import annotations

import json
from dataclasses import replace

from agent import layout
from agent.config.section import K3S_KEYS, section

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Action = tuple[Any, ...]

BINARY = layout.K3S_BINARY
SHARE = layout.LIB_K3S  # from the image: version, images/, charts/
ETC = "/etc/rancher/k3s"
DATA = "/var/lib/rancher/k3s"
MANIFESTS = DATA + "/server/manifests"
STATIC_CHARTS = DATA + "/server/static/charts"
AIRGAP_IMAGES = DATA + "/agent/images"
NODE_DIR = "/etc/rancher/node"  # k3s keeps the node password here: it must survive reboots
NODE_STATE = "/var/lib/rancher/node"
PREFIX = "basalt-"  # manifests Basalt writes; other files in the directory are left alone
LABEL_DOMAIN = "basalt.io"


def wanted(config: dict[str, Any]) -> bool:
    """Does the config ask for anything k3s-specific (an error on an image without k3s)?"""
    sec = section(config)
    k3s = config.get("k3s", {})
    return k3s.get("enabled", True) and (bool(K3S_KEYS & set(sec))
                                         or bool(set(k3s) - {"enabled"}))


def role_and_argv(config: dict[str, Any]) -> tuple[str, list[str]]:
    sec = section(config)
    args = [str(a) for a in sec.get("k3s_args", [])]
    if args and args[0] in ("server", "agent"):
        return args[0], [BINARY, *args]
    role = "agent" if sec.get("server_url") else "server"
    return role, [BINARY, role, *args]


def labels(config: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    auto = {f"{LABEL_DOMAIN}/version": facts.get("version", "unknown"),
            f"{LABEL_DOMAIN}/slot": facts.get("slot", "live"),
            f"{LABEL_DOMAIN}/mode": facts.get("mode", "live")}
    user = {str(k): str(v) for k, v in section(config).get("labels", {}).items()}
    return [f"{k}={v}" for k, v in sorted({**auto, **user}.items())]


# What this node talks to the API with: a server's admin kubeconfig, an agent's kubelet credentials
# (the node authorizer lets a kubelet read and label its own Node).
KUBECONFIG = {"server": "/etc/rancher/k3s/k3s.yaml", "agent": DATA + "/agent/kubelet.kubeconfig"}


def kubectl(config: dict[str, Any], *args: str) -> list[str]:
    role, _ = role_and_argv(config)
    return [BINARY, "kubectl", "--kubeconfig", KUBECONFIG[role], *args]


def node_ready_argv(config: dict[str, Any], node: str) -> list[str]:
    return kubectl(config, "get", "node", node, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}")


def relabel_argv(config: dict[str, Any], node: str, version: str, slot: str) -> list[str]:
    """The labels k3s sets only at registration (``node-label``), set again after an upgrade commits."""
    return kubectl(config, "label", "node", node, "--overwrite", f"{LABEL_DOMAIN}/version={version}",
                   f"{LABEL_DOMAIN}/slot={slot}")


def k3s_config(config: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """/etc/rancher/k3s/config.yaml: k3OS keys first, then native ``k3s.config`` (which
    wins, except that its node-label/node-taint lists add to ours)."""
    sec = section(config)
    role, _ = role_and_argv(config)
    out: dict[str, Any] = {}
    if role == "agent" and sec.get("server_url"):
        out["server"] = sec["server_url"]
    if sec.get("token"):
        out["token"] = sec["token"]
    out["node-label"] = labels(config, facts)
    if sec.get("taints"):
        out["node-taint"] = list(sec["taints"])
    for key, value in config.get("k3s", {}).get("config", {}).items():
        if key in ("node-label", "node-taint") and key in out:
            out[key] = out[key] + [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            out[key] = value
    return out


def helm_chart(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``helm.cattle.io/v1`` HelmChart for one ``k3s.helm_charts`` entry."""
    spec: dict[str, Any] = {}
    if entry.get("bundled"):
        # k3s serves /var/lib/rancher/k3s/server/static over its API port: no network needed.
        spec["chart"] = f"https://%{{KUBERNETES_API}}%/static/charts/{entry['bundled']}"
    else:
        spec["chart"] = entry["chart"]
    for ours, theirs in (("repo", "repo"), ("version", "version"), ("target_namespace", "targetNamespace"),
                         ("create_namespace", "createNamespace")):
        if ours in entry:
            spec[theirs] = entry[ours]
    if entry.get("values"):
        spec["valuesContent"] = json.dumps(entry["values"], indent=2, sort_keys=True)
    if entry.get("set"):
        spec["set"] = {k: (("true" if v else "false") if isinstance(v, bool) else v) for k, v in entry["set"].items()}
    return {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChart",
            "metadata": {"name": entry["name"], "namespace": "kube-system"}, "spec": spec}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower()).strip("-") or "manifest"


def manifest_files(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(file name, object | YAML text | ("file", path)) for every manifest and chart, in order."""
    k3s = config.get("k3s", {})
    out: list[tuple[str, Any]] = []
    for i, item in enumerate(k3s.get("manifests", [])):
        if isinstance(item, str):
            out.append((f"{PREFIX}{i:02d}-inline.yaml", item))
        elif "file" in item and "kind" not in item:
            base = item["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            out.append((f"{PREFIX}{i:02d}-{_slug(base)}.yaml", ("file", item["file"])))
        else:
            out.append((f"{PREFIX}{i:02d}-{_slug(item['kind'])}-{_slug(item['metadata']['name'])}.yaml", item))
    for entry in k3s.get("helm_charts", []):
        out.append((f"{PREFIX}chart-{_slug(entry['name'])}.yaml", helm_chart(entry)))
    out += app_files(config)
    return out


def apps_controller_files(config: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """The apps controller (agent/apps/deploy.py), when the image ships its container image."""
    from agent.apps import deploy, tls
    if deploy.IMAGE_FILE not in facts.get("k3s_images", []):
        return []
    version = str(facts.get("version", "unknown"))
    out: list[tuple[str, Any]] = [(f"{PREFIX}apps-controller.yaml", deploy.manifest(version))]
    t = app_tls(config)
    if t.get("mode") == "acme":  # Traefik's own resolver, in k3s's chart's values
        out.append((f"{PREFIX}traefik-acme.yaml", tls.helm_chart_config(t["acme_directory"], t["acme_email"])))
    return out


APPS_TLS_MANIFEST = f"{PREFIX}apps-tls.yaml"  # the settings and the site CA's Secret (agent/apps/tls.py)
APPS_CA = layout.VAR_LIB + "/apps-ca"  # the site CA, on the state partition


def app_tls(config: dict[str, Any]) -> dict[str, Any]:
    from agent.apps import tls
    return {"mode": tls.DEFAULT_MODE, **(config.get("app_tls") or {})}


def app_files(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """config.yaml's ``apps:``, as the objects ``basalt app run`` makes (one file each)."""
    if not config.get("apps"):
        return []
    from agent.apps import commands, spec
    out: list[tuple[str, Any]] = []
    mode = app_tls(config)["mode"]
    for fields in config["apps"]:
        app = replace(spec.from_fields(fields), tls=mode)
        for obj in commands.run([], app).apply:
            out.append((f"{PREFIX}app-{app.name}-{_slug(obj['kind'])}-{_slug(obj['metadata']['name'])}.yaml", obj))
    return out


UPGRADE_CONTROLLER = layout.LIB_UPGRADE_CONTROLLER  # in an image built with upgrade.kubernetes
PLAN_NAME = "basalt-os"
PLAN_NAMESPACE = "system-upgrade"
DRAIN_TIMEOUT = "10m"


def upgrade_plan(config: dict[str, Any]) -> dict[str, Any] | None:
    """The system-upgrade-controller Plan from ``upgrade.plan``: nodes that opted in with the label
    basalt.io/upgrade=true, installed ones only (a live node has no slot to write), ``concurrency``
    at a time, cordoned and drained first; the job runs the OCI upgrade image's basalt upgrade
    against the host."""
    plan = section(config).get("upgrade", {}).get("plan")
    if not plan:
        return None
    spec: dict[str, Any] = {
        "concurrency": int(plan.get("concurrency", 1)), "version": str(plan["version"]),
        "serviceAccountName": "system-upgrade", "cordon": True,
        "nodeSelector": {"matchExpressions": [
            {"key": f"{LABEL_DOMAIN}/upgrade", "operator": "In", "values": ["true"]},
            {"key": f"{LABEL_DOMAIN}/mode", "operator": "In", "values": ["installed"]}]},
        "tolerations": [{"operator": "Exists"}],
        "upgrade": {"image": str(plan["image"]), "command": ["/bin/upgrade-host"]},
    }
    if plan.get("drain", True):
        spec["drain"] = {"force": True, "ignoreDaemonSets": True, "deleteEmptydirData": True,
                         "timeout": DRAIN_TIMEOUT}
    return {"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": PLAN_NAME, "namespace": PLAN_NAMESPACE}, "spec": spec}


def upgrade_files(config: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, Any]]:
    """The controller (when the image ships it) and the Plan (when the config has one), as manifests."""
    if not facts.get("upgrade_controller"):
        return []
    out: list[tuple[str, Any]] = [(f"{PREFIX}system-upgrade-controller.yaml", ("file", UPGRADE_CONTROLLER))]
    plan = upgrade_plan(config)
    if plan is not None:
        out.append((f"{PREFIX}upgrade-plan.yaml", plan))
    return out


def plan_files(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """Boot phase: everything k3s reads at start, written before it starts."""
    k3s = config.get("k3s", {})
    if not facts.get("k3s"):
        if wanted(config):
            return [("error", "k3s", "this image has no k3s (build one with k3s.enabled in its image definition)")]
        return []
    if not k3s.get("enabled", True):
        return [("stop", "k3s")]
    role, _ = role_and_argv(config)  # a joining agent without a token is refused by config.semantic
    actions: list[Action] = []
    conf = json.dumps(k3s_config(config, facts), indent=2, sort_keys=True) + "\n"
    actions.append(("write", ETC + "/config.yaml", conf.encode(), 0o600, "root:root"))
    if k3s.get("registries"):
        reg = json.dumps(k3s["registries"], indent=2, sort_keys=True) + "\n"
        actions.append(("write", ETC + "/registries.yaml", reg.encode(), 0o600, "root:root"))
    # The node password k3s keeps in /etc/rancher/node must outlive /etc (rebuilt each boot).
    actions += [("mkdir", NODE_STATE, 0o700, "root:root"), ("symlink", NODE_STATE, NODE_DIR)]
    if facts.get("k3s_images"):
        actions.append(("mkdir", AIRGAP_IMAGES, 0o755, "root:root"))
        actions += [("symlink", f"{SHARE}/images/{n}", f"{AIRGAP_IMAGES}/{n}") for n in facts["k3s_images"]]
    files = manifest_files(config)
    if upgrade_plan(config) is not None and not facts.get("upgrade_controller"):
        actions.append(("error", "k3s", "upgrade.plan needs the system-upgrade-controller, which this image does "
                                        "not ship (build it with upgrade.kubernetes: true)"))
    files += upgrade_files(config, facts) + apps_controller_files(config, facts) if role == "server" else []
    if role != "server":
        if files:
            actions.append(("error", "k3s", "k3s.manifests and k3s.helm_charts are deployed by servers; "
                                            "this node is an agent, so they are not written"))
        return actions
    actions.append(("mkdir", MANIFESTS, 0o700, "root:root"))
    for entry in k3s.get("helm_charts", []):
        bundled = entry.get("bundled")
        if bundled and "chart" in entry:
            actions.append(("error", "k3s", f"helm chart {entry['name']}: give 'chart' or 'bundled', not both"))
        elif bundled and bundled not in facts.get("k3s_charts", []):
            have = ", ".join(facts.get("k3s_charts", [])) or "none"
            actions.append(("error", "k3s", f"helm chart {entry['name']}: no bundled chart '{bundled}' in this "
                                            f"image (bundled: {have})"))
        elif bundled:
            actions += [("mkdir", STATIC_CHARTS, 0o755, "root:root"),
                        ("symlink", f"{SHARE}/charts/{bundled}", f"{STATIC_CHARTS}/{bundled}")]
    for name, content in files:
        path = f"{MANIFESTS}/{name}"
        if isinstance(content, tuple):
            actions.append(("copy", content[1], path, 0o600))
        elif isinstance(content, str):
            actions.append(("write", path, content.encode(), 0o600, "root:root"))
        else:
            actions.append(("write", path, (json.dumps(content, indent=2) + "\n").encode(), 0o600, "root:root"))
    keep = [name for name, _ in files]
    if any(name == f"{PREFIX}apps-controller.yaml" for name in keep):
        # made at run time: the site CA is made once, on the node, and kept on its state partition
        actions.append(("apps-tls", app_tls(config)["mode"], APPS_CA, f"{MANIFESTS}/{APPS_TLS_MANIFEST}",
                        str(config.get("hostname") or "node")))
        keep.append(APPS_TLS_MANIFEST)
    actions.append(("prune", MANIFESTS, PREFIX, tuple(keep)))
    return actions


def plan_service(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """Runtime phase (the network is up): start k3s, or restart it with new arguments."""
    if not facts.get("k3s") or not config.get("k3s", {}).get("enabled", True):
        return []
    import zlib
    _, argv = role_and_argv(config)
    env = {str(k): str(v) for k, v in section(config).get("environment", {}).items()}
    # k3s reads its files only at start: a change to them restarts it like a change of arguments.
    files = json.dumps([k3s_config(config, facts), config.get("k3s", {}).get("registries")], sort_keys=True)
    env["BASALT_K3S_CONFIG_CRC"] = f"{zlib.crc32(files.encode()):08x}"
    return [("service", "k3s", argv, env)]
