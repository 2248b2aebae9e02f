"""A small Kubernetes API client on the standard library: the few calls apps need.

Why not the official ``kubernetes`` package: with its dependencies (urllib3, google-auth,
websocket-client, oauthlib, requests-oauthlib, six, python-dateutil) it is about 30 MB installed and
imports in well over a second on a small board, for a controller that lists two kinds, applies one
object and patches a replica count. This is some 150 lines, imports ``ssl``, ``http.client`` and
``json``, and keeps the controller's resident memory under its 30 MB budget (docs/apps.md).

Credentials, in order: the service account a pod runs with (in the cluster), then a kubeconfig
(``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``, and on a node ``/etc/rancher/k3s/k3s.yaml``).
Objects are written by server-side apply (field manager ``basalt``), with the resourceVersion read
before, so a change made meanwhile (by the CLI, the controller or kubectl) makes the write fail
instead of being overwritten.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Any

from agent.errors import BasaltError, Problem

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
KUBECONFIGS = ("~/.kube/config", "/etc/rancher/k3s/k3s.yaml")
FIELD_MANAGER = "basalt"
PATHS = {  # kind → (API prefix, plural)
    "Deployment": ("/apis/apps/v1", "deployments"), "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"), "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "TraefikService": ("/apis/traefik.io/v1alpha1", "traefikservices"),
    "IngressRoute": ("/apis/traefik.io/v1alpha1", "ingressroutes"),
    "Event": ("/api/v1", "events"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
    "Middleware": ("/apis/traefik.io/v1alpha1", "middlewares"),
    "Secret": ("/api/v1", "secrets"), "ConfigMap": ("/api/v1", "configmaps"), "Node": ("/api/v1", "nodes"),
}


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class NotFound(Exception):
    """No such object (HTTP 404)."""


@dataclass
class Credentials:
    server: str
    context: ssl.SSLContext
    token: str = ""


def _data_file(data: str, suffix: str) -> str:
    f = tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False)  # 0600
    with f:
        f.write(base64.b64decode(data))
    return f.name


def from_kubeconfig(path: str) -> Credentials:
    with open(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)  # a kubeconfig may be JSON: no YAML parser needed (the controller's image has none)
    except ValueError:
        import yaml
        doc = yaml.safe_load(text) or {}
    current = doc.get("current-context")
    ctx = next((c["context"] for c in doc.get("contexts", []) if c["name"] == current), None)
    if ctx is None:
        raise BasaltError(Problem(f"{path}: no current context", hint="kubectl config use-context NAME"))
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
    user: dict[str, Any] = next((u["user"] for u in doc.get("users", []) if u["name"] == ctx.get("user")), {}) or {}
    context = ssl.create_default_context()
    temp: list[str] = []
    try:
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            context.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            context.load_verify_locations(cafile=cluster["certificate-authority"])
        cert, key = user.get("client-certificate"), user.get("client-key")
        if user.get("client-certificate-data"):
            cert = _data_file(user["client-certificate-data"], ".crt")
            temp.append(cert)
        if user.get("client-key-data"):
            key = _data_file(user["client-key-data"], ".key")
            temp.append(key)
        if cert:
            context.load_cert_chain(cert, key)
    finally:
        for name in temp:
            os.unlink(name)
    return Credentials(cluster["server"], context, user.get("token", ""))


def credentials(kubeconfig: str | None = None) -> Credentials:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    if kubeconfig is None and host and os.path.exists(SERVICE_ACCOUNT + "/token"):
        context = ssl.create_default_context(cafile=SERVICE_ACCOUNT + "/ca.crt")
        with open(SERVICE_ACCOUNT + "/token") as f:
            return Credentials(f"https://{host}:{port}", context, f.read().strip())
    candidates = [kubeconfig] if kubeconfig else [*os.environ.get("KUBECONFIG", "").split(os.pathsep),
                                                  *(os.path.expanduser(p) for p in KUBECONFIGS)]
    for path in (p for p in candidates if p):
        if os.path.exists(path):
            return from_kubeconfig(path)
    raise BasaltError(Problem("no cluster to talk to: no service account, no kubeconfig",
                              hint="give --kubeconfig FILE (on a server node: /etc/rancher/k3s/k3s.yaml), or "
                                   "--dry-run to print the objects"))


class Client:
    def __init__(self, creds: Credentials, timeout: float = 30):
        self.creds = creds
        url = urllib.parse.urlsplit(creds.server)
        self.plain = url.scheme == "http"  # a local API without TLS (the tests' stand-in for one)
        self.host, self.port = url.hostname or "", url.port or (80 if self.plain else 443)
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                raw: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if self.creds.token:
            headers["Authorization"] = f"Bearer {self.creds.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more, on a new one
            if self._conn is None:
                self._conn = (http.client.HTTPConnection(self.host, self.port, timeout=self.timeout) if self.plain
                              else http.client.HTTPSConnection(self.host, self.port, context=self.creds.context,
                                                               timeout=self.timeout))
            try:
                self._conn.request(method, path, data, headers)
                resp = self._conn.getresponse()
                payload = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        if resp.status == 404:
            raise NotFound(path)
        if resp.status == 409:
            raise Conflict(path)
        if resp.status >= 400:
            try:
                message = json.loads(payload).get("message", "")
            except ValueError:
                message = payload.decode(errors="replace")[:200]
            raise BasaltError(Problem(f"{method} {path}: HTTP {resp.status}: {message}"))
        return payload.decode(errors="replace") if raw else (json.loads(payload) if payload else {})

    @staticmethod
    def path(kind: str, namespace: str | None, name: str = "") -> str:
        prefix, plural = PATHS[kind]
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{where}/{plural}" + (f"/{name}" if name else "")

    def list(self, kind: str, namespace: str | None = None, selector: str = "") -> list[dict[str, Any]]:
        query = "?" + urllib.parse.urlencode({"labelSelector": selector}) if selector else ""
        doc = self.request("GET", self.path(kind, namespace) + query)
        items: list[dict[str, Any]] = doc.get("items", [])
        for item in items:  # a list's items carry no kind
            item.setdefault("kind", kind)
        return items

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = self.path(obj["kind"], meta.get("namespace", "default"), meta["name"])
        query = urllib.parse.urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
        result: dict[str, Any] = self.request("PATCH", f"{path}?{query}", obj, "application/apply-patch+yaml")
        return result

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", self.path(kind, namespace, name))
        return result

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        path = self.path(obj["kind"], obj["metadata"].get("namespace", "default"))
        result: dict[str, Any] = self.request("POST", path, obj)
        return result

    def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.request("PATCH", self.path(kind, namespace, name), body, "application/merge-patch+json")

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", self.path(kind, namespace, name))
        except NotFound:
            pass

    def logs(self, namespace: str, pod: str, tail: int = 100) -> str:
        text: str = self.request("GET", self.path("Pod", namespace, pod) + f"/log?tailLines={tail}", raw=True)
        return text
