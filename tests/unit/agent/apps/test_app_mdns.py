"""Names without a DNS server (agent/apps/mdns.py): each app and preview host announced as
APP.NODE.local by the real python3-zeroconf (the version Debian 12 ships), on a LAN that is a veth
pair in a network namespace of its own (nothing reaches or leaves it), and resolved by another
DNS implementation (dnspython) with an ordinary one-shot mDNS query: tests/mdns_netns.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.apps import mdns, spec

TESTS = Path(__file__).resolve().parents[3]


def test_apps_are_announced_on_the_lan_and_found_by_an_independent_resolver(tmp_path: Path) -> None:
    done = subprocess.run(["unshare", "--net", "--", sys.executable, str(TESTS / "mdns_netns.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{TESTS.parent}:{TESTS}"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # the default choice takes every interface but loopback and the pods' side; told, lan0 only
    assert (found["default_addresses"], found["addresses"]) == (["10.77.0.1", "10.77.0.2"], ["10.77.0.1"])
    assert found["wanted"] == {"shop.depot-7.local": "https", "v1-shop.depot-7.local": "https",
                               "v2-shop.depot-7.local": "https", "blog.lab.depot-7.local": "http",
                               "v1-blog.lab.depot-7.local": "http"}
    for name in found["wanted"]:
        assert found[name] == ["10.77.0.1"], name
    assert found["evil.depot-7.local"] == [] and found["shop.other-node.local"] == []
    # browsable as services too (DNS-SD), by scheme
    assert found["_https._tcp.local."] == ["shop\\032depot-7._https._tcp.local.",
                                            "v1-shop\\032depot-7._https._tcp.local.",
                                            "v2-shop\\032depot-7._https._tcp.local."]
    assert found["_http._tcp.local."] == ["blog\\032lab\\032depot-7._http._tcp.local.",
                                           "v1-blog\\032lab\\032depot-7._http._tcp.local."]
    # a revision gone: its name withdrawn, the others kept; closed: goodbyes, nothing answers
    assert (found["after_rm"], found["still"], found["after_close"]) == ([], ["10.77.0.1"], [])


def svc(app: str, revisions: list[str], namespace: str = "default", notes: dict[str, str] | None = None) -> Any:
    return {"metadata": {"name": app, "namespace": namespace, "labels": {spec.APP: app},
                         "annotations": notes or {}},
            "spec": {"weighted": {"services": [{"name": f"{app}-{r}"} for r in revisions]}}}


@pytest.mark.parametrize(("services", "expected"), [
    ([svc("shop", ["v1"], notes={"basalt.io/tls": "site-ca"})],
     {"shop.n1.local": "https", "v1-shop.n1.local": "https"}),
    ([svc("shop", ["v1"], notes={"basalt.io/tls": "acme"}), svc("shop", ["v1"], "lab")],
     {"shop.n1.local": "https", "v1-shop.n1.local": "https", "shop.lab.n1.local": "http",
      "v1-shop.lab.n1.local": "http"}),
    ([svc("Shop", ["v1"])], {}),  # not a name basalt app makes
    ([svc("shop\nx", ["v1"])], {}),
    ([svc("shop", ["v1"], namespace="a.b")], {}),
    ([svc("shop", ["v1", "../x", "V2", "x" * 17, ""])], {"shop.n1.local": "http", "v1-shop.n1.local": "http"}),
    ([{"metadata": {}}, {"spec": None, "metadata": {"labels": None}}], {}),  # junk never crashes
])
def test_the_names_a_node_announces(services: list[Any], expected: dict[str, str]) -> None:
    assert mdns.wanted(services, "n1") == expected


@pytest.mark.parametrize(("node", "label"), [
    ("depot-7", "depot-7"), ("Depot-7.site.example", "depot-7"), ("n" * 63, "n" * 63),
    ("n" * 64, None), ("-bad", None), ("bad_name", None), ("", None), ("a/b", None),
])
def test_a_nodes_label(node: str, label: str | None) -> None:
    assert spec.node_label(node) == label
