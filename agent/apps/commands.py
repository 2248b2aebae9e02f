"""What each ``basalt app`` command changes, pure: the app's objects now → objects to apply and
objects to delete. The CLI applies them (or, with ``--dry-run``, prints them)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from agent.apps import resources, rollout, spec
from agent.apps.resources import AppState, app_objects, require, revision_name, revision_objects
from agent.apps.rollout import Rollout, State
from agent.apps.spec import AppSpec, Scale, check_revision, preview_host, problem
from agent.apps.tls import Tls, secret_name

Ref = tuple[str, str, str]  # (kind, namespace, name)
KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "EndpointSlice", "TraefikService", "IngressRoute",
         "Middleware", "Secret")


def scheme(tls_mode: str) -> str:
    return "http" if tls_mode == "off" else "https"


@dataclass(frozen=True)
class Change:
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Ref] = field(default_factory=list)
    message: str = ""


def _app(state: AppState, plan: Rollout, revisions: list[str]) -> list[dict[str, Any]]:
    return app_objects(state.name, state.namespace, state.host, state.port, plan, revisions, state.tls, state.nodes)


def run(objects: list[dict[str, Any]], spec: AppSpec) -> Change:
    if resources.read(objects, spec.name, spec.namespace) is not None:
        raise problem(f"app {spec.name} exists already in namespace {spec.namespace}",
                      f"basalt app stage {spec.name} IMAGE adds a revision; basalt app rm {spec.name} removes it")
    plan = Rollout(weights={spec.revision: 100}, target={spec.revision: 100}, served=frozenset({spec.revision}))
    objs = app_objects(spec.name, spec.namespace, spec.url_host, spec.port, plan, [spec.revision], Tls(spec.tls))
    return Change([*revision_objects(spec), *objs],
                  message=f"{spec.name}: revision {spec.revision} at {scheme(spec.tls)}://{spec.url_host}/")


def next_revision(existing: list[str]) -> str:
    numbers = [int(m.group(1)) for r in existing if (m := re.fullmatch(r"v(\d+)", r))]
    return f"v{max(numbers, default=0) + 1}"


def stage(objects: list[dict[str, Any]], app: str, namespace: str, image: str, revision: str = "",
          scale: Scale | None = None, env: tuple[tuple[str, str], ...] = ()) -> Change:
    """A new revision beside the current one (its port, scale and environment, unless given), at
    0% of the app's traffic and at its own preview host."""
    state = require(objects, app, namespace)
    revision = check_revision(revision) if revision else next_revision(list(state.revisions))
    if revision in state.revisions:
        following = next_revision(list(state.revisions))
        raise problem(f"app {app} has a revision {revision} already",
                      f"give another --revision, or leave it out (the next is {following})")
    base = state.spec(state.current())
    spec = replace(base, image=image, revision=revision, scale=scale or base.scale,
                   env=tuple({**dict(base.env), **dict(env)}.items()))
    plan = replace(state.rollout, weights={**state.rollout.weights, revision: 0},
                   target={**state.rollout.target, revision: 0})
    return Change([*revision_objects(spec), *_app(state, plan, [*state.revisions, revision])],
                  message=f"{app}: revision {revision} staged at 0%, at "
                          f"{scheme(state.tls.mode)}://{preview_host(state.host, revision)}/")


def promote(objects: list[dict[str, Any]], app: str, namespace: str, revision: str,
            increment: int = rollout.INCREMENT, interval: float = rollout.INTERVAL,
            max_error_rate: float = spec.MAX_ERROR_RATE, max_latency: float = spec.MAX_LATENCY) -> Change:
    state = require(objects, app, namespace)
    if revision not in state.revisions:
        raise problem(f"app {app} has no revision {revision}", f"its revisions: {', '.join(sorted(state.revisions))}")
    if not 1 <= increment <= 100:
        raise problem(f"--increment {increment}: points per step are 1-100", "e.g. --increment 5")
    r = state.rollout
    if r.weights.get(revision, 0) == 100 and r.state != State.PROMOTING:
        raise problem(f"{app}: {revision} has all the traffic already", "stage a new revision first")
    target = {x: (100 if x == revision else 0) for x in state.revisions}
    plan = replace(r, target=target, rollback_to=dict(r.weights), promoting=revision, state=State.PROMOTING,
                   increment=increment, interval=interval, last_step=0.0, unready_since=None, message="",
                   max_error_rate=max_error_rate, max_latency=max_latency)
    steps = -(-(100 - r.weights.get(revision, 0)) // increment)
    return Change(_app(state, plan, list(state.revisions)),
                  message=f"{app}: promoting {revision}, {increment} points every {interval:g}s "
                          f"({steps} steps, about {max(0, steps - 1) * interval:g}s)")


def pause(objects: list[dict[str, Any]], app: str, namespace: str) -> Change:
    state = require(objects, app, namespace)
    if state.rollout.state != State.PROMOTING:
        raise problem(f"{app}: no promotion is running ({state.rollout.state})", "basalt app promote APP REVISION")
    plan = replace(state.rollout, state=State.PAUSED, message="paused")
    return Change(_app(state, plan, list(state.revisions)), message=f"{app}: paused at {_weights(plan.weights)}")


def resume(objects: list[dict[str, Any]], app: str, namespace: str) -> Change:
    state = require(objects, app, namespace)
    if state.rollout.state != State.PAUSED:
        raise problem(f"{app}: the promotion is not paused ({state.rollout.state})", "basalt app promote APP R "
                                                                                     "--pause pauses one")
    plan = replace(state.rollout, state=State.PROMOTING, message="", last_step=0.0)
    return Change(_app(state, plan, list(state.revisions)), message=f"{app}: resumed")


def abort(objects: list[dict[str, Any]], app: str, namespace: str) -> Change:
    state = require(objects, app, namespace)
    r = state.rollout
    if r.state not in (State.PROMOTING, State.PAUSED):
        raise problem(f"{app}: no promotion to abort ({r.state})", "basalt app weight sets weights directly")
    plan = replace(r, target=dict(r.rollback_to or r.weights), state=State.ABORTED, increment=100, last_step=0.0,
                   unready_since=None, message=f"aborted: back to {_weights(r.rollback_to or r.weights)}")
    return Change(_app(state, plan, list(state.revisions)), message=f"{app}: {plan.message}")


def weight(objects: list[dict[str, Any]], app: str, namespace: str, weights: dict[str, int],
           increment: int = 100, interval: float = rollout.INTERVAL) -> Change:
    """Explicit weights, at once (or ``increment`` points per step); the controller gives weight only
    to Ready revisions."""
    state = require(objects, app, namespace)
    target = rollout.check_weights(weights, list(state.revisions))
    r = state.rollout
    plan = replace(r, target=target, rollback_to=dict(r.weights), promoting="", state=State.PROMOTING,
                   increment=increment, interval=interval, last_step=0.0, unready_since=None, message="")
    return Change(_app(state, plan, list(state.revisions)), message=f"{app}: weights to {_weights(target)}")


def scale(objects: list[dict[str, Any]], app: str, namespace: str, new: Scale, revision: str = "") -> Change:
    state = require(objects, app, namespace)
    revision = revision or state.current()
    if revision not in state.revisions:
        raise problem(f"app {app} has no revision {revision}", f"its revisions: {', '.join(sorted(state.revisions))}")
    spec = replace(state.spec(revision), scale=new)
    down = state.revisions[revision].replicas == 0  # scaled down at 0%: stays so until it gets weight
    delete: list[Ref] = []
    if not new.autoscaled and state.revisions[revision].scale.autoscaled:
        delete.append(("HorizontalPodAutoscaler", namespace, revision_name(app, revision)))
    return Change(revision_objects(spec, replicas=0 if down else None), delete,
                  message=f"{app}: revision {revision} scale {new}")


def rm(objects: list[dict[str, Any]], app: str, namespace: str, revision: str = "") -> Change:
    state = require(objects, app, namespace)
    if not revision:
        refs = [(o["kind"], namespace, o["metadata"]["name"]) for o in state.objects if o.get("kind") in KINDS]
        refs += [_wake_slice(namespace, app, x) for x, rev in sorted(state.revisions.items()) if _sleeps(rev.scale)]
        if state.tls.mode == "site-ca":  # the controller's: made for the app, gone with it
            refs.append(("Secret", namespace, secret_name(app)))
        return Change(delete=sorted(refs, key=lambda x: (KINDS.index(x[0]), x[2])), message=f"{app}: removed")
    if revision not in state.revisions:
        raise problem(f"app {app} has no revision {revision}", f"its revisions: {', '.join(sorted(state.revisions))}")
    r = state.rollout
    if r.weights.get(revision, 0) or r.target.get(revision, 0):
        raise problem(f"{app}: revision {revision} has traffic ({r.weights.get(revision, 0)}%, target "
                      f"{r.target.get(revision, 0)}%)", f"move it away first: basalt app weight {app} ...")
    name = revision_name(app, revision)
    refs = [(k, namespace, name) for k in KINDS[:2]]
    if state.revisions[revision].scale.autoscaled:
        refs.append(("HorizontalPodAutoscaler", namespace, name))
    if _sleeps(state.revisions[revision].scale):
        refs.append(_wake_slice(namespace, app, revision))
    plan = replace(r, weights={k: v for k, v in r.weights.items() if k != revision},
                   target={k: v for k, v in r.target.items() if k != revision},
                   rollback_to={k: v for k, v in r.rollback_to.items() if k != revision},
                   served=r.served - {revision})
    return Change(_app(state, plan, [x for x in state.revisions if x != revision]), refs,
                  message=f"{app}: revision {revision} removed")


def _sleeps(scale: Scale) -> bool:
    """A range from 0 on requests: it may have a wake EndpointSlice (agent/apps/activator.py)."""
    return scale.by_requests and scale.min == 0


def _wake_slice(namespace: str, app: str, revision: str) -> tuple[str, str, str]:
    return ("EndpointSlice", namespace, f"{revision_name(app, revision)}-wake")


def _weights(weights: dict[str, int]) -> str:
    return " ".join(f"{r}={w}" for r, w in sorted(weights.items()))


def ps(states: list[AppState]) -> str:
    """Apps, revisions, weights (and targets), ready replicas, URLs (the app's host, each revision's
    preview host, and the app's name on each node's LAN)."""
    rows = [("APP", "REVISION", "IMAGE", "WEIGHT", "READY", "SCALE", "URL", "ROLLOUT")]
    for st in sorted(states, key=lambda s: (s.namespace, s.name)):
        r = st.rollout
        for rev in sorted(set(st.revisions) | set(r.weights)):
            info = st.revisions.get(rev)
            w, t = r.weights.get(rev, 0), r.target.get(rev, 0)
            rows.append((st.name if st.namespace == "default" else f"{st.namespace}/{st.name}", rev,
                         info.image if info else "(no Deployment)", f"{w}%" + (f" → {t}%" if t != w else ""),
                         f"{info.ready_replicas}/{info.replicas}" if info else "-", str(info.scale) if info else "-",
                         f"{scheme(st.tls.mode)}://{preview_host(st.host, rev)}/", ""))
        rows.append((st.name if st.namespace == "default" else f"{st.namespace}/{st.name}", "*", "", "", "", "",
                     f"{scheme(st.tls.mode)}://{st.host}/", f"{r.state}" + (f": {r.message}" if r.message else "")))
        # its names on each node's LAN (mDNS, agent/apps/mdns.py): REV-APP.NODE.local go the same way
        rows += [(st.name if st.namespace == "default" else f"{st.namespace}/{st.name}", "*", "", "", "", "",
                  f"{scheme(st.tls.mode)}://{h}/", "") for h in st.local_hosts]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)
