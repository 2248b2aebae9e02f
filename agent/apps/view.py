"""The traffic view: one small read-only HTML page the controller serves (no framework, no CDN,
no script): the apps, each revision's numbers as ``basalt app top`` shows them, and each app's
rollout history (its weights over time) as an inline SVG chart. It reloads itself every 5 s.

Served by the controller's HTTP listener (agent/apps/activator.py) for any host that is not an
app's: ``kubectl -n basalt-system port-forward deploy/basalt-apps-controller 8012``, then
http://127.0.0.1:8012/. ``History`` is what the controller's loop records; ``page`` is pure.
"""

from __future__ import annotations

import collections
import html

from agent.apps import top
from agent.apps.resources import AppState

KEEP = 360  # weight changes kept per app
LIMIT = 50 * 1024  # the page's budget (docs/apps.md); asserted by the tests


class History:
    """Each app's weights over time, as the controller's loop saw them (one point per change)."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str], collections.deque[tuple[float, dict[str, int]]]] = {}

    def record(self, states: list[AppState], now: float) -> None:
        for st in states:
            points = self.points.setdefault((st.namespace, st.name), collections.deque(maxlen=KEEP))
            if not points or points[-1][1] != st.rollout.weights:
                points.append((now, dict(st.rollout.weights)))


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def chart(points: list[tuple[float, dict[str, int]]], now: float, width: int = 480, height: int = 120) -> str:
    """Weights (0-100%) over time, one step line per revision."""
    if not points:
        return ""
    start = points[0][0]
    span = max(now - start, 1.0)
    revisions = sorted({r for _, w in points for r in w})
    lines = []
    for i, rev in enumerate(revisions):
        xy = []
        for n, (t, weights) in enumerate(points):
            end = points[n + 1][0] if n + 1 < len(points) else now
            y = height - weights.get(rev, 0) * height / 100
            xy += [f"{(t - start) * width / span:.1f},{y:.1f}", f"{(end - start) * width / span:.1f},{y:.1f}"]
        lines.append(f'<polyline fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="2" '
                     f'points="{" ".join(xy)}"><title>{html.escape(rev)}</title></polyline>')
    legend = " ".join(f'<span style="color:{COLOURS[i % len(COLOURS)]}">■ {html.escape(r)}</span>'
                      for i, r in enumerate(revisions))
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="weights over {span:.0f}s">{"".join(lines)}</svg><div class="legend">{legend} '
            f'(weights over the last {span:.0f} s)</div>')


def page(states: list[AppState], stats: list[tuple[str, ...]], history: History, now: float, note: str = "") -> str:
    """The whole page: ``stats`` are ``top.rows``."""
    out = ['<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">',
           "<title>Basalt apps</title><style>body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{padding:.3em .8em;text-align:right;"
           "border-bottom:1px solid #ddd}th:first-child,td:first-child{text-align:left}"
           "h2{margin:.8em 0 .2em}.state{color:#555}.legend{font-size:12px;color:#555}</style></head><body>",
           "<h1>Basalt apps</h1>"]
    if note:
        out.append(f"<p>{html.escape(note)}</p>")
    if not states:
        out.append("<p>No apps.</p>")
    for st in sorted(states, key=lambda s: (s.namespace, s.name)):
        name = st.name if st.namespace == "default" else f"{st.namespace}/{st.name}"
        state = str(st.rollout.state) + (f": {st.rollout.message}" if st.rollout.message else "")
        out.append(f'<h2 id="{html.escape(st.namespace)}-{html.escape(st.name)}">{html.escape(name)} '
                   f'<span class="state">({html.escape(state)})</span></h2>')
        out.append("<table><tr>" + "".join(f"<th>{h.title()}</th>" for h in top.HEAD[1:]) + "</tr>")
        for row in stats:
            if row[0] == name:
                out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:]) + "</tr>")
        out.append("</table>")
        out.append(chart(list(history.points.get((st.namespace, st.name), [])), now))
    out.append("</body></html>")
    return "\n".join(out)
