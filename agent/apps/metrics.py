"""Traefik's own Prometheus metrics, read by the controller: no Prometheus server.

Traefik (k3s bundles it, with metrics on its ``metrics`` entry point, port 9100) counts every
request per service, status code and method (``traefik_service_requests_total``) and keeps a
histogram of their durations (``traefik_service_request_duration_seconds_bucket``). A revision's
Service ``APP-REV`` on port ``P`` in namespace ``NS`` is Traefik's service ``NS-APP-REV-P@kubernetescrd``,
whether a request reached it through the app's weights or its preview host.

The counters only grow (a Traefik restart resets them: a window that would be negative is empty).
``Snapshot`` is one scrape; ``window(before, after, service)`` what happened between two: requests,
5xx answers, and a latency percentile interpolated within the histogram's buckets, as Prometheus's
``histogram_quantile`` does. Parsing is bounded (``LIMIT`` bytes) and keeps only those two families.
"""

from __future__ import annotations

import http.client
import math
import re
import urllib.parse
from dataclasses import dataclass, field

REQUESTS = "traefik_service_requests_total"
BUCKETS = "traefik_service_request_duration_seconds_bucket"
SECONDS = "traefik_service_request_duration_seconds_sum"  # time spent answering: requests in flight × time
LIMIT = 16 << 20  # bytes of a scrape read at most (1000 services is about 2 MB)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
QUANTILE = 0.95
MIN_REQUESTS = 10  # fewer requests in a window than this: no verdict on it


def service(namespace: str, name: str, port: int) -> str:
    """Traefik's name for a Kubernetes Service reached from an IngressRoute or a TraefikService."""
    return f"{namespace}-{name}-{port}@kubernetescrd"


@dataclass
class Counts:
    codes: dict[str, float] = field(default_factory=dict)  # status code → requests
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (s) → requests at most that long
    seconds: float = 0.0  # the sum of their durations


Snapshot = dict[str, Counts]  # service → its counters


def parse(text: str) -> Snapshot:
    """The two families from a scrape in Prometheus's text format; everything else skipped."""
    out: Snapshot = {}
    for line in text[:LIMIT].splitlines():
        if not line.startswith((REQUESTS + "{", BUCKETS + "{", SECONDS + "{")):
            continue
        name, _, rest = line.partition("{")
        labels_text, _, value_text = rest.rpartition("}")
        try:
            value = float(value_text.split()[0])
        except (ValueError, IndexError):
            continue
        if not math.isfinite(value) or value < 0:
            continue
        labels = dict(LABEL.findall(labels_text))
        svc = labels.get("service")
        if not svc:
            continue
        counts = out.setdefault(svc, Counts())
        if name == REQUESTS:
            code = labels.get("code", "")
            counts.codes[code] = counts.codes.get(code, 0.0) + value
        elif name == SECONDS:
            counts.seconds += value
        else:
            try:
                bound = float(labels.get("le", ""))  # "+Inf" reads as inf
            except ValueError:
                continue
            counts.buckets[bound] = counts.buckets.get(bound, 0.0) + value
    return out


@dataclass(frozen=True)
class Window:
    """What one revision served between two scrapes."""

    requests: float = 0.0
    errors: float = 0.0  # answered 5xx
    latency: float | None = None  # the QUANTILE of durations, seconds (None: no requests)
    busy: float = 0.0  # seconds spent answering (over a window of T seconds: busy / T requests in flight)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def __add__(self, other: Window) -> Window:
        """Two revisions' windows as one (the latency the worse of the two)."""
        lat = [x for x in (self.latency, other.latency) if x is not None]
        return Window(self.requests + other.requests, self.errors + other.errors, max(lat) if lat else None,
                      self.busy + other.busy)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile``: cumulative (bound, count) pairs, sorted; linear within a bucket; the
    highest finite bound when the rank falls in +Inf's."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    low_bound, low_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            if count == low_count:
                return bound
            return low_bound + (bound - low_bound) * (rank - low_count) / (count - low_count)
        low_bound, low_count = bound, count
    return low_bound


def _buckets(before: Snapshot | None, after: Snapshot, svc: str) -> list[tuple[float, float]]:
    """``svc``'s histogram between two scrapes: cumulative (bound, count) pairs, sorted."""
    now = after.get(svc, Counts())
    was = (before or {}).get(svc, Counts())
    return sorted((b, n - was.buckets.get(b, 0.0)) for b, n in now.buckets.items())


def window_quantile(before: Snapshot | None, after: Snapshot, svc: str, q: float) -> float | None:
    """Another quantile of the window's durations (``Window.latency`` is the QUANTILE)."""
    return quantile(q, _buckets(before, after, svc)) if window(before, after, svc).requests else None


def window(before: Snapshot | None, after: Snapshot, svc: str) -> Window:
    """What ``svc`` served between two scrapes (``before`` None: since Traefik started)."""
    now = after.get(svc)
    if now is None:
        return Window()
    was = (before or {}).get(svc, Counts())
    codes = {c: n - was.codes.get(c, 0.0) for c, n in now.codes.items()}
    if any(n < 0 for n in codes.values()):  # the counters were reset (Traefik restarted): nothing to judge
        return Window()
    requests = sum(codes.values())
    errors = sum(n for c, n in codes.items() if c.startswith("5"))
    return Window(requests, errors, quantile(QUANTILE, _buckets(before, after, svc)) if requests else None,
                  max(0.0, now.seconds - was.seconds))


def fetch(url: str, timeout: float = 5.0) -> str:
    """One scrape, at most ``LIMIT`` bytes."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url}: not an http:// URL")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/metrics", headers={"Accept": "text/plain"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"{url}: HTTP {resp.status}")
        return resp.read(LIMIT).decode(errors="replace")
    finally:
        conn.close()
