"""An app's Kubernetes objects, built from its spec and rollout, and read back from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.apps import rollout
from agent.apps.spec import (
    APP,
    DOMAIN,
    MANAGED,
    REVISION,
    AppSpec,
    Scale,
    local_host,
    node_label,
    parse_scale,
    preview_host,
    problem,
)
from agent.apps.tls import RESOLVER, Tls, secret_name

TRAEFIK = "traefik.io/v1alpha1"
PLAIN = Tls()  # HTTP only
IMAGE, SCALE, PORT, HOST = f"{DOMAIN}/image", f"{DOMAIN}/scale", f"{DOMAIN}/port", f"{DOMAIN}/host"
NODES = f"{DOMAIN}/nodes"
ENTRY_POINTS = ["web"]  # k3s's Traefik: port 80
SECURE_ENTRY_POINTS = ["websecure"]  # port 443
CPU_REQUEST, MEMORY_REQUEST = "25m", "16Mi"  # the HPA's utilization is of the request; small for 1 GB nodes
CPU_TARGET = 80  # percent of the request the HPA keeps a revision at


def _meta(name: str, namespace: str, app: str, revision: str | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {**MANAGED, APP: app, **({REVISION: revision} if revision else {})}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def revision_name(app: str, revision: str) -> str:
    return f"{app}-{revision}"


def revision_objects(spec: AppSpec, replicas: int | None = None) -> list[dict[str, Any]]:
    """A revision: its Deployment, its Service, and for a replica range its HorizontalPodAutoscaler."""
    name = revision_name(spec.name, spec.revision)
    selector = {APP: spec.name, REVISION: spec.revision}
    container: dict[str, Any] = {
        "name": "app", "image": spec.image, "ports": [{"name": "http", "containerPort": spec.port}],
        "readinessProbe": {"tcpSocket": {"port": spec.port}, "periodSeconds": 2, "failureThreshold": 2},
        "resources": {"requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST}}}
    if spec.env:
        container["env"] = [{"name": k, "value": v} for k, v in spec.env]
    annotations = {IMAGE: spec.image, SCALE: str(spec.scale), PORT: str(spec.port)}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(name, spec.namespace, spec.name, spec.revision, annotations),
        "spec": {"replicas": spec.scale.min if replicas is None else replicas,
                 "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": {**selector}},
                              "spec": {"enableServiceLinks": False, "containers": [container]}}}}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(name, spec.namespace, spec.name, spec.revision),
        "spec": {"selector": selector, "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port}]}}
    out = [deployment, service]
    if spec.scale.autoscaled:
        out.append({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(name, spec.namespace, spec.name, spec.revision),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "minReplicas": spec.scale.min, "maxReplicas": spec.scale.max,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization", "averageUtilization": CPU_TARGET}}}]}})
    return out


def hosts(host: str, revisions: list[str], also: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The names an app answers: its host, then each revision's preview host; then the same for
    each name in ``also`` (its names on the nodes' LANs)."""
    return [name for h in (host, *also) for name in (h, *(preview_host(h, r) for r in sorted(revisions)))]


def local_hosts(app: str, namespace: str, nodes: tuple[str, ...]) -> list[str]:
    return [local_host(app, namespace, n) for n in nodes]


def _match(names: list[str]) -> str:
    return " || ".join(f"Host(`{h}`)" for h in names)


def app_objects(app: str, namespace: str, host: str, port: int, plan: rollout.Rollout,
                revisions: list[str], tls: Tls = PLAIN, nodes: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The app: its TraefikService (the weights, the rollout, its HTTPS and the nodes it is named
    on in annotations) and its IngressRoute (the app's host, and its name on each node's LAN, to
    the weights; each revision's preview hosts to its own Service). With TLS (agent/apps/tls.py)
    the route is on ``websecure`` with the app's certificate, and a second one, ``APP-http``,
    redirects plain HTTP to it (the Middleware ``APP-https``)."""
    names = sorted(revisions)
    local = local_hosts(app, namespace, nodes)
    weighted = {
        "apiVersion": TRAEFIK, "kind": "TraefikService",
        "metadata": _meta(app, namespace, app, annotations={HOST: host, PORT: str(port), **plan.annotations(),
                                                            **tls.annotations(DOMAIN),
                                                            **({NODES: ",".join(nodes)} if nodes else {})}),
        "spec": {"weighted": {"services": [{"name": revision_name(app, r), "port": port,
                                            "weight": plan.weights.get(r, 0)} for r in names]}}}
    routes: list[dict[str, Any]] = [{"kind": "Rule", "match": _match([host, *local]),
                                     "services": [{"kind": "TraefikService", "name": app}]}]
    routes += [{"kind": "Rule", "match": _match([preview_host(h, r) for h in (host, *local)]),
                "services": [{"name": revision_name(app, r), "port": port}]} for r in names]
    if tls.mode == "off":
        route = {"apiVersion": TRAEFIK, "kind": "IngressRoute", "metadata": _meta(app, namespace, app),
                 "spec": {"entryPoints": ENTRY_POINTS, "routes": routes}}
        return [weighted, route]
    secure = {"apiVersion": TRAEFIK, "kind": "IngressRoute", "metadata": _meta(app, namespace, app),
              "spec": {"entryPoints": SECURE_ENTRY_POINTS, "routes": routes,
                       "tls": ({"certResolver": RESOLVER} if tls.mode == "acme" else {"secretName": secret_name(app)})}}
    redirect = f"{app}-https"
    middleware = {"apiVersion": TRAEFIK, "kind": "Middleware", "metadata": _meta(redirect, namespace, app),
                  "spec": {"redirectScheme": {"scheme": "https", "permanent": True}}}
    plain = {"apiVersion": TRAEFIK, "kind": "IngressRoute", "metadata": _meta(f"{app}-http", namespace, app),
             "spec": {"entryPoints": ENTRY_POINTS,
                      "routes": [{**r, "middlewares": [{"name": redirect}]} for r in routes]}}
    return [weighted, secure, plain, middleware]


@dataclass
class RevisionState:
    name: str
    image: str
    scale: Scale
    port: int
    env: tuple[tuple[str, str], ...]
    replicas: int
    ready_replicas: int = 0
    ready: bool = False


@dataclass
class AppState:
    """An app as its objects say it is (from the cluster, or a file of them)."""

    name: str
    namespace: str
    host: str
    port: int
    rollout: rollout.Rollout
    revisions: dict[str, RevisionState] = field(default_factory=dict)
    tls: Tls = field(default_factory=Tls)
    nodes: tuple[str, ...] = ()  # the nodes whose LANs name it (APP.NODE.local), from the controller
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def local_hosts(self) -> list[str]:
        return local_hosts(self.name, self.namespace, self.nodes)

    def spec(self, revision: str) -> AppSpec:
        rev = self.revisions[revision]
        return AppSpec(name=self.name, image=rev.image, port=rev.port, scale=rev.scale, env=rev.env,
                       host=self.host, namespace=self.namespace, revision=revision, tls=self.tls.mode)

    def current(self) -> str:
        """The revision with the most weight (the newest of equals)."""
        return max(sorted(self.revisions), key=lambda r: self.rollout.weights.get(r, 0))


def deployment_ready(obj: dict[str, Any]) -> tuple[int, bool]:
    status = obj.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    observed = status.get("observedGeneration", 0) >= obj["metadata"].get("generation", 0)
    return ready, ready >= 1 and observed and int(obj["spec"].get("replicas", 1)) > 0


def read(objects: list[dict[str, Any]], app: str, namespace: str = "default") -> AppState | None:
    """Find app ``app`` among ``objects`` (any mix of kinds and apps)."""
    mine = [o for o in objects if o and (o.get("metadata") or {}).get("labels", {}).get(APP) == app
            and (o["metadata"].get("namespace") or "default") == namespace]
    weighted = next((o for o in mine if o.get("kind") == "TraefikService"), None)
    if weighted is None:
        return None
    notes = weighted["metadata"].get("annotations") or {}
    weights = {s["name"].removeprefix(app + "-"): int(s.get("weight", 0))
               for s in weighted["spec"]["weighted"]["services"]}
    state = AppState(app, namespace, notes.get(HOST, ""), int(notes.get(PORT, 0)),
                     rollout.from_annotations(weights, notes), objects=mine,
                     tls=Tls.from_annotations(notes, DOMAIN),
                     nodes=tuple(n for n in notes.get(NODES, "").split(",") if node_label(n) == n))
    for obj in mine:
        if obj.get("kind") != "Deployment":
            continue
        meta = obj["metadata"]
        rev = meta["labels"].get(REVISION, "")
        a = meta.get("annotations") or {}
        container = obj["spec"]["template"]["spec"]["containers"][0]
        ready_replicas, ready = deployment_ready(obj)
        state.revisions[rev] = RevisionState(
            rev, a.get(IMAGE, container["image"]), parse_scale(a.get(SCALE, "1")),
            int(a.get(PORT, state.port)), tuple((e["name"], e.get("value", "")) for e in container.get("env", [])),
            int(obj["spec"].get("replicas", 1)), ready_replicas, ready)
    return state


def require(objects: list[dict[str, Any]], app: str, namespace: str) -> AppState:
    state = read(objects, app, namespace)
    if state is None:
        raise problem(f"no app {app} in namespace {namespace}", f"basalt app run IMAGE --name {app} --port PORT "
                                                                "starts it; basalt app ps lists the apps")
    return state
