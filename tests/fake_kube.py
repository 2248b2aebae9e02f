"""A stand-in for the Kubernetes API server, on 127.0.0.1, for the apps CLI and controller.

This is a mock at an unreachable boundary: no k3s binary can be had here (GitHub is unreachable),
so nothing can serve the real API. It does what the apps code and Traefik's ``kubernetescrd``
provider rely on and nothing more: typed lists (``IngressRouteList``, ``ServiceList``, ...) with
label selectors (``=``, ``!=``, presence) and a ``resourceVersion``; streaming watches from a
resourceVersion (``ADDED``/``MODIFIED``/``DELETED``, one JSON object per line, ended after
``timeoutSeconds``); server-side apply (one field manager owns the whole object; a stale
resourceVersion is a 409), JSON merge patches, deletes, and created Events. Standing in for the
Deployment controller, a Deployment's ready replicas are its replicas once ``ready_after`` seconds
have passed, unless its image's tag is ``broken``, or, with a kubelet attached (tests/kubelet.py),
the pods it really runs. The end-to-end test against a real k3s is tests/boot/test_apps_k3s.py
(with BASALT_K3S_BINARY).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

from conftest import Local

from agent.apps.activator import QuietHandler

TRAEFIK_KINDS = ("IngressRoute", "IngressRouteTCP", "IngressRouteUDP", "Middleware", "MiddlewareTCP",
                 "ServersTransport", "ServersTransportTCP", "TLSOption", "TLSStore", "TraefikService")
# plural → (kind, apiVersion)
PLURALS = {"deployments": ("Deployment", "apps/v1"), "services": ("Service", "v1"), "pods": ("Pod", "v1"),
           "secrets": ("Secret", "v1"), "nodes": ("Node", "v1"), "configmaps": ("ConfigMap", "v1"),
           "events": ("Event", "v1"),
           "endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
           "horizontalpodautoscalers": ("HorizontalPodAutoscaler", "autoscaling/v2"),
           **{k.lower() + "s": (k, "traefik.io/v1alpha1") for k in TRAEFIK_KINDS}}
API_VERSIONS = dict(PLURALS.values())
WATCH_LIMIT = 60.0  # seconds a watch stays open at most (clients watch again, as from a real server)


def selected(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
            continue
        key, eq, value = term.partition("=")
        if key not in labels or (eq and labels[key] != value.lstrip("=")):
            return False
    return True


class FakeKube(Local):
    def __init__(self, ready_after: float = 0.0) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.ready_after = ready_after
        self.version = 0
        self.writes: list[tuple[str, str, str]] = []  # (method, kind, name), in order
        self.logs: dict[str, str] = {}  # pod name → its log
        self.lock = threading.Condition()
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # (resourceVersion, type, object) for watches
        self.changed: dict[tuple[str, str, str], float] = {}  # when each object was last written
        self.kubelet = False  # set by tests/kubelet.py: pods are real, readiness is theirs
        api = self

        class Handler(QuietHandler):
            def reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> Any:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")

            def route(self) -> tuple[str, str | None, str, str, dict[str, list[str]]]:
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                ns = None
                if "namespaces" in parts:
                    i = parts.index("namespaces")
                    ns, parts = parts[i + 1], parts[:i] + parts[i + 2:]
                start = 2 if parts[0] == "api" else 3
                plural, name = parts[start], "/".join(parts[start + 1:])
                return PLURALS[plural][0], ns, name, url.query, urllib.parse.parse_qs(url.query)

            def watch(self, kind: str, ns: str | None, query: dict[str, list[str]]) -> None:
                selector = query.get("labelSelector", [""])[0]
                since = int(query.get("resourceVersion", ["0"])[0] or 0)
                if not since:  # from now, with what exists sent as ADDED first (as a real server does)
                    with api.lock:
                        since = api.version
                        initial = [o for (k, n, _), o in sorted(api.objects.items())
                                   if k == kind and (ns is None or n == ns) and selected(o, selector)]
                else:
                    initial = []
                limit = min(float(query.get("timeoutSeconds", [WATCH_LIMIT])[0]), WATCH_LIMIT)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                deadline = time.monotonic() + limit

                def send(kind_of_event: str, obj: dict[str, Any]) -> None:
                    line = json.dumps({"type": kind_of_event, "object": obj}).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                try:
                    for obj in initial:
                        send("ADDED", obj)
                    while time.monotonic() < deadline and not api.closing:
                        with api.lock:
                            news = [(rv, t, o) for rv, t, o in api.events[-2000:] if rv > since]
                            if not news:
                                api.lock.wait(min(1.0, max(0.01, deadline - time.monotonic())))
                                continue
                        for rv, t, o in news:
                            since = rv
                            meta = o["metadata"]
                            if (o["kind"] == kind and (ns is None or meta.get("namespace") == ns)
                                    and selected(o, selector)):
                                send(t, o)
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def do_GET(self) -> None:
                kind, ns, name, _, query = self.route()
                if query.get("watch", [""])[0] in ("true", "1"):
                    return self.watch(kind, ns, query)
                if kind == "Pod" and "/proxy/" in name:  # the API server's proxy to a pod's port
                    pod_port, _, rest = name.partition("/proxy/")
                    pod_name, _, port = pod_port.partition(":")
                    with api.lock:
                        pod = api.objects.get(("Pod", ns or "default", pod_name))
                    if pod is None or pod["status"]["podIP"] != "127.0.0.1":  # loopback only, ever
                        return self.reply(404, {"message": "no such pod"})
                    with urllib.request.urlopen(f"http://127.0.0.1:{int(port)}/{rest}", timeout=10) as r:
                        data = r.read()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if kind == "Pod" and name.endswith("/log"):
                    data = api.logs.get(name.removesuffix("/log"), "").encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                with api.lock:
                    api.settle()
                    if name:
                        obj = api.objects.get((kind, ns or "default", name))
                        return self.reply(200, obj) if obj else self.reply(404, {"message": "not found"})
                    selector = query.get("labelSelector", [""])[0]
                    items = [o for (k, n, _), o in sorted(api.objects.items())
                             if k == kind and (ns is None or n == ns) and selected(o, selector)]
                    version = str(api.version)
                self.reply(200, {"kind": f"{kind}List", "apiVersion": API_VERSIONS[kind],
                                 "metadata": {"resourceVersion": version}, "items": items})

            def do_POST(self) -> None:
                kind, ns, _, _, _ = self.route()
                obj = self.body()
                with api.lock:
                    name = obj["metadata"].get("name") or f"{obj['metadata'].get('generateName', 'x')}{api.version}"
                    obj["metadata"]["name"] = name
                    api.store(kind, ns or "default", name, obj)
                    api.writes.append(("POST", kind, name))
                self.reply(201, obj)

            def do_PATCH(self) -> None:
                kind, ns, name, _, _ = self.route()
                body = self.body()
                with api.lock:
                    key = (kind, ns or "default", name)
                    current = api.objects.get(key)
                    if self.headers["Content-Type"] == "application/apply-patch+yaml":
                        rv = body["metadata"].get("resourceVersion")
                        if rv and (current is None or current["metadata"]["resourceVersion"] != rv):
                            return self.reply(409, {"message": "the object has been modified"})
                        obj = json.loads(json.dumps(body))
                        if current is not None and "status" in current:
                            obj["status"] = current["status"]
                        generation = (current or {"metadata": {}})["metadata"].get("generation", 0) + 1
                    elif current is None:
                        return self.reply(404, {"message": "not found"})
                    else:
                        obj = json.loads(json.dumps(current))
                        for k, v in (body.get("spec") or {}).items():  # a merge patch: null removes
                            if v is None:
                                obj["spec"].pop(k, None)
                            else:
                                obj["spec"][k] = v
                        generation = current["metadata"]["generation"] + 1
                    obj["metadata"]["generation"] = generation
                    api.store(kind, ns or "default", name, obj, current is not None)
                    api.writes.append(("PATCH", kind, name))
                self.reply(200, obj)

            def do_DELETE(self) -> None:
                kind, ns, name, _, _ = self.route()
                with api.lock:
                    gone = api.objects.pop((kind, ns or "default", name), None)
                    api.writes.append(("DELETE", kind, name))
                    if gone:
                        api.version += 1
                        api.events.append((api.version, "DELETED", gone))
                        api.lock.notify_all()
                self.reply(200 if gone else 404, {})

        self.closing = False
        self.serve(Handler)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.closing = True  # open watches end within a second
            self.lock.notify_all()
        super().__exit__(*exc)

    def store(self, kind: str, namespace: str, name: str, obj: dict[str, Any], existed: bool | None = None) -> None:
        """Write an object (the lock held): a new resourceVersion, and an event for the watches."""
        if existed is None:
            existed = (kind, namespace, name) in self.objects
        self.version += 1
        obj.setdefault("kind", kind)
        obj.setdefault("apiVersion", API_VERSIONS[kind])
        obj["metadata"].update(resourceVersion=str(self.version), namespace=namespace)
        obj["metadata"].setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.changed[(kind, namespace, name)] = time.time()
        self.objects[(kind, namespace, name)] = obj
        self.events.append((self.version, "MODIFIED" if existed else "ADDED", json.loads(json.dumps(obj))))
        self.lock.notify_all()

    def settle(self) -> None:
        """The Deployment controller's part: ready replicas follow replicas (not for a broken image)."""
        now = time.time()
        for key, obj in self.objects.items():
            if key[0] != "Deployment" or self.kubelet:
                continue
            image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
            replicas = obj["spec"].get("replicas", 1)
            up = not image.endswith(":broken") and now - self.changed[key] >= self.ready_after
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                             "readyReplicas": replicas if up else 0}

    def add_pod(self, app: str, revision: str, name: str, log: str, namespace: str = "default") -> None:
        """A pod of a revision (the Deployment controller's part, by hand) and what it logged."""
        with self.lock:
            self.objects[("Pod", namespace, name)] = {
                "apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": name, "namespace": namespace,
                    "labels": {"basalt.io/app": app, "basalt.io/revision": revision}}}
            self.logs[name] = log

    def add_traefik_pod(self, metrics_port: int) -> None:
        """Traefik's pod as k3s's chart makes it (the proxy above reaches its metrics on loopback)."""
        with self.lock:
            self.store("Pod", "kube-system", "traefik-0", {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "traefik-0", "labels": {"app.kubernetes.io/name": "traefik"}},
                "spec": {"containers": [{"name": "traefik", "ports": [
                    {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"}]}]},
                "status": {"podIP": "127.0.0.1"}})

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.objects[(kind, namespace, name)]))

    def weights(self, app: str, namespace: str = "default") -> dict[str, int]:
        svc = self.get("TraefikService", app, namespace)
        return {s["name"].removeprefix(app + "-"): s["weight"] for s in svc["spec"]["weighted"]["services"]}

    def kubeconfig(self, path: Any) -> Any:
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                                    "users": [{"name": "u", "user": {"token": "fake-token"}}]}))
        return path
