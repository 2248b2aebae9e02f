"""Traefik's metrics as the controller reads them (agent/apps/metrics.py) and the verdict on a
promotion's traffic (rollout.judge): exact windows, percentiles and messages, and scrapes that are
not what they should be."""

from __future__ import annotations

import pytest

from agent.apps import metrics, rollout
from agent.apps.metrics import Window
from agent.apps.rollout import Revision, Rollout, State

SVC = "default-shop-v2-8080@kubernetescrd"


def scrape(codes: dict[str, int], buckets: dict[str, int], svc: str = SVC) -> str:
    lines = ["# HELP traefik_service_requests_total How many HTTP requests processed on a service.",
             "# TYPE traefik_service_requests_total counter"]
    lines += [f'traefik_service_requests_total{{code="{c}",method="GET",protocol="http",service="{svc}"}} {n}'
              for c, n in codes.items()]
    lines += [f'traefik_service_request_duration_seconds_bucket{{code="200",method="GET",protocol="http",'
              f'service="{svc}",le="{le}"}} {n}' for le, n in buckets.items()]
    lines.append('traefik_entrypoint_requests_total{code="200",entrypoint="web",method="GET",protocol="http"} 9')
    return "\n".join(lines) + "\n"


def test_a_window_is_what_was_served_between_two_scrapes() -> None:
    before = metrics.parse(scrape({"200": 10}, {"0.1": 10, "0.3": 10, "1.2": 10, "5": 10, "+Inf": 10}))
    after = metrics.parse(scrape({"200": 50, "500": 10},
                                 {"0.1": 10, "0.3": 30, "1.2": 60, "5": 60, "+Inf": 60}))
    w = metrics.window(before, after, SVC)
    assert (w.requests, w.errors, w.error_rate) == (50, 10, 0.2)
    # 50 new: 20 in (0.1, 0.3], 30 in (0.3, 1.2]; rank 47.5 is 27.5 into the last: 0.3 + 0.9 * 27.5 / 30
    assert w.latency == pytest.approx(0.3 + 0.9 * 27.5 / 30)
    assert metrics.window(None, after, SVC).requests == 60
    assert metrics.window(before, after, "default-other-v1-80@kubernetescrd") == Window()


def test_a_traefik_restart_resets_the_counters_and_gives_an_empty_window() -> None:
    before = metrics.parse(scrape({"200": 500}, {"+Inf": 500}))
    after = metrics.parse(scrape({"200": 3}, {"+Inf": 3}))
    assert metrics.window(before, after, SVC) == Window()


def test_quantile_as_prometheus_interpolates_it() -> None:
    assert metrics.quantile(0.5, [(0.1, 0), (1.0, 10), (float("inf"), 10)]) == pytest.approx(0.55)
    assert metrics.quantile(0.95, [(0.1, 0), (1.0, 0), (float("inf"), 10)]) == 1.0  # all past the last bound
    assert metrics.quantile(0.95, []) is None
    assert metrics.quantile(0.95, [(0.1, 0), (float("inf"), 0)]) is None


@pytest.mark.parametrize("text", [
    "",
    "garbage\n\x00\xff{{{",
    'traefik_service_requests_total{code="200",service="' + SVC + '"} NaN\n',
    'traefik_service_requests_total{code="200",service="' + SVC + '"} -5\n',
    'traefik_service_requests_total{code="200",service="' + SVC + '"} +Inf\n',
    'traefik_service_requests_total{code="200",service="' + SVC + '"}\n',
    'traefik_service_requests_total{code="200"} 5\n',  # no service label
    'traefik_service_request_duration_seconds_bucket{service="' + SVC + '",le="soon"} 5\n',
    'traefik_service_requests_total{code="200",service="' + SVC + '"} 1e400\n',
])
def test_a_scrape_that_is_not_traefiks_counts_nothing(text: str) -> None:
    assert metrics.window(None, metrics.parse(text), SVC) == Window()


def test_a_scrape_is_read_only_up_to_its_limit() -> None:
    line = 'traefik_service_requests_total{code="200",service="' + SVC + '"} 1\n'
    text = line * (metrics.LIMIT // len(line) + 1000)
    assert metrics.window(None, metrics.parse(text), SVC).requests == metrics.LIMIT // len(line)


def promoting(**kw: object) -> Rollout:
    return Rollout(weights={"v1": 80, "v2": 20}, target={"v1": 0, "v2": 100}, increment=20, interval=2.0,
                   state=State.PROMOTING, promoting="v2", rollback_to={"v1": 100, "v2": 0}, last_step=100.0,
                   served=frozenset({"v1", "v2"}), **kw)  # type: ignore[arg-type]


READY = {"v1": Revision(True, 1), "v2": Revision(True, 1)}


@pytest.mark.parametrize(("new", "old", "verdict"), [
    (Window(20, 4, 0.01), Window(80, 0, 0.01),
     "rolled back: v2 answered 20% of 20 requests with 5xx (more than 5%; the revisions before it 0%)"),
    (Window(9, 9, 0.01), Window(80, 0, 0.01), ""),  # too few requests to judge by
    (Window(20, 4, 0.01), Window(80, 20, 0.01), ""),  # the old one fails as often: not the new one's doing
    (Window(20, 1, 0.01), Window(80, 0, 0.01), ""),  # 5%: not more than the bound
    (Window(20, 0, 1.5), Window(80, 0, 0.05),
     "rolled back: v2's p95 latency was 1500ms (more than 1s; the revisions before it 50ms)"),
    (Window(20, 0, 1.5), Window(80, 0, 2.0), ""),  # slower than the bound, but faster than the old one
    (Window(20, 0, 1.5), Window(), "rolled back: v2's p95 latency was 1500ms (more than 1s; the revisions "
                                   "before it no requests)"),
])
def test_judge(new: Window, old: Window, verdict: str) -> None:
    assert rollout.judge(promoting(), {"v1": old, "v2": new}) == verdict


def test_a_failing_window_rolls_back_at_once_and_without_metrics_nothing_is_judged() -> None:
    bad = {"v1": Window(80, 0, 0.01), "v2": Window(20, 10, 0.01)}
    result = rollout.step(promoting(), READY, 100.5, bad)  # mid-interval: no step was due
    assert result.rollout.state == State.ROLLED_BACK and result.rollout.weights == {"v1": 100, "v2": 0}
    assert result.events[0].startswith("rolled back: v2 answered 50% of 20 requests")
    assert rollout.step(promoting(), READY, 100.5, None).rollout == promoting()  # by readiness alone: waits
    stepped = rollout.step(promoting(), READY, 102.0, None).rollout
    assert stepped.weights == {"v1": 60, "v2": 40} and stepped.state == State.PROMOTING
    # per-app bounds, kept on the TraefikService
    strict = promoting(max_error_rate=0.6, max_latency=2.0)
    assert rollout.step(strict, READY, 100.5, bad).rollout.state == State.PROMOTING
    back = rollout.from_annotations(strict.weights, strict.annotations())
    assert (back.max_error_rate, back.max_latency) == (0.6, 2.0)
