"""PID 1's network plan (agent/pid1/provision.py) is applied again only when it changed: applying a
static interface's plan flushes its addresses before adding them back, a gap in which the node has
no default route. The commands (ip) and the supervisor are stand-ins: the real ones would change
this machine's network (tests/boot/test_provision.py applies a static network in a guest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.log import Errors
from agent.modules import plans
from agent.pid1 import provision

STATIC = {"network": {"interfaces": {"eth0": {"addresses": ["10.0.2.15/24"], "gateway": "10.0.2.2"}}}}


class Services:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.calls.append(("start", name))

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    ran: list[list[str]] = []
    failing: list[str] = []
    monkeypatch.setattr(provision, "run_command", lambda argv: ran.append(argv) or (1 if failing else 0))
    monkeypatch.setattr(plans, "NETWORK_UP", str(tmp_path / "network-up"))
    services = Services()
    prov = provision.Provisioner(services, Errors(), {}, "1.0")  # type: ignore[arg-type]
    interfaces = ["eth0"]
    prov.facts = lambda: {"interfaces": list(interfaces)}  # type: ignore[method-assign]
    prov.config = dict(STATIC)
    return prov, ran, failing, interfaces, services


def flushes(ran: list[list[str]]) -> int:
    return sum(1 for argv in ran if argv[1:3] == ["addr", "flush"])


def test_an_unchanged_plan_is_not_applied_again(node: Any) -> None:
    prov, ran, _, _, _ = node
    prov.network()
    assert flushes(ran) == 1 and ["/usr/bin/ip", "route", "replace", "default", "via", "10.0.2.2", "dev", "eth0"] in ran
    count = len(ran)
    prov.network()  # the drivers loaded after ready, a datasource read again: the same plan
    prov.network()
    assert len(ran) == count and prov.errors == []


def test_a_changed_plan_is_applied(node: Any) -> None:
    prov, ran, _, interfaces, services = node
    prov.network()
    interfaces.append("eth1")  # a USB NIC came: DHCP on it, and the static one planned again
    prov.network()
    assert ("start", "dhcp-eth1") in services.calls and flushes(ran) == 2
    prov.config = {"network": {"interfaces": {"eth0": {"addresses": ["10.0.2.16/24"], "gateway": "10.0.2.2"}}}}
    prov.network()
    assert ["/usr/bin/ip", "addr", "add", "10.0.2.16/24", "dev", "eth0"] in ran and flushes(ran) == 3


def test_a_plan_that_failed_is_applied_again(node: Any) -> None:
    prov, ran, failing, _, _ = node
    failing.append("ip")
    prov.network()
    assert flushes(ran) == 1 and "network: ip: 'ip addr flush dev eth0' exited 1" in prov.errors, prov.errors
    failing.clear()
    prov.network()  # the same plan, but the last try did not take: again
    assert flushes(ran) == 2
    prov.network()
    assert flushes(ran) == 2
