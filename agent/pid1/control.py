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


class Trial:
    """A config applied with ``--try``: what to put back if it is not confirmed in time."""

    __slots__ = ("config", "deadline", "merged", "seconds", "sources")

    def __init__(self, config: dict[str, object], merged: object, sources: list[str], seconds: float):
        self.config, self.merged, self.sources, self.seconds = config, merged, sources, seconds
        self.deadline = time.monotonic() + seconds


def handle_request(prov: Provisioner) -> None:
    import json
    try:
        with open(REQUEST) as f:
            request = json.load(f)
        os.unlink(REQUEST)
    except (OSError, ValueError):
        return  # a plain SIGHUP: nothing asked
    result = confirm(prov) if request.get("command") == "confirm" else apply(prov, request.get("try"))
    path = RESULT.format(int(request.get("id", 0)))
    files.write_atomic(path, json.dumps(result))


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
