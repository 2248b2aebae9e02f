"""The CLI ↔ PID 1 request protocol: ``basalt config apply [--try S]`` and ``basalt config
confirm`` write a request file and send SIGHUP; PID 1 (which owns the services) carries it out
and answers in a result file named by the request's id. A ``--try`` apply is a trial: unless
confirmed in time, the previous config is put back and the rejected sources are remembered."""

from __future__ import annotations

import os
import time

from agent import files, layout
from agent.log import log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.pid1.provision import Provisioner

REQUEST = layout.RUN_REQUEST
RESULT = layout.RUN_RESULT


TRIAL_S = (1.0, 86400.0)  # how long an 'apply --try' may wait for its confirm: a second to a day
MAX_REQUEST = 64 << 10


def trial_seconds(value: object) -> float:
    """``--try``'s seconds, checked: a finite number within TRIAL_S (ValueError says what it must be).
    A NaN deadline never came and never let the main loop sleep; inf waited forever."""
    import math
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"--try takes seconds, not {value!r}")
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"--try takes seconds, not {value!r}") from None
    if not math.isfinite(seconds) or not TRIAL_S[0] <= seconds <= TRIAL_S[1]:
        raise ValueError(f"--try takes {TRIAL_S[0]:g} to {TRIAL_S[1]:g} seconds, not {value}")
    return seconds


class Trial:
    """A config applied with ``--try``: what to put back if it is not confirmed in time."""

    __slots__ = ("config", "deadline", "merged", "seconds", "sources")

    def __init__(self, config: dict[str, object], merged: object, sources: list[str], seconds: float):
        self.config, self.merged, self.sources, self.seconds = config, merged, sources, seconds
        self.deadline = time.monotonic() + seconds


def handle_request(prov: Provisioner) -> None:
    import json
    try:
        with open(REQUEST, "rb") as f:
            raw = f.read(MAX_REQUEST + 1)
        os.unlink(REQUEST)
    except OSError:
        return  # a plain SIGHUP: nothing asked
    try:
        request = json.loads(raw) if len(raw) <= MAX_REQUEST else None
    except (ValueError, RecursionError):
        request = None
    ident = request.get("id") if isinstance(request, dict) else None
    if not isinstance(ident, int) or isinstance(ident, bool) or not 0 <= ident < 1 << 63:
        log("error: config request: not a request from 'basalt config' (ignored)")
        return
    assert isinstance(request, dict)
    if request.get("command") == "confirm":
        result = confirm(prov)
    elif request.get("command") != "apply":
        result = {"ok": False, "errors": [f"unknown request {request.get('command')!r}"]}
    else:
        try:
            seconds = None if request.get("try") is None else trial_seconds(request["try"])
        except ValueError as exc:
            result = {"ok": False, "errors": [str(exc)], "applied": False}
        else:
            result = apply(prov, seconds)
    files.write_atomic(RESULT.format(ident), json.dumps(result))


def apply(prov: Provisioner, try_s: float | None) -> dict[str, object]:
    from agent.config import sources
    if prov.trying:
        return {"ok": False, "errors": ["a 'config apply --try' is waiting: confirm it, or wait for its revert"]}
    previous = (prov.config, prov.merged, prov.config_sources)
    try:
        os.unlink(sources.REJECTED)  # asked for again, explicitly: try it again
    except FileNotFoundError:
        pass
    errors = prov.reconfigure()
    if prov.config_fallback:
        return {"ok": False, "errors": errors, "applied": False}
    if try_s:
        prov.trying = Trial(*previous, seconds=float(try_s))
        log(f"config applied on trial: reverts in {try_s}s unless 'basalt config confirm'")
    else:
        sources.save_known_good(prov.merged)  # type: ignore[arg-type]
        log("config applied")
    return {"ok": not errors, "errors": errors, "applied": True, "trial_s": try_s}


def confirm(prov: Provisioner) -> dict[str, object]:
    from agent.config import sources
    if not prov.trying:
        return {"ok": False, "errors": ["nothing to confirm: no 'config apply --try' is waiting"]}
    prov.trying = None
    sources.save_known_good(prov.merged)  # type: ignore[arg-type]
    log("config confirmed")
    return {"ok": True, "errors": []}


def deadline(prov: Provisioner) -> float | None:
    trying = prov.trying
    return trying.deadline if isinstance(trying, Trial) else None


def revert(prov: Provisioner) -> None:
    """The trial ran out unconfirmed: put back the config in force before it, and remember
    the rejected sources so the next boot does not apply them either."""
    from agent.config import sources
    trying, prov.trying = prov.trying, None
    assert isinstance(trying, Trial)
    rejected = getattr(prov.merged, "digest", "")
    prov.config, prov.merged, prov.config_sources = trying.config, trying.merged, trying.sources
    prov.config_fallback = f"reverted: 'config apply --try {trying.seconds:g}' was not confirmed in time"
    if rejected:
        sources.reject(rejected)
    prov.reapply(runtime=False)
    prov.errors.append(f"config: {prov.config_fallback}")
    log(f"error: config: {prov.config_fallback}; the previous config is back")
