"""The apps controller's weight-stepping rules (agent/apps/rollout.py) as tables: one tick's input
(rollout, revisions' readiness, time) → its weights, state, scaling and events."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.apps import rollout
from agent.apps.rollout import Revision, Rollout, State, move, step
from agent.errors import BasaltError

UP = Revision(ready=True, replicas=1)
DOWN = Revision(ready=False, replicas=1)
OFF = Revision(ready=False, replicas=0, want=2)


def promoting(weights: dict[str, int], target: str = "v2", **kw: object) -> Rollout:
    return Rollout(weights=weights, target={r: (100 if r == target else 0) for r in weights}, promoting=target,
                   state=State.PROMOTING, rollback_to=dict(weights), served=frozenset(r for r, w in weights.items()
                                                                                      if w), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("weights", "target", "increment", "expected"), [
    ({"v1": 100, "v2": 0}, {"v1": 0, "v2": 100}, 5, {"v1": 95, "v2": 5}),
    ({"v1": 3, "v2": 97}, {"v1": 0, "v2": 100}, 5, {"v1": 0, "v2": 100}),  # the last step is short
    ({"v1": 100, "v2": 0}, {"v1": 0, "v2": 100}, 100, {"v1": 0, "v2": 100}),
    ({"v1": 50, "v2": 50, "v3": 0}, {"v1": 0, "v2": 0, "v3": 100}, 10, {"v1": 40, "v2": 50, "v3": 10}),
    ({"v1": 60, "v2": 40, "v3": 0}, {"v1": 0, "v2": 50, "v3": 50}, 30, {"v1": 30, "v2": 40, "v3": 30}),  # gap first
    ({"v1": 100}, {"v1": 100}, 5, {"v1": 100}),
])
def test_one_step_moves_at_most_the_increment_and_keeps_100(weights: dict[str, int], target: dict[str, int],
                                                            increment: int, expected: dict[str, int]) -> None:
    got = move(weights, target, increment)
    assert got == expected
    assert sum(got.values()) == 100


def test_a_promotion_steps_on_the_interval_and_ends_idle_with_the_old_revision_scaled_down() -> None:
    r = promoting({"v1": 100, "v2": 0})
    revisions = {"v1": UP, "v2": UP}
    first = step(r, revisions, now=1000.0)
    assert first.rollout.weights == {"v1": 95, "v2": 5} and first.events == ("weights v1=95 v2=5",)
    assert first.rollout.last_step == 1000.0
    early = step(first.rollout, revisions, now=1004.9)  # before the interval: nothing
    assert early.rollout == first.rollout and early.events == ()
    on_time = step(first.rollout, revisions, now=1005.7)  # a late tick keeps the beat
    assert on_time.rollout.weights == {"v1": 90, "v2": 10} and on_time.rollout.last_step == 1005.0
    r, now, steps = first.rollout, 1000.0, 1
    while r.weights != r.target:
        now += 5.0
        result = step(r, revisions, now)
        r, steps = result.rollout, steps + 1
    assert steps == 20 and now - 1000.0 == 95.0  # 0 → 100% in 20 steps: the first at once, then every 5 s
    assert r.state == State.IDLE
    assert result.events == ("weights v1=0 v2=100", "promoted v2", "scaled v1 down (0%)")
    assert result.scale == {"v1": 0}
    assert r.served == {"v1", "v2"}


@pytest.mark.parametrize(("revisions", "weights", "message"), [
    ({"v1": UP, "v2": DOWN}, {"v1": 100, "v2": 0}, "held: v2 not Ready"),  # never weight to an unready one
    ({"v1": UP, "v2": DOWN}, {"v1": 60, "v2": 40}, "held: v2 not Ready"),  # unready mid-promotion
    ({"v1": DOWN, "v2": UP}, {"v1": 60, "v2": 40}, "held: v1 not Ready"),  # any weighted revision
])
def test_an_unready_revision_holds_the_promotion(revisions: dict[str, Revision], weights: dict[str, int],
                                                 message: str) -> None:
    r = promoting(weights)
    held = step(r, revisions, now=500.0)
    assert held.rollout.weights == weights and held.rollout.message == message
    assert held.rollout.unready_since == 500.0 and held.events == (message,)
    again = step(held.rollout, revisions, now=501.0)  # still held: said once, the time kept
    assert again.rollout == held.rollout and again.events == ()
    ready = step(held.rollout, {k: UP for k in revisions}, now=502.0)  # Ready again: it goes on
    assert ready.rollout.weights == move(weights, r.target, 5) and ready.rollout.unready_since is None


def test_a_promoted_revision_unready_past_the_bound_rolls_back_at_once() -> None:
    r = replace(promoting({"v1": 100, "v2": 0}), weights={"v1": 70, "v2": 30}, rollback_after=120.0,
                served=frozenset({"v1", "v2"}))
    revisions = {"v1": UP, "v2": DOWN}
    held = step(r, revisions, now=0.0 + 10)
    within = step(held.rollout, revisions, now=130.0)  # 120 s unready: not more than the bound yet
    assert within.rollout.weights == {"v1": 70, "v2": 30} and within.rollout.state == State.PROMOTING
    back = step(within.rollout, revisions, now=130.5)
    msg = "rolled back: v2 was not Ready for 120s (more than 120s)"
    assert back.rollout.state == State.ROLLED_BACK and back.rollout.message == msg
    assert back.rollout.weights == {"v1": 100, "v2": 0} == back.rollout.target  # one step: increment 100
    assert back.events[0] == msg and "scaled v2 down (0%)" in back.events
    assert back.scale == {"v2": 0}
    assert step(back.rollout, {"v1": UP, "v2": replace(DOWN, replicas=0)}, now=200.0).events == ()


def test_pause_holds_resume_goes_on_abort_returns_the_weights_before() -> None:
    r = replace(promoting({"v1": 100, "v2": 0}), weights={"v1": 80, "v2": 20}, last_step=10.0)
    revisions = {"v1": UP, "v2": UP}
    paused = step(replace(r, state=State.PAUSED), revisions, now=100.0)
    assert paused.rollout.weights == {"v1": 80, "v2": 20} and paused.events == ()
    resumed = step(replace(paused.rollout, state=State.PROMOTING), revisions, now=100.0)
    assert resumed.rollout.weights == {"v1": 75, "v2": 25}
    aborted = replace(resumed.rollout, target={"v1": 100, "v2": 0}, state=State.ABORTED, increment=100, last_step=0.0)
    done = step(aborted, {"v1": UP, "v2": DOWN}, now=101.0)  # back to v1, though v2 is unready now
    assert done.rollout.weights == {"v1": 100, "v2": 0} and done.rollout.state == State.ABORTED
    assert done.scale == {"v2": 0}


def test_a_scaled_down_revision_is_woken_before_it_gets_weight() -> None:
    r = promoting({"v1": 0, "v2": 100}, target="v1")
    got = step(r, {"v1": OFF, "v2": UP}, now=50.0)
    assert got.scale == {"v1": 2}  # the low end of its scale
    assert got.rollout.weights == {"v1": 0, "v2": 100} and got.rollout.message == "held: v1 not Ready"


def test_a_staged_revision_at_0_is_not_scaled_down() -> None:
    r = Rollout(weights={"v1": 100, "v2": 0}, target={"v1": 100, "v2": 0}, served=frozenset({"v1"}))
    assert step(r, {"v1": UP, "v2": UP}, now=1.0).scale == {}


@pytest.mark.parametrize(("weights", "message"), [
    ({"v1": 50, "v2": 40}, "the weights add up to 90, not 100 (v1=50 + v2=40)"),
    ({"v1": 70, "v2": 70}, "the weights add up to 140, not 100 (v1=70 + v2=70)"),
    ({"v1": 50, "v3": 50}, "no revision v3"),
    ({"v1": 150, "v2": -50}, "v1=150, v2=-50: a weight is 0-100 (percent)"),
])
def test_explicit_weights_that_do_not_make_100_are_refused(weights: dict[str, int], message: str) -> None:
    with pytest.raises(BasaltError) as exc:
        rollout.check_weights(weights, ["v1", "v2"])
    assert exc.value.problems[0].message == message


def test_explicit_weights_name_some_revisions_the_rest_get_0() -> None:
    assert rollout.check_weights({"v2": 100}, ["v1", "v2", "v3"]) == {"v1": 0, "v2": 100, "v3": 0}


def test_the_rollout_round_trips_through_annotations_and_bad_edits_are_errors() -> None:
    r = replace(promoting({"v1": 60, "v2": 40}), last_step=12.5, unready_since=11.0, message="held: v2 not Ready")
    assert rollout.from_annotations(r.weights, r.annotations()) == r
    for key, value, message in [
        (rollout.TARGET, "{v2: 100", 'annotation basalt.io/target: \'{v2: 100\' is not JSON'),
        (rollout.STATE, "running", "annotation basalt.io/rollout: 'running' is not one of ['idle', 'promoting', "
                                   "'paused', 'rolled-back', 'aborted']"),
        (rollout.INCREMENT_KEY, "0", "annotation basalt.io/increment: '0' is not 1-100"),
        (rollout.INTERVAL_KEY, "soon", "'soon' is not a duration"),
        (rollout.MAX_ERROR_RATE_KEY, "150%", "'150%' is not an error rate"),
        (rollout.MAX_ERROR_RATE_KEY, "lots", "'lots' is not an error rate"),
        (rollout.MAX_LATENCY_KEY, "0.0001s", "'0.0001s' is out of range"),
        (rollout.MAX_LATENCY_KEY, "", "'' is not a duration"),
    ]:
        with pytest.raises(BasaltError) as exc:
            rollout.from_annotations(r.weights, {**r.annotations(), key: value})
        assert exc.value.problems[0].message == message
