"""Replicas on requests (agent/apps/autoscale.py) as a table, and the holding endpoint
(agent/apps/activator.py) against hostile requests and a revision that never wakes: the API
stand-in (tests/fake_kube.py) and the kubelet stand-in (tests/kubelet.py), no router."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_kube import FakeKube
from kubelet import Kubelet

from agent.apps import activator, autoscale, cli, kube
from agent.apps.metrics import Window
from agent.apps.spec import parse_scale

C = parse_scale("1-4,concurrency=2")  # two requests in flight per replica
R = parse_scale("1-3,rps=10")
Z = parse_scale("0-3,concurrency=1,idle=30s")


@pytest.mark.parametrize(("scale", "current", "load", "seconds", "idle_for", "steady_for", "want"), [
    (C, 1, Window(requests=100, busy=30.0), 10, 0, 0, 2),  # 3 in flight: 2 replicas, at once
    (C, 1, Window(requests=100, busy=80.0), 10, 0, 0, 4),  # 8 in flight: 4
    (C, 2, Window(requests=900, busy=500.0), 10, 0, 0, 4),  # 50 in flight: the range's top
    (C, 3, Window(requests=10, busy=1.0), 10, 0, 5, 3),  # less needed, but not 10 s at this size yet
    (C, 3, Window(requests=10, busy=1.0), 10, 0, 10, 1),  # and then down, to the range's low end
    (C, 2, Window(), 0, 0, 60, 1),  # no scrape yet: nothing to go by, the low end
    (R, 1, Window(requests=250), 10, 0, 0, 3),  # 25 a second, 10 per replica
    (R, 1, Window(requests=5, busy=100.0), 10, 0, 0, 1),  # rps ignores the time in flight
    (Z, 1, Window(requests=3, busy=0.3), 10, 5, 0, 1),  # asked for 5 s ago: awake
    (Z, 2, Window(), 10, 30, 0, 0),  # 30 s without a request: asleep, whatever its size
    (Z, 0, Window(requests=50, busy=50.0), 10, 0, 60, 0),  # asleep: only a request (the activator) wakes it
    (parse_scale("2-3,rps=1"), 0, Window(), 10, 0, 0, 2),  # at 0 but not a range from 0: back to its low end
])
def test_replicas(scale, current, load, seconds, idle_for, steady_for, want) -> None:  # type: ignore[no-untyped-def]
    assert autoscale.replicas(scale, current, load, seconds, idle_for, steady_for) == want


@pytest.fixture
def sleeping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeKube, activator.Activator]]:
    """App ``late`` at 0 replicas whose pod never starts in time, and an activator for it."""
    monkeypatch.setattr(activator, "WAKE_TIMEOUT", 1.0)
    with FakeKube() as api, Kubelet(api):
        conf = api.kubeconfig(tmp_path / "kubeconfig")
        assert cli.standalone(["--kubeconfig", str(conf), "run", "nginx:1.27", "--name", "late", "--port", "8080",
                               "--scale", "0-1,concurrency=1", "--env", "START_MS=60000"]) == 0
        act = activator.Activator(kube.Client(kube.credentials(str(conf))), ("127.0.0.1", 0)).start()
        act.hosts = {"late.local": activator.Target("default", "late", ("v1",), {"v1": 1})}
        try:
            yield api, act
        finally:
            act.stop()


def ask(act: activator.Activator, host: str, body: bytes = b"",
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", act.port, timeout=10)
    try:
        conn.request("POST" if body else "GET", "/", body or None, {"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip()
    finally:
        conn.close()


@pytest.mark.parametrize(("host", "headers", "body", "status", "said"), [
    ("evil.local", {}, b"", 404, "basalt: no sleeping app answers for 'evil.local'"),
    ("", {}, b"", 404, "basalt: no sleeping app answers for ''"),
    ("LATE.LOCAL.", {}, b"", 404, "basalt: no sleeping app answers for 'late.local.'"),
    ("x" * 8000, {}, b"", 404, "basalt: no sleeping app answers for"),
    ("late.local", {"Content-Length": str(activator.MAX_BODY + 1)}, b"", 413,
     f"basalt: a request held while an app wakes is at most {activator.MAX_BODY} bytes"),
])
def test_the_activator_refuses_what_it_cannot_hold_and_wakes_nothing(
        sleeping: tuple[FakeKube, activator.Activator], host: str, headers: dict[str, str], body: bytes,
        status: int, said: str) -> None:
    api, act = sleeping
    assert ask(act, host, body, headers)[0] == status
    assert said in ask(act, host, body, headers)[1]
    assert api.get("Deployment", "late-v1")["spec"]["replicas"] == 0  # nothing woken


def test_a_revision_that_does_not_wake_in_time_is_a_503_with_the_reason(
        sleeping: tuple[FakeKube, activator.Activator]) -> None:
    api, act = sleeping
    status, said = ask(act, "late.local")
    assert status == 503 and said == "basalt: late did not wake: late-v1 not Ready within 1s", said
    assert api.get("Deployment", "late-v1")["spec"]["replicas"] == 1  # asked for: its pod is still starting


def test_the_traffic_view_serves_one_page_and_nothing_else(sleeping: tuple[FakeKube, activator.Activator]) -> None:
    """Only GET / (or /index.html), rendered once for many at once; no path, query or method gets
    anything else; unreadable metrics are said on the page."""
    import threading

    from agent.apps import controller
    _, act = sleeping
    pages = controller.Pages(act, "http://127.0.0.1:9/metrics")  # nothing listens: metrics unreadable
    renders: list[float] = []
    real = pages.render
    pages.render = lambda: renders.append(0) or real()  # type: ignore[method-assign]
    act.pages = pages
    for path in ("/../../etc/passwd", "/apps.json", "/index.html/x", "/%2e%2e/", "/.git/config"):
        conn = http.client.HTTPConnection("127.0.0.1", act.port, timeout=10)
        conn.request("GET", path, headers={"Host": "127.0.0.1"})
        resp = conn.getresponse()
        assert (resp.status, b"Basalt apps" in resp.read()) == (404, False), path
        conn.close()
    assert ask(act, "127.0.0.1", b"x")[0] == 404  # a POST: no page
    answers: list[tuple[int, str]] = []
    threads = [threading.Thread(target=lambda: answers.append(ask(act, "127.0.0.1:8012"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [a[0] for a in answers] == [200] * 6 and len(renders) == 1, (answers, renders)
    assert "Traefik&#x27;s metrics cannot be read" in answers[0][1] and "<script" not in answers[0][1]
    assert "late" in answers[0][1]  # the app, from the API
