"""A stand-in for the kubelet and the EndpointSlice controller, beside tests/fake_kube.py.

For each Deployment in the API stand-in it runs as many "pods" as the Deployment has replicas:
small HTTP servers on 127.0.0.1 that answer every request with their revision's name. What a pod
does is read from its container's environment, as a real app would read it:

- ``FAIL_RATE`` (0 to 1): that share of requests is answered 500, spread evenly (exactly 1 in 5 for
  0.2, never at random);
- ``DELAY_MS``: every answer waits that long;
- ``START_MS``: the pod takes that long to start (a container's start).

As the EndpointSlice controller does, each pod a Service's selector selects is published as an
EndpointSlice of that Service (one slice per pod: the pods listen on different ports of one
address), and slices it did not make (the apps controller's wake slices) are left alone; a Service
without a selector gets none. The Deployment's status counts the pods that run.
Traefik, which is real, reads those EndpointSlices to route. A mock at an unreachable boundary
(no k3s here); what is real and what is not is listed in docs/apps.md.
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fake_kube import FakeKube

from agent.apps.activator import QuietHandler

MANAGED_BY, MANAGER = "endpointslice.kubernetes.io/managed-by", "endpointslice-controller.k8s.io"


@dataclass
class Pod:
    name: str
    revision: str
    env: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    served: int = 0
    failed: int = 0
    server: http.server.ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self.server
        return int(self.server.server_address[1])

    def start(self) -> None:
        pod = self
        fail_rate = float(self.env.get("FAIL_RATE") or 0)
        delay = float(self.env.get("DELAY_MS") or 0) / 1000
        lock = threading.Lock()

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with lock:
                    pod.served += 1
                    # the n-th request fails when n * rate crosses a whole number: evenly spread
                    fail = int(pod.served * fail_rate) > int((pod.served - 1) * fail_rate)
                    pod.failed += fail
                if delay:
                    time.sleep(delay)
                body = f"{pod.revision}\n".encode()
                self.send_response(500 if fail else 200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class Kubelet:
    """Runs the Deployments of ``api`` as local pods, in a thread, until the ``with`` ends."""

    def __init__(self, api: FakeKube, period: float = 0.05) -> None:
        self.api = api
        self.period = period
        self.pods: dict[tuple[str, str], list[Pod]] = {}  # (namespace, deployment) → its pods
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.started_pods = 0

    def __enter__(self) -> Kubelet:
        self.api.kubelet = True
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)
        for pods in self.pods.values():
            for pod in pods:
                pod.stop()

    def loop(self) -> None:
        while not self.stopping.is_set():
            self.sync()
            self.stopping.wait(self.period)

    def sync(self) -> None:
        with self.api.lock:
            deployments = {(ns, name): (int(o["spec"].get("replicas", 1)), o["metadata"]["generation"],
                                        o["spec"]["template"])
                           for (kind, ns, name), o in self.api.objects.items() if kind == "Deployment"}
            services = {(ns, name): dict(o["spec"].get("selector") or {})
                        for (kind, ns, name), o in self.api.objects.items() if kind == "Service"}
        for key in list(self.pods):
            if key not in deployments:
                self.scale(key, 0, None)
        for key, (replicas, generation, template) in deployments.items():
            self.scale(key, replicas, template)
            ready = sum(1 for p in self.pods.get(key, []) if self.running(p))
            self.status(key, generation, replicas, ready)
        for key, selector in services.items():
            self.publish(key, selector, deployments)

    @staticmethod
    def running(pod: Pod) -> bool:
        return pod.server is not None

    def scale(self, key: tuple[str, str], replicas: int, template: dict[str, Any] | None) -> None:
        pods = self.pods.setdefault(key, [])
        while len(pods) > replicas:
            pods.pop().stop()
        while template is not None and len(pods) < replicas:
            container = template["spec"]["containers"][0]
            env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
            revision = template["metadata"]["labels"].get("basalt.io/revision", key[1])
            self.started_pods += 1
            pods.append(Pod(f"{key[1]}-{self.started_pods}", revision, env))
        for pod in pods:
            if pod.server is None and time.monotonic() - pod.started >= float(pod.env.get("START_MS") or 0) / 1000:
                pod.start()
        if not pods:
            self.pods.pop(key, None)

    def status(self, key: tuple[str, str], generation: int, replicas: int, ready: int) -> None:
        """The Deployment's status, written when it changes."""
        ns, name = key
        with self.api.lock:
            dep = self.api.objects.get(("Deployment", ns, name))
            status = {"observedGeneration": generation, "replicas": replicas, "readyReplicas": ready}
            if dep is not None and dep.get("status") != status:
                self.api.store("Deployment", ns, name, {**dep, "status": status}, True)

    def publish(self, key: tuple[str, str], selector: dict[str, str],
                deployments: dict[tuple[str, str], tuple[int, int, dict[str, Any]]]) -> None:
        """A Service's EndpointSlices: one per running pod its selector selects (none without one)."""
        ns, service = key
        slices: dict[str, Pod] = {}
        for (d_ns, d_name), (_, _, template) in deployments.items():
            labels = template["metadata"].get("labels") or {}
            if d_ns == ns and selector and all(labels.get(k) == v for k, v in selector.items()):
                slices.update({f"{service}-{pod.name}": pod for pod in self.pods.get((d_ns, d_name), [])
                               if self.running(pod)})
        with self.api.lock:
            have = {n for (k, n_ns, n), o in self.api.objects.items() if k == "EndpointSlice" and n_ns == ns
                    and o["metadata"]["labels"].get("kubernetes.io/service-name") == service
                    and o["metadata"]["labels"].get(MANAGED_BY) == MANAGER}
            for gone in have - set(slices):
                obj = self.api.objects.pop(("EndpointSlice", ns, gone))
                self.api.version += 1
                self.api.events.append((self.api.version, "DELETED", obj))
                self.api.lock.notify_all()
            for slice_name, pod in slices.items():
                if slice_name in have:
                    continue
                self.api.store("EndpointSlice", ns, slice_name, {
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": slice_name, "labels": {"kubernetes.io/service-name": service,
                                                                MANAGED_BY: MANAGER}},
                    "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True, "serving": True},
                                   "targetRef": {"kind": "Pod", "name": pod.name, "namespace": ns}}],
                    "ports": [{"name": "http", "port": pod.port, "protocol": "TCP"}]})

    def served(self, deployment: str, namespace: str = "default") -> tuple[int, int]:
        """(requests, of which failed) by the pods a Deployment runs now."""
        pods = self.pods.get((namespace, deployment), [])
        return sum(p.served for p in pods), sum(p.failed for p in pods)
