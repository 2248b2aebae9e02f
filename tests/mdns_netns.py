"""Run inside a network namespace of its own (``unshare --net``; tests/unit/agent/apps/test_app_mdns.py):
a LAN that reaches nothing outside it (a veth pair: ``lan0`` the node's side, ``lan1`` a client's),
the API stand-in, two apps, the announcer (agent/apps/mdns.py) with the real
python3-zeroconf, and questions asked as any mDNS client asks them — a query to 224.0.0.251:5353,
built and its answer read by dnspython, an independent DNS implementation. Prints what it found
as JSON. Nothing leaves the namespace."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rdatatype
from fake_kube import FakeKube

from agent.apps import cli, kube, mdns

NODE, CLIENT = "10.77.0.1", "10.77.0.2"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


def ask(name: str, rtype: str = "A", timeout: float = 1.5) -> list[str]:
    """One question to the mDNS group from an ordinary port (a one-shot query, RFC 6762 §5.1):
    the answers' text, [] when none came in ``timeout``."""
    query = dns.message.make_query(name, rtype)
    query.flags &= ~dns.flags.RD
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(CLIENT))
        s.bind((CLIENT, 0))
        s.settimeout(timeout)
        s.sendto(query.to_wire(), ("224.0.0.251", 5353))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(9000)
            except TimeoutError:
                return []
            # the answer section only: mDNS compresses names inside SRV and NSEC records (RFC 6762
            # §18.14), which its additional section carries and a unicast DNS parser refuses
            answer = dns.message.from_wire(data[:8] + bytes(4) + data[12:], ignore_trailing=True)
            if answer.id != query.id:
                continue
            return sorted(rd.to_text() for rrset in answer.answer
                          if rrset.rdtype == dns.rdatatype.from_text(rtype) for rd in rrset)
    return []


def main(work: Path) -> None:
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    for dev, address in (("lan0", NODE), ("lan1", CLIENT)):
        sh("ip", "addr", "add", f"{address}/32", "dev", dev)
        sh("ip", "link", "set", dev, "up")
    sh("ip", "route", "add", "224.0.0.0/4", "dev", "lan1")
    # both ends are this namespace's addresses: accept packets from a local source on the wire
    for conf in ("all", "lan0", "lan1"):
        Path(f"/proc/sys/net/ipv4/conf/{conf}/accept_local").write_text("1\n")
        Path(f"/proc/sys/net/ipv4/conf/{conf}/rp_filter").write_text("0\n")
    # every interface but loopback is a LAN to the announcer's default choice; it is told lan0
    found: dict[str, object] = {"default_addresses": mdns.lan_addresses(), "addresses": mdns.lan_addresses(["lan0"])}
    with FakeKube() as api:
        conf = str(api.kubeconfig(work / "kubeconfig"))
        assert cli.standalone(["--kubeconfig", conf, "run", "nginx:1", "--name", "shop", "--port", "80",
                               "--tls", "site-ca"]) == 0
        assert cli.standalone(["--kubeconfig", conf, "stage", "shop", "nginx:2"]) == 0
        assert cli.standalone(["--kubeconfig", conf, "-n", "lab", "run", "nginx:1", "--name", "blog", "--port",
                               "80", "--tls", "off"]) == 0
        # written by hand, not through basalt app: a label that is no DNS name is never announced
        with api.lock:
            api.store("TraefikService", "default", "evil", {
                "metadata": {"name": "evil", "labels": {"app.kubernetes.io/managed-by": "basalt",
                                                        "basalt.io/app": "Evil_App\nx"}},
                "spec": {"weighted": {"services": [{"name": "Evil_App\nx-v1", "weight": 100}]}}})
        services = kube.Client(kube.credentials(conf)).list(
            "TraefikService", None, "app.kubernetes.io/managed-by=basalt")
        names = mdns.wanted(services, "depot-7")
        found["wanted"] = names
        announcer = mdns.Announcer(["lan0"])
        started = time.monotonic()
        announcer.sync(names)
        found["announce_s"] = round(time.monotonic() - started, 2)
        for name in [*names, "evil.depot-7.local", "shop.other-node.local"]:
            found[name] = ask(name)
        found["_https._tcp.local."] = ask("_https._tcp.local.", "PTR")
        found["_http._tcp.local."] = ask("_http._tcp.local.", "PTR")
        announcer.sync({n: s for n, s in names.items() if n != "v1-shop.depot-7.local"})
        found["after_rm"] = ask("v1-shop.depot-7.local")
        found["still"] = ask("shop.depot-7.local")
        announcer.close()
        found["after_close"] = ask("shop.depot-7.local")
    json.dump(found, sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
