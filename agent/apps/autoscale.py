"""Replicas on requests, pure: how many a request-scaled revision should run.

A revision whose scale is ``MIN-MAX,concurrency=N`` (or ``,rps=N``) is scaled by the controller,
not by a HorizontalPodAutoscaler, from Traefik's counters over the last ``WINDOW`` seconds
(``metrics.Window``): the requests in flight on average (the seconds spent answering, divided by
the window: Little's law) or the requests per second, divided by what one replica should take.
It scales up at once, down only after ``DOWN_AFTER`` seconds at its size (no flapping on a
burst), and a range from 0 goes to sleep after ``idle`` seconds without a request: the controller
then answers for it (agent/apps/activator.py) and wakes it on the next request.
"""

from __future__ import annotations

import math

from agent.apps.metrics import Window
from agent.apps.spec import Scale

WINDOW = 10.0  # seconds of traffic a decision looks at
DOWN_AFTER = 10.0  # seconds at one size before scaling down


def demand(scale: Scale, load: Window, seconds: float) -> float:
    """Requests in flight (concurrency) or per second (rps) over the window."""
    if seconds <= 0:
        return 0.0
    return (load.busy if scale.on == "concurrency" else load.requests) / seconds


def replicas(scale: Scale, current: int, load: Window, seconds: float, idle_for: float, steady_for: float) -> int:
    """The replicas a request-scaled revision should run now. ``current``: its replicas (0: it
    sleeps, and only a request wakes it); ``load`` over the last ``seconds``; ``idle_for``: seconds
    since its last request; ``steady_for``: seconds since its replicas last changed."""
    if current == 0:
        return 0 if scale.min == 0 else scale.min
    if scale.min == 0 and idle_for >= scale.idle:
        return 0
    need = math.ceil(demand(scale, load, seconds) / scale.target - 1e-9) if scale.target > 0 else 1
    want = min(scale.max, max(scale.min, 1, need))
    if want < current and steady_for < DOWN_AFTER:
        return current
    return want
