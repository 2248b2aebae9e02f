"""A stand-in for the Kubernetes API server, on 127.0.0.1, for the apps CLI and controller.

This is a mock at an unreachable boundary: no k3s binary can be had here (GitHub is unreachable),
so nothing can serve the real API. It does what the apps code relies on and nothing more: lists
with label selectors, server-side apply (one field manager owns the whole object; a stale
resourceVersion is a 409), JSON merge patches, deletes; and, standing in for the Deployment
controller and the kubelet, a Deployment's ready replicas are its replicas once ``ready_after``
seconds have passed, unless its image's tag is ``broken``. The end-to-end test against a real k3s
is tests/boot/test_apps_k3s.py (with BASALT_K3S_BINARY).
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.parse
from typing import Any

from conftest import Local

PLURALS = {"deployments": "Deployment", "services": "Service", "pods": "Pod",
           "horizontalpodautoscalers": "HorizontalPodAutoscaler", "traefikservices": "TraefikService",
           "ingressroutes": "IngressRoute"}


def selected(obj: dict[str, Any], selector: str) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, eq, value = term.partition("=")
        if key not in labels or (eq and labels[key] != value):
            return False
    return True


class FakeKube(Local):
    def __init__(self, ready_after: float = 0.0) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.ready_after = ready_after
        self.version = 0
        self.writes: list[tuple[str, str, str]] = []  # (method, kind, name), in order
        self.logs: dict[str, str] = {}  # pod name → its log
        self.lock = threading.Lock()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms per reply

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
                return PLURALS[plural], ns, name, url.query, urllib.parse.parse_qs(url.query)

            def do_GET(self) -> None:
                kind, ns, name, _, query = self.route()
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
                self.reply(200, {"kind": f"{kind}List", "items": items})

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
                        for k, v in (body.get("spec") or {}).items():
                            obj["spec"][k] = v
                        generation = current["metadata"]["generation"] + 1
                    api.version += 1
                    obj["metadata"].update(resourceVersion=str(api.version), generation=generation,
                                           namespace=ns or "default")
                    obj["metadata"].setdefault("creationTimestamp", time.time())
                    obj["metadata"]["changed"] = time.time()
                    api.objects[key] = obj
                    api.writes.append(("PATCH", kind, name))
                self.reply(200, obj)

            def do_DELETE(self) -> None:
                kind, ns, name, _, _ = self.route()
                with api.lock:
                    gone = api.objects.pop((kind, ns or "default", name), None)
                    api.writes.append(("DELETE", kind, name))
                self.reply(200 if gone else 404, {})

        self.serve(Handler)

    def settle(self) -> None:
        """The Deployment controller's part: ready replicas follow replicas (not for a broken image)."""
        now = time.time()
        for (kind, _, _), obj in self.objects.items():
            if kind != "Deployment":
                continue
            image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
            replicas = obj["spec"].get("replicas", 1)
            up = not image.endswith(":broken") and now - obj["metadata"]["changed"] >= self.ready_after
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
