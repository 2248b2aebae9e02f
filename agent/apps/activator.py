"""The holding endpoint: the controller answers for a revision that sleeps, and wakes it.

A request-scaled revision with a range from 0 sleeps after its idle time: its Deployment has no
replicas, and its Service has no selector and one EndpointSlice, ``REV-wake``, that points at the
controller's own address and this port. Traefik routes to that address as to any endpoint (no
extra activator deployment, no change to the app's routes). A request held here:

1. finds its app by its Host (the app's host, or a revision's preview host);
2. wakes the revision (once, however many requests wait): replicas up, then, once the Deployment
   is Ready, the Service's selector back, and once the Service has a ready endpoint of its own,
   the wake slice removed;
3. is passed to that endpoint, and its answer back. Later requests go to the pods by Traefik.

A request waits at most ``WAKE_TIMEOUT`` seconds (then 503 with the reason); a body over
``MAX_BODY`` is refused (413), an unknown host is a 404. What woke what is logged.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.apps import kube, resources
from agent.apps.spec import APP, REVISION

PORT = 8012  # in the controller's pod (docs/apps.md)
LISTEN_ENV = "BASALT_ACTIVATOR_LISTEN"  # ADDRESS:PORT to listen on instead of 0.0.0.0:8012
WAKE_TIMEOUT = 60.0
MAX_BODY = 8 << 20
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "content-length", "host"}
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
WAKE_MANAGER = "basalt.io/apps-controller"  # the wake slices' manager (not the EndpointSlice controller)


@dataclass(frozen=True)
class Target:
    namespace: str
    app: str
    revisions: tuple[str, ...]  # the revisions a request for this host may go to, the first preferred
    minimum: dict[str, int]  # revision → its replicas when awake (the low end of its range, at least 1)


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 (kept-alive connections), no log lines, and no Nagle delay (40 ms per answer whose
    headers and body are written apart). The tests' local servers use it too."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Activator:
    def __init__(self, client: kube.Client, bind: tuple[str, int] = ("0.0.0.0", PORT),
                 log: Callable[..., None] | None = None) -> None:
        self.client = client  # its own: the controller's loop has another (http.client is not thread-safe)
        self.lock = threading.Lock()  # around the client
        self.hosts: dict[str, Target] = {}  # replaced whole by the controller each tick
        self.waking: dict[tuple[str, str, str], threading.Event] = {}
        self.woken: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.woke_at: dict[tuple[str, str, str], float] = {}  # when each revision last woke (time.time())
        # one per revision: held for a whole wake, and by the controller for a whole sleep
        self.turns: dict[tuple[str, str, str], threading.Lock] = {}
        self.log = log or (lambda *a, **k: None)
        # the controller's pages (agent/apps/view.py) for a host that is no app's: path → (status, type, body)
        self.pages: Callable[[str], tuple[int, str, bytes] | None] | None = None
        activator = self

        class Handler(QuietHandler):
            def answer(self, status: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def handle_any(self) -> None:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
                target = activator.hosts.get(host)
                if target is None:
                    page = activator.pages(self.path) if activator.pages and self.command in ("GET", "HEAD") else None
                    if page is not None:
                        return self.send_page(*page)
                    return self.answer(404, f"basalt: no sleeping app answers for {host!r}")
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    return self.answer(413, f"basalt: a request held while an app wakes is at most {MAX_BODY} bytes")
                body = self.rfile.read(length) if length else b""
                try:
                    address = activator.wake(target)
                except (TimeoutError, OSError, kube.NotFound, RuntimeError) as exc:
                    return self.answer(503, f"basalt: {target.app} did not wake: {exc}")
                self.forward(address, body)

            def send_page(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def forward(self, address: tuple[str, int], body: bytes) -> None:
                """The request to the woken revision, and its answer back as it comes (streamed in
                64 KiB pieces: a large answer is never held in the controller's memory)."""
                conn = http.client.HTTPConnection(*address, timeout=WAKE_TIMEOUT)
                try:
                    try:
                        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                        headers["Host"] = self.headers.get("Host", "")
                        conn.request(self.command, self.path, body or None, headers)
                        resp = conn.getresponse()
                    except (OSError, http.client.HTTPException) as exc:
                        return self.answer(502, f"basalt: the woken revision did not answer: {exc}")
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length")
                    if length is not None and length.isdigit():
                        self.send_header("Content-Length", length)
                    else:  # its end is where the connection closes
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    if self.command == "HEAD":
                        return None
                    while piece := resp.read(65536):
                        self.wfile.write(piece)
                    return None
                except OSError:  # the client or the revision went away mid-answer
                    self.close_connection = True
                    return None
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

        self.server = http.server.ThreadingHTTPServer(bind, Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread: threading.Thread | None = None

    def start(self, poll: float = 0.5) -> Activator:
        """Serve in a thread. ``poll``: how often the loop wakes to see whether ``stop`` was asked
        (the controller, which never stops it, wakes it once an hour: idle means idle on a Pi)."""
        self.thread = threading.Thread(target=self.server.serve_forever, args=(poll,), daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def turn(self, key: tuple[str, str, str]) -> threading.Lock:
        with self.lock:
            return self.turns.setdefault(key, threading.Lock())

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.lock:
            return fn(*args)

    def wake(self, target: Target) -> tuple[str, int]:
        """An endpoint of the first of ``target``'s revisions, woken if it sleeps (bounded)."""
        revision = target.revisions[0]
        key = (target.namespace, target.app, revision)
        with self.lock:
            event = self.waking.get(key)
            mine = event is None
            if mine:
                event = self.waking[key] = threading.Event()
        assert event is not None
        if not mine:  # another request is waking it: wait for that
            if not event.wait(WAKE_TIMEOUT):
                raise TimeoutError(f"{revision} not awake within {WAKE_TIMEOUT:g}s")
            found = self.woken.get(key)
            if found is None:
                raise RuntimeError(f"{revision} could not be woken (see the controller's log)")
            return found
        try:
            self.woke_at[key] = time.time()  # a request came: the autoscaler must not put it to sleep meanwhile
            with self.turn(key):  # after a sleep under way, never during one
                found = self._wake(target, revision)
            self.woken[key] = found
            self.woke_at[key] = time.time()
            return found
        finally:
            event.set()
            with self.lock:
                self.waking.pop(key, None)

    def _wake(self, target: Target, revision: str) -> tuple[str, int]:
        ns, name = target.namespace, resources.revision_name(target.app, revision)
        started = time.monotonic()
        deadline = started + WAKE_TIMEOUT
        dep = self.call(self.client.get, "Deployment", ns, name)
        if int(dep["spec"].get("replicas", 0)) == 0:
            self.call(self.client.patch, "Deployment", ns, name,
                      {"spec": {"replicas": target.minimum.get(revision, 1)}})
            self.log("wake", app=target.app, namespace=ns, message=f"waking {revision} for a request")
        while not resources.deployment_ready(self.call(self.client.get, "Deployment", ns, name))[1]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not Ready within {WAKE_TIMEOUT:g}s")
            time.sleep(0.05)
        self.call(self.client.patch, "Service", ns, name,
                  {"spec": {"selector": {APP: target.app, REVISION: revision}}})
        while True:
            address = self.endpoint(ns, name)
            if address:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} has no ready endpoint within {WAKE_TIMEOUT:g}s")
            time.sleep(0.05)
        self.call(self.client.delete, "EndpointSlice", ns, wake_slice_name(target.app, revision))
        self.log("wake", app=target.app, namespace=ns,
                 message=f"{revision} woke in {time.monotonic() - started:.1f}s")
        return address

    def endpoint(self, namespace: str, service: str) -> tuple[str, int] | None:
        """A ready endpoint of ``service`` other than the wake slice's."""
        slices = self.call(self.client.list, "EndpointSlice", namespace, f"kubernetes.io/service-name={service}")
        for s in slices:
            if (s["metadata"].get("labels") or {}).get(MANAGED_BY) == WAKE_MANAGER:
                continue
            port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == "http"), None)
            for e in s.get("endpoints") or []:
                if (e.get("conditions") or {}).get("ready", True) and e.get("addresses") and port:
                    return str(e["addresses"][0]), int(port)
        return None


def wake_slice_name(app: str, revision: str) -> str:
    return f"{resources.revision_name(app, revision)}-wake"


def wake_slice(app: str, namespace: str, revision: str, address: str, port: int) -> dict[str, Any]:
    """The EndpointSlice that sends a sleeping revision's traffic to the activator."""
    name = resources.revision_name(app, revision)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": wake_slice_name(app, revision), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name, MANAGED_BY: WAKE_MANAGER,
                                    APP: app, REVISION: revision}},
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}

