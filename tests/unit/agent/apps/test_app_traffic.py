"""Canaries judged by their traffic, through the real Traefik.

Real here: Traefik 3.5.1 (tests/traefik.py; it reads every TraefikService, IngressRoute and
EndpointSlice itself, through its own Kubernetes provider), HTTP through its entry point, its
Prometheus metrics, ``basalt app`` and the controller's loop. Stand-ins (no k3s can run here): the
API server (tests/fake_kube.py) and the kubelet (tests/kubelet.py: each replica a small HTTP server
on 127.0.0.1 that answers with its revision's name, told by its environment to fail or be slow).
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube
from kubelet import Kubelet
from traefik import Traefik

from agent.apps import activator, cli, controller, kube, view

# The promotions' intervals here. A verdict needs 10 of the new revision's requests in its window
# (one to two intervals); on a loaded 2-core machine (the CI suite beside it) the clients manage
# some 30 requests a second, a slow revision's far fewer: its windows are made longer.
STEP_S = 1.0
JUDGED_STEP_S = 2.0  # the failing revision's promotion
SLOW_STEP_S = 4.0  # the slow revision's


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeKube, Kubelet, Traefik, Path]]:
    work = tmp_path_factory.mktemp("traffic")
    with FakeKube() as api, Kubelet(api) as kubelet, Traefik(api.url, work) as router:
        yield api, kubelet, router, api.kubeconfig(work / "kubeconfig")


def basalt_app(conf: Path, *argv: str) -> int:
    return cli.standalone(["--kubeconfig", str(conf), *argv])


class Load:
    """Requests for ``host`` through Traefik's entry point from a few clients at once (each on its
    own kept-alive connection, one request at a time), until stopped."""

    def __init__(self, router: Traefik, host: str, clients: int = 4) -> None:
        self.router, self.host = router, host
        self.answers: list[tuple[float, int, str]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.router.web, timeout=10)  # kept alive, as browsers do
        try:
            while not self.stop.is_set():
                try:
                    conn.request("GET", "/", headers={"Host": self.host})
                    resp = conn.getresponse()
                    self.answers.append((time.monotonic(), resp.status, resp.read().decode(errors="replace").strip()))
                except (OSError, http.client.HTTPException) as exc:  # recorded (a failed request), then anew
                    self.answers.append((time.monotonic(), 0, repr(exc)))
                    conn.close()
                self.stop.wait(0.005)
        finally:
            conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


class Controller:
    """The controller's loop (controller.tick, real time) in a thread, reading Traefik's metrics."""

    def __init__(self, conf: Path, metrics_url: str) -> None:
        creds = kube.credentials(str(conf))
        self.client = kube.Client(creds)
        self.traffic = controller.Traffic(metrics_url)
        # the holding endpoint, as in the controller's pod (there on its pod IP, here on 127.0.0.1)
        self.activator = activator.Activator(kube.Client(creds), ("127.0.0.1", 0), controller.log)
        self.scaler = controller.Autoscaler("127.0.0.1", self.activator.port, self.activator)
        self.pages = controller.Pages(self.activator, metrics_url)
        self.activator.pages = self.pages
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            wait = controller.tick(self.client, time.time(), self.traffic, self.scaler, self.pages.history)
            self.stop.wait(min(wait, 0.2))

    def __enter__(self) -> Controller:
        self.activator.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        self.activator.stop()


def until(api: FakeKube, app: str, done: Any, timeout: float = 40) -> list[dict[str, int]]:
    """The app's weights as they went, until ``done(annotations)``; bounded."""
    seen: list[dict[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        weights = api.weights(app)
        if not seen or seen[-1] != weights:
            seen.append(weights)
        if done(api.get("TraefikService", app)["metadata"]["annotations"]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{app}: not done in {timeout}s; weights went {seen}")


def switched(load: Load, to: str, timeout: float = 5.0) -> float:
    """When every answer became ``to``'s: waits for ten in a row, then for 0.3 s more of them (the
    router's watch and its half-second throttle come between the API and the traffic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = load.answers[-10:]
        if len(last) == 10 and all(status == 200 and body == to for _, status, body in last):
            since = last[0][0]
            time.sleep(0.3)
            later = [(status, body) for at, status, body in load.answers if at >= since]
            assert set(later) == {(200, to)}, later
            return since
        time.sleep(0.05)
    raise AssertionError(f"the router did not switch to {to} in {timeout}s: {load.answers[-10:]}")


def served_by(load: Load, since: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for at, status, body in load.answers:
        if at >= since and status == 200:
            out[body] = out.get(body, 0) + 1
    return out


def start_app(api: FakeKube, router: Traefik, conf: Path, app: str, env: list[str]) -> None:
    assert basalt_app(conf, "run", "nginx:1.27", "--name", app, "--port", "8080") == 0
    assert basalt_app(conf, "stage", app, "nginx:1.28", *[x for e in env for x in ("--env", e)]) == 0
    deadline = time.monotonic() + 20  # Traefik has read the routes and both revisions' endpoints
    while router.get(f"{app}.local")[1].strip() != "v1" or router.get(f"v2-{app}.local")[1].strip() != "v2":
        assert time.monotonic() < deadline, router.tail()
        time.sleep(0.1)


def test_a_revision_failing_one_request_in_five_is_rolled_back_within_two_steps(
        cluster: tuple[FakeKube, Kubelet, Traefik, Path], capsys: pytest.CaptureFixture[str]) -> None:
    api, _, router, conf = cluster
    start_app(api, router, conf, "shop", ["FAIL_RATE=0.2"])
    with Load(router, "shop.local") as load, Controller(conf, router.metrics_url):
        assert basalt_app(conf, "promote", "shop", "v2", "--increment", "20", "--interval",
                          f"{JUDGED_STEP_S:g}s") == 0
        seen = until(api, "shop", lambda a: a["basalt.io/rollout"] == "rolled-back" and
                     api.weights("shop") == {"v1": 100, "v2": 0})
        back = time.monotonic()
        # the real router follows: soon every answer is v1's
        assert switched(load, "v1") - back < 3.0
    assert max(w["v2"] for w in seen) <= 40, seen  # judged within two steps of 20
    notes = api.get("TraefikService", "shop")["metadata"]["annotations"]
    said = re.fullmatch(r"rolled back: v2 answered (\d+)% of (\d+) requests with 5xx \(more than 5%; the "
                        r"revisions before it 0%\)", notes["basalt.io/message"])
    assert said and 10 <= int(said.group(1)) <= 30 and int(said.group(2)) >= 10, notes  # 1 in 5, in a window
    events = [o for (k, _, _), o in api.objects.items() if k == "Event" and o["involvedObject"]["name"] == "shop"]
    assert [(e["reason"], e["involvedObject"]["kind"], e["type"]) for e in events] == [
        ("RolledBack", "TraefikService", "Warning")]
    assert events[0]["message"] == notes["basalt.io/message"]
    capsys.readouterr()
    assert basalt_app(conf, "ps") == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("shop ") and " * " in line]
    assert summary and "rolled-back: rolled back: v2 answered" in summary[0], summary


def test_a_healthy_revision_goes_to_all_the_traffic(cluster: tuple[FakeKube, Kubelet, Traefik, Path]) -> None:
    api, _, router, conf = cluster
    start_app(api, router, conf, "blog", [])
    with Load(router, "blog.local") as load, Controller(conf, router.metrics_url):
        started = time.monotonic()
        assert basalt_app(conf, "promote", "blog", "v2", "--increment", "25", "--interval", f"{STEP_S:g}s") == 0
        seen = until(api, "blog", lambda a: a["basalt.io/rollout"] == "idle")
        done = time.monotonic()
        assert switched(load, "v2") - done < 3.0
    assert [w["v2"] for w in seen] == [0, 25, 50, 75, 100], seen
    mid = served_by(load, started + STEP_S * 1.2)  # while both served: the router split the traffic
    assert mid.get("v1", 0) > 0 and mid.get("v2", 0) > 0, mid
    assert "basalt.io/message" not in api.get("TraefikService", "blog")["metadata"]["annotations"]


def test_a_slow_revision_trips_the_latency_bound(cluster: tuple[FakeKube, Kubelet, Traefik, Path]) -> None:
    api, _, router, conf = cluster
    start_app(api, router, conf, "wiki", ["DELAY_MS=400"])
    with Load(router, "wiki.local", clients=8), Controller(conf, router.metrics_url):  # slow answers hold clients
        assert basalt_app(conf, "promote", "wiki", "v2", "--increment", "20", "--interval", f"{SLOW_STEP_S:g}s",
                          "--max-latency", "250ms") == 0
        seen = until(api, "wiki", lambda a: a["basalt.io/rollout"] == "rolled-back")
    assert max(w["v2"] for w in seen) <= 40, seen
    message = api.get("TraefikService", "wiki")["metadata"]["annotations"]["basalt.io/message"]
    # Traefik's default buckets (0.1, 0.3, 1.2, 5 s): 400 ms falls in (0.3, 1.2], interpolated as Prometheus does
    assert message.startswith("rolled back: v2's p95 latency was "), message
    assert message.endswith("ms (more than 0.25s; the revisions before it 95ms)"), message


@pytest.mark.parametrize(("argv", "said"), [
    (["--max-error-rate", "120%"], "'120%' is not an error rate"),
    (["--max-error-rate", "-1"], "'-1' is not an error rate"),
    (["--max-error-rate", "nan"], "'nan' is not an error rate"),
    (["--max-latency", "0s"], "'0s': the interval must be more than zero"),
    (["--max-latency", "2m"], "'2m' is out of range"),
    (["--max-latency", "fast"], "'fast' is not a duration"),
])
def test_thresholds_out_of_range_are_refused_and_nothing_changes(
        cluster: tuple[FakeKube, Kubelet, Traefik, Path], capsys: pytest.CaptureFixture[str],
        argv: list[str], said: str) -> None:
    api, _, _, conf = cluster
    if ("TraefikService", "default", "news") not in api.objects:
        assert basalt_app(conf, "run", "nginx:1.27", "--name", "news", "--port", "8080") == 0
        assert basalt_app(conf, "stage", "news", "nginx:1.28") == 0
    before = api.get("TraefikService", "news")
    capsys.readouterr()
    assert basalt_app(conf, "promote", "news", "v2", *argv) == 1
    err = capsys.readouterr().err
    assert said in err and "hint:" in err and "Traceback" not in err, err
    assert api.get("TraefikService", "news") == before


def wait(what: str, check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.05)


def asleep(api: FakeKube, name: str) -> bool:
    return (api.get("Deployment", name)["spec"]["replicas"] == 0
            and "selector" not in api.get("Service", name)["spec"]
            and ("EndpointSlice", "default", f"{name}-wake") in api.objects)


def test_a_revision_at_zero_is_woken_by_a_request_and_scales_on_requests_in_flight(
        cluster: tuple[FakeKube, Kubelet, Traefik, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``--scale 0-2,concurrency=1,idle=2s``: asleep with no replica, the controller answering for it;
    a request through Traefik wakes it (the pod takes 0.5 s to start) and is answered by it; four
    clients at once (each answer 100 ms) make two replicas; idle, it sleeps again."""
    api, _, router, conf = cluster
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "cold", "--port", "8080", "--scale",
                      "0-2,concurrency=1,idle=2s", "--env", "START_MS=500", "--env", "DELAY_MS=100") == 0
    with Controller(conf, router.metrics_url) as ctl:
        wait("asleep", lambda: asleep(api, "cold-v1"))
        activator_url = f"http://127.0.0.1:{ctl.activator.port}"
        wait("routed to the activator", lambda: router.servers("default-cold-v1-8080@kubernetescrd")
             == [activator_url])
        started = time.monotonic()
        status, body = router.get("cold.local", timeout=30)
        cold_start = time.monotonic() - started
        assert (status, body.strip()) == (200, "v1")
        assert cold_start < 5.0, cold_start  # the bound under TCG; a pod here starts in 0.5 s
        print(f"cold start through Traefik: {cold_start:.2f}s to the answer")
        assert api.get("Deployment", "cold-v1")["spec"]["replicas"] == 1
        assert api.get("Service", "cold-v1")["spec"]["selector"] == {"basalt.io/app": "cold",
                                                                     "basalt.io/revision": "v1"}
        assert ("EndpointSlice", "default", "cold-v1-wake") not in api.objects
        wait("routed to its pod", lambda: router.servers("default-cold-v1-8080@kubernetescrd") not in
             ([], [activator_url]))
        with Load(router, "cold.local", clients=4) as load:
            wait("two replicas", lambda: api.get("Deployment", "cold-v1")["spec"]["replicas"] == 2)
        assert {body for _, status, body in load.answers if status == 200} == {"v1"}
        assert all(status == 200 for _, status, _ in load.answers), load.answers[-5:]
        slept = time.monotonic()
        wait("asleep again", lambda: asleep(api, "cold-v1"))
        assert time.monotonic() - slept >= 1.0  # not before its idle time (2 s after the last request)
    said = capsys.readouterr().out
    assert "v1: 1 to 2 replicas (concurrency" in said and "v1 sleeps: no request for 2s" in said, said


def test_app_top_shows_each_revisions_traffic_from_traefiks_own_counters(
        cluster: tuple[FakeKube, Kubelet, Traefik, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Half of v2's answers are 500s and the weights are 50/50: ``top`` (Traefik's metrics reached
    through the API server's proxy to its pod, as from a workstation) shows it per revision."""
    api, _, router, conf = cluster
    api.add_traefik_pod(router.metrics_port)
    start_app(api, router, conf, "feed", ["FAIL_RATE=0.5"])
    with Controller(conf, router.metrics_url):
        assert basalt_app(conf, "weight", "feed", "v1=50", "v2=50") == 0
        until(api, "feed", lambda a: api.weights("feed") == {"v1": 50, "v2": 50})
    wait("routed to both", lambda: set(served_by(load_once(router, "feed.local"), 0)) == {"v1", "v2"})
    with Load(router, "feed.local", clients=2):
        capsys.readouterr()
        assert basalt_app(conf, "top", "--once", "--interval", "1s") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["APP", "REVISION", "WEIGHT", "RPS", "ERRORS", "P50", "P95", "READY"]
    rows = {cols[1]: cols for cols in (line.split() for line in lines[1:]) if cols[0] == "feed"}
    assert sorted(rows) == ["v1", "v2"], lines
    for cols in rows.values():
        assert cols[2] == "50%" and float(cols[3]) > 5 and cols[7] == "1/1", cols  # weight, RPS, ready
        assert cols[5].endswith("ms") and cols[6].endswith("ms"), cols  # p50, p95
    assert rows["v1"][4] == "0.0%"
    assert 35 <= float(rows["v2"][4].rstrip("%")) <= 65, rows["v2"]  # every other answer a 500
    # Traefik's metrics unreachable: a refusal with a hint, no traceback
    assert basalt_app(conf, "top", "--once", "--interval", "0.1s", "--metrics", "http://127.0.0.1:9/metrics") == 1
    err = capsys.readouterr().err
    assert "cannot read Traefik's metrics" in err and "hint: give --metrics URL" in err and "Traceback" not in err


def load_once(router: Traefik, host: str, n: int = 20) -> Load:
    """``n`` requests, one after another, as a finished Load."""
    load = Load(router, host, clients=1)
    for _ in range(n):
        status, body = router.get(host)
        load.answers.append((time.monotonic(), status, body.strip()))
    return load


def chromium(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless (as root: no sandbox), bounded in time."""
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is missing: ./inv installs it (Debian's chromium)")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--disable-background-networking", *argv],
                          capture_output=True, text=True, timeout=timeout)


def test_the_traffic_view_in_a_real_browser(cluster: tuple[FakeKube, Kubelet, Traefik, Path],
                                            tmp_path: Path) -> None:
    """The controller's page (one HTML file, no script, no CDN) in headless Chromium: a screenshot
    is taken, and the numbers on the rendered page are the app's."""
    api, _, router, conf = cluster
    start_app(api, router, conf, "view", [])
    with Controller(conf, router.metrics_url) as ctl:
        assert basalt_app(conf, "weight", "view", "v1=70", "v2=30") == 0
        until(api, "view", lambda a: api.weights("view") == {"v1": 70, "v2": 30})
        time.sleep(0.3)  # a tick records the weights it read
        url = f"http://127.0.0.1:{ctl.activator.port}/"
        with Load(router, "view.local", clients=2):
            with urllib.request.urlopen(url, timeout=30) as r:
                raw = r.read()
                assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            dom = chromium(f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url)
            shot = chromium(f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={tmp_path / 'view.png'}",
                            "--window-size=1024,768", url)
    assert len(raw) <= view.LIMIT, len(raw)
    assert b"<script" not in raw and b"http://" not in raw.replace(url.encode(), b"")  # nothing fetched
    assert dom.returncode == 0, dom.stderr[-2000:]
    section = dom.stdout[dom.stdout.index('id="default-view"'):]
    section = section[:section.index("</table>")]
    cells = [re.findall(r"<td>([^<]*)</td>", row) for row in section.split("<tr>")[2:]]
    assert [c[0] for c in cells] == ["v1", "v2"] and [c[1] for c in cells] == ["70%", "30%"], cells
    assert all(float(c[2]) > 1 and c[3] == "0.0%" and c[4].endswith("ms") and c[6] == "1/1" for c in cells), cells
    assert "<polyline" in dom.stdout and "weights over the last" in dom.stdout
    png = tmp_path / "view.png"
    assert shot.returncode == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr[-2000:]
    assert png.stat().st_size > 5000  # a page was drawn, not an empty frame
