"""The apps controller: every tick, each app's rollout stepped by ``rollout.step`` and written back.

It runs in the cluster as a Deployment (docs/apps.md), with a service account that may read
Deployments and change their replicas, and read and write TraefikServices. One tick reads every
Basalt app's TraefikService and Deployments (two list calls), steps each rollout, and writes only
what changed: the TraefikService (with the resourceVersion it read, so a command run meanwhile
wins and the app is stepped again on the next tick) and replica counts. It ticks every second while
a rollout is under way, and every ``IDLE_TICK`` seconds when none is.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

from agent.apps import kube, resources, rollout
from agent.apps.spec import APP, MANAGED
from agent.errors import BasaltError

IDLE_TICK = 10.0
BUSY_TICK = 1.0
SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED.items())


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"time": round(time.time(), 3), "event": event, **fields}, sort_keys=True), flush=True)


def revisions_of(state: resources.AppState) -> dict[str, rollout.Revision]:
    return {name: rollout.Revision(ready=r.ready, replicas=r.replicas, want=r.scale.min)
            for name, r in state.revisions.items()}


def tick(client: kube.Client, now: float) -> float:
    """One pass over every app; the seconds until the next is due."""
    services = client.list("TraefikService", None, SELECTOR)
    deployments = client.list("Deployment", None, SELECTOR)
    wait = IDLE_TICK
    for svc in services:
        meta = svc["metadata"]
        app, namespace = meta["labels"].get(APP, ""), meta.get("namespace", "default")
        try:
            state = resources.read([svc, *deployments], app, namespace)
        except Exception as exc:  # noqa: BLE001 - one app's bad annotation must not stop the others
            log("error", app=app, namespace=namespace, message=str(exc))
            continue
        if state is None:
            continue
        result = rollout.step(state.rollout, revisions_of(state), now)
        for event in result.events:
            log("step", app=app, namespace=namespace, message=event)
        for revision, replicas in sorted(result.scale.items()):
            client.patch("Deployment", namespace, resources.revision_name(app, revision),
                         {"spec": {"replicas": replicas}})
        if result.rollout != state.rollout:
            write(client, svc, state, result.rollout)
        r = result.rollout
        if r.weights != r.target and r.state != rollout.State.PAUSED:
            # at the next step's time, and meanwhile each second (readiness)
            wait = min(wait, BUSY_TICK, max(0.05, r.last_step + r.interval - now))
    return wait


def write_or_raise(client: kube.Client, current: dict[str, Any], state: resources.AppState,
                   plan: rollout.Rollout) -> None:
    """The TraefikService with ``plan``, if it is still the one read (else kube.Conflict)."""
    obj = resources.app_objects(state.name, state.namespace, state.host, state.port, plan, list(state.revisions))[0]
    obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    client.apply(obj)


def write(client: kube.Client, current: dict[str, Any], state: resources.AppState, plan: rollout.Rollout) -> None:
    try:
        write_or_raise(client, current, state, plan)
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
    log("start", idle_tick=IDLE_TICK, busy_tick=BUSY_TICK)
    while not stop:
        try:
            wait = tick(client, time.time())
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

