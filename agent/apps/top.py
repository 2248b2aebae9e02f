"""``basalt app top``: each revision's traffic from two scrapes of Traefik's metrics.

Per revision: its weight, requests per second, the share answered with 5xx, the p50 and p95
latency (interpolated within Traefik's histogram buckets, as ``histogram_quantile`` does), and its
ready replicas. ``table`` is pure; the CLI scrapes (``--metrics URL``, ``$BASALT_TRAEFIK_METRICS``,
or Traefik's pod through the API server's proxy) and prints it once or every ``--interval``.
"""

from __future__ import annotations

from agent.apps import metrics, resources
from agent.apps.resources import AppState

HEAD = ("APP", "REVISION", "WEIGHT", "RPS", "ERRORS", "P50", "P95", "READY")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}ms"


def rows(states: list[AppState], before: metrics.Snapshot, after: metrics.Snapshot,
         seconds: float) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for st in sorted(states, key=lambda s: (s.namespace, s.name)):
        name = st.name if st.namespace == "default" else f"{st.namespace}/{st.name}"
        for rev, info in sorted(st.revisions.items()):
            svc = metrics.service(st.namespace, resources.revision_name(st.name, rev), info.port)
            w = metrics.window(before, after, svc)
            p50 = metrics.window_quantile(before, after, svc, 0.5)
            rps = w.requests / seconds if seconds > 0 else 0.0
            out.append((name, rev, f"{st.rollout.weights.get(rev, 0)}%", f"{rps:.1f}",
                        f"{w.error_rate:.1%}" if w.requests else "-", _ms(p50), _ms(w.latency),
                        f"{info.ready_replicas}/{info.replicas}"))
    return out


def table(states: list[AppState], before: metrics.Snapshot, after: metrics.Snapshot, seconds: float) -> str:
    body = [HEAD, *rows(states, before, after, seconds)]
    widths = [max(len(row[i]) for row in body) for i in range(len(HEAD))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body)
