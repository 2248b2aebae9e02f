"""The controller's rules, pure: where an app's weights go next, and which revisions scale.

An app's rollout is read from (and written back to) its TraefikService: the weights Traefik uses
are in its spec, the rest in annotations. ``step`` is called every tick with the revisions'
readiness and the time; it never gives weight to a revision that is not Ready, holds while a
weighted revision is unready, undoes a promotion whose revision stays unready for longer than
``rollback_after`` or whose traffic over the last step (Traefik's counters, ``metrics.Window``)
was worse than the revisions it replaces and past the app's bounds (``judge``), and scales down a
revision that served before and is now at 0%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import StrEnum

from agent.apps.metrics import MIN_REQUESTS, QUANTILE, Window
from agent.apps.spec import (
    DOMAIN,
    INCREMENT,
    INTERVAL,
    MAX_ERROR_RATE,
    MAX_LATENCY,
    ROLLBACK_AFTER,
    format_error_rate,
    format_interval,
    parse_error_rate,
    parse_interval,
    parse_latency,
    problem,
)

TARGET, INCREMENT_KEY, INTERVAL_KEY = f"{DOMAIN}/target", f"{DOMAIN}/increment", f"{DOMAIN}/interval"
STATE, PROMOTING, ROLLBACK_TO = f"{DOMAIN}/rollout", f"{DOMAIN}/promoting", f"{DOMAIN}/rollback-to"
LAST_STEP, UNREADY_SINCE, MESSAGE = f"{DOMAIN}/last-step", f"{DOMAIN}/unready-since", f"{DOMAIN}/message"
SERVED = f"{DOMAIN}/served"  # revisions that have had weight: at 0% again, they are scaled down
ROLLBACK_AFTER_KEY = f"{DOMAIN}/rollback-after"
MAX_ERROR_RATE_KEY, MAX_LATENCY_KEY = f"{DOMAIN}/max-error-rate", f"{DOMAIN}/max-latency"


class State(StrEnum):
    IDLE = "idle"  # the weights are at their target
    PROMOTING = "promoting"  # stepping toward the target
    PAUSED = "paused"  # basalt app promote --pause: no steps until --resume
    ROLLED_BACK = "rolled-back"  # the promoted revision stayed unready: back to the weights before it
    ABORTED = "aborted"  # basalt app promote --abort: back to the weights before it


@dataclass(frozen=True)
class Rollout:
    weights: dict[str, int]
    target: dict[str, int]
    increment: int = INCREMENT
    interval: float = INTERVAL
    state: State = State.IDLE
    promoting: str = ""  # the revision a promotion gives all traffic to ("" for plain weight changes)
    rollback_to: dict[str, int] = field(default_factory=dict)
    last_step: float = 0.0
    unready_since: float | None = None
    served: frozenset[str] = frozenset()
    rollback_after: float = ROLLBACK_AFTER
    message: str = ""
    max_error_rate: float = MAX_ERROR_RATE
    max_latency: float = MAX_LATENCY

    def annotations(self) -> dict[str, str]:
        out = {TARGET: _weights_text(self.target), INCREMENT_KEY: str(self.increment),
               INTERVAL_KEY: format_interval(self.interval), STATE: str(self.state),
               SERVED: ",".join(sorted(self.served)), ROLLBACK_AFTER_KEY: format_interval(self.rollback_after),
               MAX_ERROR_RATE_KEY: format_error_rate(self.max_error_rate),
               MAX_LATENCY_KEY: format_interval(self.max_latency)}
        if self.promoting:
            out[PROMOTING] = self.promoting
        if self.rollback_to:
            out[ROLLBACK_TO] = _weights_text(self.rollback_to)
        if self.last_step:
            out[LAST_STEP] = f"{self.last_step:.3f}"
        if self.unready_since is not None:
            out[UNREADY_SINCE] = f"{self.unready_since:.3f}"
        if self.message:
            out[MESSAGE] = self.message
        return out


def _weights_text(weights: dict[str, int]) -> str:
    return json.dumps(dict(sorted(weights.items())), separators=(",", ":"))


def from_annotations(weights: dict[str, int], annotations: dict[str, str]) -> Rollout:
    """The rollout kept on a TraefikService (an edit by kubectl included: bad values are errors)."""
    def weights_of(key: str) -> dict[str, int]:
        try:
            value = json.loads(annotations.get(key) or "{}")
        except ValueError:
            raise problem(f"annotation {key}: {annotations[key]!r} is not JSON",
                          'write it as {"v1":100}') from None
        if not isinstance(value, dict) or not all(isinstance(v, int) and v >= 0 for v in value.values()):
            raise problem(f"annotation {key}: {annotations[key]!r} is not a map of revisions to weights",
                          'write it as {"v1":50,"v2":50}')
        return {str(k): int(v) for k, v in value.items()}
    try:
        state = State(annotations.get(STATE, "idle"))
    except ValueError:
        raise problem(f"annotation {STATE}: {annotations[STATE]!r} is not one of {[str(s) for s in State]}",
                      "set it to idle, promoting or paused") from None
    increment = annotations.get(INCREMENT_KEY, str(INCREMENT))
    if not increment.isdigit() or not 1 <= int(increment) <= 100:
        raise problem(f"annotation {INCREMENT_KEY}: {increment!r} is not 1-100", "points per step, e.g. 5")
    since = annotations.get(UNREADY_SINCE)
    return Rollout(weights=dict(weights), target=weights_of(TARGET) or dict(weights), increment=int(increment),
                   interval=parse_interval(annotations.get(INTERVAL_KEY, "5s"), INTERVAL_KEY), state=state,
                   promoting=annotations.get(PROMOTING, ""), rollback_to=weights_of(ROLLBACK_TO),
                   last_step=float(annotations.get(LAST_STEP) or 0), unready_since=float(since) if since else None,
                   served=frozenset(x for x in annotations.get(SERVED, "").split(",") if x),
                   rollback_after=parse_interval(annotations.get(ROLLBACK_AFTER_KEY, "120s"), ROLLBACK_AFTER_KEY),
                   message=annotations.get(MESSAGE, ""),
                   max_error_rate=parse_error_rate(annotations.get(MAX_ERROR_RATE_KEY, format_error_rate(
                       MAX_ERROR_RATE)), f"annotation {MAX_ERROR_RATE_KEY}"),
                   max_latency=parse_latency(annotations.get(MAX_LATENCY_KEY, format_interval(MAX_LATENCY)),
                                             f"annotation {MAX_LATENCY_KEY}"))


def check_weights(weights: dict[str, int], revisions: set[str] | list[str]) -> dict[str, int]:
    """Explicit weights (``basalt app weight``): known revisions, 0-100 each, 100 in all; the
    revisions not named get 0."""
    unknown = sorted(set(weights) - set(revisions))
    if unknown:
        raise problem(f"no revision {', '.join(unknown)}", f"the revisions are: {', '.join(sorted(revisions))}")
    bad = [f"{r}={w}" for r, w in weights.items() if not 0 <= w <= 100]
    if bad:
        raise problem(f"{', '.join(bad)}: a weight is 0-100 (percent)", "e.g. v1=90 v2=10")
    total = sum(weights.values())
    if total != 100:
        named = " + ".join(f"{r}={w}" for r, w in sorted(weights.items()))
        raise problem(f"the weights add up to {total}, not 100 ({named})",
                      "give every revision that gets traffic; the ones not named get 0")
    return {r: weights.get(r, 0) for r in sorted(revisions)}


def move(weights: dict[str, int], target: dict[str, int], increment: int) -> dict[str, int]:
    """One step: at most ``increment`` points move from the revisions above their target to the
    ones below it (largest gap first, then by name); the total stays what it was."""
    names = sorted(set(weights) | set(target))
    now = {r: weights.get(r, 0) for r in names}
    goal = {r: target.get(r, 0) for r in names}
    shift = min(increment, sum(max(0, goal[r] - now[r]) for r in names),
                sum(max(0, now[r] - goal[r]) for r in names))
    for sign, order in ((-1, sorted(names, key=lambda r: (goal[r] - now[r], r))),
                        (1, sorted(names, key=lambda r: (now[r] - goal[r], r)))):
        left = shift
        for r in order:
            room = (now[r] - goal[r]) if sign < 0 else (goal[r] - now[r])
            take = min(left, max(0, room))
            now[r] += sign * take
            left -= take
    return now


@dataclass(frozen=True)
class Revision:
    """What the controller sees of a revision's Deployment."""

    ready: bool
    replicas: int  # its spec: 0 when scaled down
    want: int = 1  # its replicas when it serves (the low end of its scale)
    sleeps: bool = False  # a request-scaled range from 0, at 0: it serves (the controller wakes it on a request)


@dataclass(frozen=True)
class Step:
    rollout: Rollout
    scale: dict[str, int] = field(default_factory=dict)  # revision → replicas to set
    events: tuple[str, ...] = ()

    def after(self, event: str) -> Step:
        return replace(self, events=(event, *self.events))


def _undo(r: Rollout, state: State, now: float, message: str) -> Rollout:
    back = r.rollback_to or r.weights
    return replace(r, target=dict(back), state=state, increment=100, last_step=0.0, unready_since=None,
                   message=message, promoting=r.promoting)


def judge(r: Rollout, traffic: dict[str, Window]) -> str:
    """Why the promoted revision's recent traffic (the controller's window: since the step before
    the last) fails the app's bounds ('' when it
    does not, or when it had fewer than MIN_REQUESTS requests to judge by). It fails on errors when
    its 5xx share is above ``max_error_rate`` and above that of the revisions it replaces, and on
    latency when its p95 is above ``max_latency`` and above theirs."""
    new = traffic.get(r.promoting, Window())
    if new.requests < MIN_REQUESTS:
        return ""
    old = Window()
    for x, w in sorted(r.rollback_to.items()):
        if x != r.promoting and w > 0:
            old = old + traffic.get(x, Window())
    if new.error_rate > r.max_error_rate and new.error_rate > old.error_rate:
        return (f"rolled back: {r.promoting} answered {new.error_rate:.0%} of {new.requests:.0f} requests with "
                f"5xx (more than {format_error_rate(r.max_error_rate)}; the revisions before it {old.error_rate:.0%})")
    if (new.latency is not None and new.latency > r.max_latency
            and (old.latency is None or new.latency > old.latency)):
        before = f"{old.latency * 1000:.0f}ms" if old.latency is not None else "no requests"
        return (f"rolled back: {r.promoting}'s p{QUANTILE * 100:.0f} latency was {new.latency * 1000:.0f}ms "
                f"(more than {format_interval(r.max_latency)}; the revisions before it {before})")
    return ""


def step(r: Rollout, revisions: dict[str, Revision], now: float, traffic: dict[str, Window] | None = None) -> Step:
    """One tick. ``traffic``: what each revision served since the last step (None: no metrics, so
    promotions go by readiness alone)."""
    events: list[str] = []
    scale: dict[str, int] = {}
    wanted = sorted(x for x in set(r.weights) | set(r.target) if r.weights.get(x, 0) > 0 or r.target.get(x, 0) > 0)
    missing = [x for x in wanted if x not in revisions]
    if missing:
        return Step(replace(r, message=f"held: no Deployment for revision {', '.join(missing)}"),
                    events=(f"held: no Deployment for revision {', '.join(missing)}",))
    # a revision that is to serve again, but was scaled down: up first (it is not Ready until then);
    # one that sleeps is woken by its first request instead
    for x in wanted:
        if revisions[x].replicas == 0 and not revisions[x].sleeps:
            scale[x] = max(1, revisions[x].want)
    if r.state == State.PAUSED:
        return Step(r, scale)
    # A promotion holds while any revision with (or due) weight is unready; undoing one (rollback,
    # abort, explicit weights) needs only the revisions that gain to be Ready.
    gaining = [x for x in wanted if r.target.get(x, 0) > r.weights.get(x, 0)]
    unready = [x for x in (wanted if r.state == State.PROMOTING else gaining) if not revisions[x].ready]
    if r.weights != r.target and unready:
        since = r.unready_since if r.unready_since is not None else now
        if r.state == State.PROMOTING and r.promoting in unready and now - since > r.rollback_after:
            msg = (f"rolled back: {r.promoting} was not Ready for {now - since:.0f}s "
                   f"(more than {r.rollback_after:g}s)")
            return step(_undo(r, State.ROLLED_BACK, now, msg), revisions, now).after(msg)
        msg = f"held: {', '.join(unready)} not Ready"
        changed = since != r.unready_since or msg != r.message
        return Step(replace(r, unready_since=since, message=msg), scale, (msg,) if changed else ())
    r = replace(r, unready_since=None)
    verdict = judge(r, traffic) if traffic is not None and r.state == State.PROMOTING else ""
    if verdict:  # at once, not at the next step
        return step(_undo(r, State.ROLLED_BACK, now, verdict), revisions, now).after(verdict)
    if r.weights != r.target and now - r.last_step >= r.interval:
        # never to an unready revision: only the ready ones may gain (the gate above holds otherwise)
        weights = move(r.weights, r.target, r.increment)
        # on the beat (the step was due at last_step + interval): a late tick does not slow the promotion
        due = r.last_step + r.interval
        r = replace(r, weights=weights, last_step=due if r.last_step and now - due < r.interval else now,
                    served=r.served | {x for x, w in weights.items() if w > 0},
                    message=r.message if r.state in (State.ROLLED_BACK, State.ABORTED) else "")
        events.append("weights " + " ".join(f"{x}={w}" for x, w in sorted(weights.items())))
    if r.weights == r.target:
        if r.state == State.PROMOTING:
            events.append(f"promoted {r.promoting}" if r.promoting else "weights at their target")
        state = State.IDLE if r.state in (State.PROMOTING, State.IDLE) else r.state
        r = replace(r, state=state, message="" if state == State.IDLE else r.message)
        for x, rev in sorted(revisions.items()):
            if (r.weights.get(x, 0) == 0 and r.target.get(x, 0) == 0 and x in r.served and rev.replicas > 0
                    and not rev.sleeps):
                scale[x] = 0
                events.append(f"scaled {x} down (0%)")
    return Step(r, scale, tuple(events))

