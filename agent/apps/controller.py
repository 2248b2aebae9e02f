"""The apps controller: every tick, each app's rollout stepped by ``rollout.step`` and written back.

It runs in the cluster as a Deployment (docs/apps.md), with a service account that may read
Deployments and change their replicas, and read and write TraefikServices. One tick reads every
Basalt app's TraefikService and Deployments (two list calls), steps each rollout, and writes only
what changed: the TraefikService (with the resourceVersion it read, so a command run meanwhile
wins and the app is stepped again on the next tick) and replica counts. It ticks every second while
a rollout is under way, and every ``IDLE_TICK`` seconds when none is.

While a promotion runs it also reads Traefik's metrics (``Traffic``: one scrape a tick, none when
nothing is promoting) and gives each step what each revision served since the step before; a
promotion whose new revision fails its bounds is rolled back at once, said in the TraefikService's
``basalt.io/message`` (``basalt app ps``), in the log, and as a Kubernetes Event on the
TraefikService. Where the metrics are: ``$BASALT_TRAEFIK_METRICS`` (a URL), else the Traefik pod in
``kube-system`` on port 9100 (k3s's chart). Unreachable metrics are logged once and the promotion
goes on by readiness alone, as before metrics.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from agent.apps import activator, autoscale, kube, metrics, resources, rollout, spec, tls, top, view
from agent.apps.spec import APP, MANAGED
from agent.errors import BasaltError

IDLE_TICK = 10.0
BUSY_TICK = 1.0
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED.items())


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"time": round(time.time(), 3), "event": event, **fields}, sort_keys=True), flush=True)


def sleeps_at_zero(scale: Any) -> bool:
    """A request-scaled range from 0: it sleeps at zero replicas instead of being down."""
    return bool(scale.by_requests and scale.min == 0)


def revisions_of(state: resources.AppState) -> dict[str, rollout.Revision]:
    out = {}
    for name, r in state.revisions.items():
        sleeps = sleeps_at_zero(r.scale) and r.replicas == 0
        out[name] = rollout.Revision(ready=r.ready or sleeps, replicas=r.replicas, want=r.scale.min, sleeps=sleeps)
    return out


METRICS_ENV = "BASALT_TRAEFIK_METRICS"
TRAEFIK_POD = ("kube-system", "app.kubernetes.io/name=traefik", 9100)  # k3s's chart: namespace, labels, port


def metrics_port(pod: dict[str, Any]) -> int:
    """The port of Traefik's ``metrics`` entry point, as its pod declares it (9100 in k3s's chart)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "metrics" and isinstance(port.get("containerPort"), int):
                return int(port["containerPort"])
    return TRAEFIK_POD[2]


class Traffic:
    """Traefik's counters for the controller: a scrape a tick while something is promoting, and
    per app the scrapes taken at its last two steps. A revision is judged at every tick over the
    window since the step before the last: one to two intervals of traffic, never only the few
    requests since a step that has just been taken."""

    def __init__(self, url: str = "") -> None:
        self.url = url
        # (namespace, app) → the scrapes at its step before the last, and at its last
        self.started: dict[tuple[str, str], tuple[metrics.Snapshot, metrics.Snapshot]] = {}
        self.now: metrics.Snapshot | None = None
        self.failing = ""

    def locate(self, client: kube.Client) -> str:
        return self.url or self.locate_with(client.list)

    @staticmethod
    def locate_with(list_objects: Any) -> str:
        """Traefik's metrics URL: its pod's IP and the port it declares as ``metrics``."""
        namespace, selector, _ = TRAEFIK_POD
        for pod in list_objects("Pod", namespace, selector):
            ip = (pod.get("status") or {}).get("podIP")
            if ip:
                return f"http://{ip}:{metrics_port(pod)}/metrics"
        raise OSError(f"no Traefik pod in {namespace} ({selector}) to read metrics from")

    def scrape(self, client: kube.Client) -> None:
        try:
            self.now = metrics.parse(metrics.fetch(self.locate(client)))
            if self.failing:
                log("metrics", message="reading Traefik's metrics again")
            self.failing = ""
        except (OSError, ValueError, kube.NotFound, BasaltError) as exc:
            self.now = None
            if str(exc) != self.failing:  # once, not every tick
                self.failing = str(exc)
                log("metrics", message=f"cannot read Traefik's metrics ({exc}): promotions go by readiness alone")

    def windows(self, state: resources.AppState) -> dict[str, metrics.Window] | None:
        """What each revision served since the app's last step (None: no scrape to judge by)."""
        if self.now is None:
            return None
        key = (state.namespace, state.name)
        if key not in self.started:  # first seen: the window starts now
            self.started[key] = (self.now, self.now)
        return {rev: metrics.window(self.started[key][0], self.now, metrics.service(
                    state.namespace, resources.revision_name(state.name, rev), r.port))
                for rev, r in state.revisions.items()}

    def stepped(self, state: resources.AppState) -> None:
        key = (state.namespace, state.name)
        if self.now is not None:
            self.started[key] = (self.started.get(key, (self.now, self.now))[1], self.now)


class Autoscaler:
    """Request-scaled revisions (``MIN-MAX,concurrency=N`` or ``,rps=N``): their replicas from the
    scrapes of the last ``autoscale.WINDOW`` seconds, their sleep after ``idle`` without a request,
    and the hosts the activator answers for. ``address``:``port`` is where the activator listens,
    as the wake slices give it (the controller pod's IP)."""

    def __init__(self, address: str, port: int, awake: activator.Activator | None = None) -> None:
        self.address, self.port, self.activator = address, port, awake
        self.history: collections.deque[tuple[float, metrics.Snapshot]] = collections.deque()
        self.total: dict[tuple[str, str, str], float] = {}  # requests counted so far, per revision
        self.last_request: dict[tuple[str, str, str], float] = {}
        self.changed: dict[tuple[str, str, str], float] = {}  # when its replicas last changed

    def record(self, now: float, snapshot: metrics.Snapshot | None) -> None:
        if snapshot is None:
            return
        self.history.append((now, snapshot))
        while len(self.history) > 2 and self.history[1][0] <= now - autoscale.WINDOW:
            self.history.popleft()

    def load(self, svc: str, now: float) -> tuple[metrics.Window, float]:
        """What ``svc`` served over the window, and the window's seconds."""
        if len(self.history) < 2:
            return metrics.Window(), 0.0
        (t0, first), (_, last) = self.history[0], self.history[-1]
        return metrics.window(first, last, svc), now - t0

    def decide(self, client: kube.Client, state: resources.AppState, now: float, skip: set[str]) -> None:
        for rev, r in sorted(state.revisions.items()):
            if not r.scale.by_requests or rev in skip:
                continue
            key = (state.namespace, state.name, rev)
            if self.activator is not None and key in self.activator.waking:
                continue  # a request is waking it: its replicas are the activator's until it is up
            svc = metrics.service(state.namespace, resources.revision_name(state.name, rev), r.port)
            self.changed.setdefault(key, now)
            self.last_request.setdefault(key, now)  # first seen: as if just asked for
            if self.history:
                counts = self.history[-1][1].get(svc)
                total = sum(counts.codes.values()) if counts else 0.0
                if key in self.total and total > self.total[key]:  # asked for since the last tick
                    self.last_request[key] = now
                self.total[key] = total
            woke = self.activator.woke_at.get(key, 0.0) if self.activator else 0.0
            if woke > self.last_request[key]:
                self.last_request[key] = woke
                self.changed[key] = max(self.changed[key], woke)
            load, seconds = self.load(svc, now)
            want = autoscale.replicas(r.scale, r.replicas, load, seconds, now - self.last_request[key],
                                      now - self.changed[key])
            if want == r.replicas:
                if r.replicas == 0:
                    self.keep_asleep(client, state, rev)
                continue
            self.changed[key] = now
            if want == 0:
                self.sleep(client, state, rev, f"no request for {now - self.last_request[key]:.0f}s")
            else:
                client.patch("Deployment", state.namespace, resources.revision_name(state.name, rev),
                             {"spec": {"replicas": want}})
                log("scale", app=state.name, namespace=state.namespace,
                    message=f"{rev}: {r.replicas} to {want} replicas ({r.scale.on} "
                            f"{autoscale.demand(r.scale, load, seconds):.1f} over {seconds:.0f}s, "
                            f"{r.scale.target:g} per replica)")

    def sleep(self, client: kube.Client, state: resources.AppState, rev: str, why: str) -> None:
        """The wake slice first (the activator answers), then the Service's selector off, then no
        replicas; never while a request wakes it (the activator's turn for the revision)."""
        key = (state.namespace, state.name, rev)
        turn = self.activator.turn(key) if self.activator else threading.Lock()
        if not turn.acquire(blocking=False):
            return  # being woken: its next decision comes after
        try:
            if self.activator and key in self.activator.waking:
                return
            name = resources.revision_name(state.name, rev)
            client.apply(activator.wake_slice(state.name, state.namespace, rev, self.address, self.port))
            client.patch("Service", state.namespace, name, {"spec": {"selector": None}})
            client.patch("Deployment", state.namespace, name, {"spec": {"replicas": 0}})
        finally:
            turn.release()
        log("scale", app=state.name, namespace=state.namespace, message=f"{rev} sleeps: {why}")

    def keep_asleep(self, client: kube.Client, state: resources.AppState, rev: str) -> None:
        """A sleeping revision whose Service was given its selector back (a command re-applied it,
        a wake that did not finish): the activator answers for it again."""
        key = (state.namespace, state.name, rev)
        if self.activator and key in self.activator.waking:
            return
        name = resources.revision_name(state.name, rev)
        selector = (client.get("Service", state.namespace, name).get("spec") or {}).get("selector")
        try:
            client.get("EndpointSlice", state.namespace, activator.wake_slice_name(state.name, rev))
            slice_there = True
        except kube.NotFound:
            slice_there = False
        if selector or not slice_there:
            self.sleep(client, state, rev, "at 0 replicas (the controller answers for it until a request)")

    def hosts(self, states: list[resources.AppState]) -> None:
        """Which app (and revision) each host a sleeping revision may be asked for belongs to."""
        if self.activator is None:
            return
        hosts: dict[str, activator.Target] = {}
        for st in states:
            minimum = {rev: max(1, r.scale.min) for rev, r in st.revisions.items()}
            weighted = sorted((w, rev) for rev, w in st.rollout.weights.items() if w > 0 and rev in st.revisions)
            if weighted:
                hosts[st.host] = activator.Target(st.namespace, st.name, tuple(rev for _, rev in reversed(weighted)),
                                                  minimum)
            for rev in st.revisions:
                hosts[spec.preview_host(st.host, rev)] = activator.Target(st.namespace, st.name, (rev,), minimum)
        self.activator.hosts = hosts


class Pages:
    """The traffic view (agent/apps/view.py), served by the activator's listener: the apps as the
    API has them, two scrapes of Traefik's metrics a second apart, and the loop's weight history."""

    FRESH = 2.0  # seconds a rendered page is served again: one render at a time, however many ask

    def __init__(self, awake: activator.Activator, metrics_url: str = "") -> None:
        self.awake, self.url = awake, metrics_url
        self.history = view.History()
        self.lock = threading.Lock()
        self.last: tuple[float, bytes] = (0.0, b"")

    def __call__(self, path: str) -> tuple[int, str, bytes] | None:
        if path.split("?", 1)[0] not in ("/", "/index.html"):
            return None
        with self.lock:
            if time.monotonic() - self.last[0] > self.FRESH:
                self.last = (time.monotonic(), self.render().encode())
            return 200, "text/html; charset=utf-8", self.last[1]

    def render(self) -> str:
        client = self.awake.client
        objects = [*self.awake.call(client.list, "TraefikService", None, SELECTOR),
                   *self.awake.call(client.list, "Deployment", None, SELECTOR)]
        keys = sorted({(o["metadata"].get("namespace", "default"), o["metadata"]["labels"].get(APP, ""))
                       for o in objects if o.get("kind") == "TraefikService"})
        states = []
        for ns, app in keys:
            try:
                if (st := resources.read(objects, app, ns)) is not None:
                    states.append(st)
            except BasaltError:
                continue  # an app with a bad annotation: the loop's log says why
        note = ""
        try:
            url = self.url or Traffic.locate_with(lambda *a: self.awake.call(client.list, *a))
            t0, before = time.monotonic(), metrics.parse(metrics.fetch(url))
            time.sleep(1.0)
            after, seconds = metrics.parse(metrics.fetch(url)), time.monotonic() - t0
        except (OSError, ValueError, kube.NotFound, BasaltError) as exc:
            before, after, seconds, note = {}, {}, 0.0, f"Traefik's metrics cannot be read: {exc}"
        return view.page(states, top.rows(states, before, after, seconds), self.history, time.time(), note)


class Certificates:
    """Each ``site-ca`` app's certificate (agent/apps/tls.py), from the site CA mounted into this
    pod: issued when the app has none, when its hosts change (a revision staged or removed), and
    30 days before its end; kept as the Secret ``APP-tls``, which Traefik serves. Which hosts the
    certificate names, and when it is due, are in the app's TraefikService (the controller cannot
    read Secrets: it may only write them)."""

    def __init__(self, ca_dir: str = tls.CA_MOUNT) -> None:
        self.ca_dir = ca_dir
        self.said = ""

    def ca(self) -> tuple[bytes, bytes] | None:
        try:
            with open(os.path.join(self.ca_dir, "tls.crt"), "rb") as c, open(os.path.join(self.ca_dir, "tls.key"),
                                                                              "rb") as k:
                return c.read(64 << 10), k.read(64 << 10)
        except OSError:
            return None

    def ensure(self, client: kube.Client, state: resources.AppState, now: float) -> tls.Tls | None:
        """The app's new TLS record after issuing its certificate, or None when none was due (or
        none could be issued: said once in the log, tried again next tick)."""
        hosts = resources.hosts(state.host, list(state.revisions), state.local_hosts)
        if not state.tls.due(hosts, now):
            return None
        ca = self.ca()
        if ca is None:
            self._say(f"no site CA in {self.ca_dir}: {state.name} has no certificate of its own yet")
            return None
        try:
            cert, key = tls.issue(*ca, hosts)
            client.apply(tls.tls_secret(tls.secret_name(state.name), state.namespace, cert, key,
                                        labels={APP: state.name}))
        except (OSError, kube.Conflict, BasaltError) as exc:
            self._say(f"{state.namespace}/{state.name}: no certificate: {exc}")
            return None
        log("certificate", app=state.name, namespace=state.namespace, hosts=hosts, days=tls.CERT_DAYS)
        return tls.Tls(state.tls.mode, tuple(hosts), tls.renew_at(now))

    def _say(self, message: str) -> None:
        if message != self.said:
            self.said = message
            log("error", message=message)


def event(client: kube.Client, svc: dict[str, Any], reason: str, message: str) -> None:
    """A Warning Event on the app's TraefikService (``kubectl describe``, ``kubectl get events``)."""
    meta = svc["metadata"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        client.create({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}-", "namespace": meta.get("namespace", "default")},
            "involvedObject": {"apiVersion": resources.TRAEFIK, "kind": "TraefikService", "name": meta["name"],
                               "namespace": meta.get("namespace", "default"), "uid": meta.get("uid", "")},
            "reason": reason, "message": message[:1024], "type": "Warning", "count": 1,
            "source": {"component": "basalt-apps-controller"}, "firstTimestamp": stamp, "lastTimestamp": stamp})
    except (OSError, BasaltError, kube.NotFound, kube.Conflict) as exc:
        log("error", message=f"could not record the event: {exc}")


def node_labels(client: kube.Client) -> tuple[str, ...] | None:
    """The cluster's nodes, as the labels of their LAN names (agent/apps/mdns.py); None when the
    API does not say (the names stay as they are)."""
    try:
        found = client.list("Node", None)
    except (OSError, BasaltError, kube.NotFound, kube.Conflict) as exc:
        said = f"cannot list the nodes: {exc}"
        if said != _NODES_SAID[0]:  # once, not at every tick
            _NODES_SAID[0] = said
            log("error", message=said)
        return None
    _NODES_SAID[0] = ""
    return tuple(sorted({label for n in found if (label := spec.node_label(n["metadata"]["name"]))}))


_NODES_SAID = [""]


def tick(client: kube.Client, now: float, traffic: Traffic | None = None,
         scaler: Autoscaler | None = None, history: view.History | None = None,
         certificates: Certificates | None = None) -> float:
    """One pass over every app; the seconds until the next is due."""
    services = client.list("TraefikService", None, SELECTOR)
    deployments = client.list("Deployment", None, SELECTOR)
    nodes = node_labels(client)
    wait = IDLE_TICK
    pairs: list[tuple[dict[str, Any], resources.AppState]] = []  # each app's TraefikService and state
    for svc in services:
        meta = svc["metadata"]
        app, namespace = meta["labels"].get(APP, ""), meta.get("namespace", "default")
        try:
            state = resources.read([svc, *deployments], app, namespace)
        except Exception as exc:  # noqa: BLE001 - one app's bad annotation must not stop the others
            log("error", app=app, namespace=namespace, message=str(exc))
            continue
        if state is not None:
            pairs.append((svc, state))
    promoting = any(st.rollout.state == rollout.State.PROMOTING for _, st in pairs)
    by_requests = scaler is not None and any(r.scale.by_requests for _, st in pairs for r in st.revisions.values())
    if traffic is not None:
        if promoting or by_requests:
            traffic.scrape(client)
        if not promoting:
            traffic.started.clear()  # the next promotion's windows start when it does
    if scaler is not None and by_requests and traffic is not None:
        scaler.record(now, traffic.now)
        wait = BUSY_TICK
    for svc, state in pairs:
        app, namespace = state.name, state.namespace
        windows = traffic.windows(state) if traffic is not None else None
        result = rollout.step(state.rollout, revisions_of(state), now, windows)
        for said in result.events:
            log("step", app=app, namespace=namespace, message=said)
            if said.startswith("rolled back:"):
                event(client, svc, "RolledBack", said)
        if traffic is not None and (result.rollout.last_step != state.rollout.last_step
                                    or result.rollout.state != state.rollout.state):
            traffic.stepped(state)  # a step (or a rollback): the next window starts here
        for revision, replicas in sorted(result.scale.items()):
            if scaler is not None and replicas == 0 and sleeps_at_zero(state.revisions[revision].scale):
                scaler.sleep(client, state, revision, "at 0%")  # asleep, not down: its preview host wakes it
                continue
            client.patch("Deployment", namespace, resources.revision_name(app, revision),
                         {"spec": {"replicas": replicas}})
        if scaler is not None and by_requests:
            scaler.decide(client, state, now, set(result.scale))
        renamed = nodes is not None and nodes != state.nodes
        if renamed:  # the nodes whose LANs name the app changed: its names, routes and certificate follow
            state.nodes = nodes or ()
        issued = certificates.ensure(client, state, now) if certificates is not None else None
        if issued is not None:
            state.tls = issued
        if result.rollout != state.rollout or issued is not None or renamed:
            write(client, svc, state, result.rollout, routes=renamed)
        r = result.rollout
        if r.weights != r.target and r.state != rollout.State.PAUSED:
            # at the next step's time, and meanwhile each second (readiness)
            wait = min(wait, BUSY_TICK, max(0.05, r.last_step + r.interval - now))
    if scaler is not None:
        scaler.hosts([st for _, st in pairs])
    if history is not None:
        history.record([st for _, st in pairs], now)  # after this tick's writes: read back next tick
    return wait


def write_or_raise(client: kube.Client, current: dict[str, Any], state: resources.AppState,
                   plan: rollout.Rollout, routes: bool = False) -> None:
    """The TraefikService with ``plan``, if it is still the one read (else kube.Conflict), and
    with ``routes`` its IngressRoutes and Middleware."""
    objs = resources.app_objects(state.name, state.namespace, state.host, state.port, plan, list(state.revisions),
                                 state.tls, state.nodes)
    obj = objs[0]
    obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    client.apply(obj)
    if routes:  # the names changed (a node came or went): the routes follow the TraefikService
        for route in objs[1:]:
            client.apply(route)


def write(client: kube.Client, current: dict[str, Any], state: resources.AppState, plan: rollout.Rollout,
          routes: bool = False) -> None:
    try:
        write_or_raise(client, current, state, plan, routes)
    except kube.Conflict:
        log("conflict", app=state.name, namespace=state.namespace, message="changed meanwhile: next tick")


def main(argv: list[str] | None = None) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        client = kube.Client(kube.credentials())
    except BasaltError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    traffic = Traffic(os.environ.get(METRICS_ENV, ""))
    host, _, port = os.environ.get(activator.LISTEN_ENV, f"0.0.0.0:{activator.PORT}").rpartition(":")
    awake = activator.Activator(kube.Client(client.creds), (host, int(port)), log).start(poll=3600)
    scaler = Autoscaler(os.environ.get("POD_IP", "127.0.0.1"), awake.port, awake)
    pages = Pages(awake, traffic.url)
    certificates = Certificates(os.environ.get("BASALT_SITE_CA", tls.CA_MOUNT))
    awake.pages = pages
    log("start", idle_tick=IDLE_TICK, busy_tick=BUSY_TICK, metrics=traffic.url or "the Traefik pod",
        activator=f"{scaler.address}:{scaler.port}")
    while not stop:
        try:
            wait = tick(client, time.time(), traffic, scaler, pages.history, certificates)
        except Exception as exc:  # noqa: BLE001 - the API unreachable or refusing: say so, try at the next tick
            log("error", message=str(exc) or type(exc).__name__)
            wait = BUSY_TICK
        deadline = time.monotonic() + wait
        while not stop and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    log("stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())

