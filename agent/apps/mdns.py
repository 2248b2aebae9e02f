"""Names without a DNS server: every app and preview host on a node's LAN as ``APP.NODE.local``
and ``REV-APP.NODE.local`` (``APP.NAMESPACE.NODE.local`` outside the default namespace), announced
by multicast DNS with python3-zeroconf (Debian's, in the image), so a laptop or phone on the same
LAN reaches the app with no DNS server and no /etc/hosts.

It runs on every node (the DaemonSet ``basalt-mdns``, host network, the apps controller's image),
reads the apps' TraefikServices each few seconds, and announces each name with the node's LAN
addresses (IPv4, the interfaces a LAN is on: not loopback, not the pods' bridges and tunnels), as a
DNS-SD service too (``_https._tcp`` or ``_http._tcp``, so browsers of services list it). The apps
controller adds the same names to the apps' routes and certificates (agent/apps/controller.py).
Names that are not DNS labels are never announced. On SIGTERM it says goodbye (TTL 0) for each.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from typing import Any

from agent.apps import kube, resources, spec

NODE_ENV = "NODE_NAME"  # the downward API's spec.nodeName
INTERFACES_ENV = "BASALT_MDNS_INTERFACES"  # a comma-separated list of interface names, to choose
POLL_S = 5.0
# the pods' side of the node: k3s's bridge and flannel, containers' veths, other tunnels
NOT_LAN = ("lo", "cni", "flannel", "veth", "docker", "kube", "tun", "tap", "wg", "virbr")
DNS_SD = {"https": "_https._tcp.local.", "http": "_http._tcp.local."}


def log(event: str, **fields: Any) -> None:
    from agent.apps.controller import log as controller_log
    controller_log(event, **fields)


def lan_addresses(only: list[str] | None = None) -> list[str]:
    """The node's IPv4 addresses on its LAN interfaces (or on the interfaces named in ``only``)."""
    import ifaddr
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        name = str(adapter.nice_name)
        if only is not None and name not in only:
            continue
        if only is None and name.startswith(NOT_LAN):
            continue
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith(("127.", "169.254.")):
                out.append(ip.ip)
    return sorted(set(out))


def wanted(services: list[dict[str, Any]], node: str) -> dict[str, str]:
    """Each name this node announces → its scheme (https or http), from the apps' TraefikServices."""
    out: dict[str, str] = {}
    for svc in services:
        meta = svc.get("metadata") or {}
        app = (meta.get("labels") or {}).get(spec.APP, "")
        namespace = meta.get("namespace", "default")
        if not (spec.NAME.fullmatch(app) and spec.LABEL.fullmatch(namespace)):
            continue  # written by hand, not a name: never announced
        notes = meta.get("annotations") or {}
        scheme = "http" if notes.get(f"{spec.DOMAIN}/tls", "off") == "off" else "https"
        revisions = []
        for s in ((svc.get("spec") or {}).get("weighted") or {}).get("services") or []:
            rev = str(s.get("name", "")).removeprefix(app + "-")
            if spec.REVISION_NAME.fullmatch(rev):
                revisions.append(rev)
        for name in resources.hosts(spec.local_host(app, namespace, node), revisions):
            if len(name) <= 253:
                out[name] = scheme
    return out


class Announcer:
    """The names this node answers for, kept in step with ``wanted`` (python3-zeroconf does the
    protocol: probing, announcing, answering, goodbyes)."""

    def __init__(self, interfaces: list[str] | None = None) -> None:
        self.only = interfaces
        self.addresses = lan_addresses(interfaces)
        self.zc = self._zeroconf()
        self.infos: dict[str, Any] = {}  # name → ServiceInfo
        self.schemes: dict[str, str] = {}

    def _zeroconf(self) -> Any:
        """Listening and answering on the LAN interfaces only (on none: loopback, announcing nothing)."""
        from zeroconf import IPVersion, Zeroconf
        return Zeroconf(interfaces=self.addresses or ["127.0.0.1"], ip_version=IPVersion.V4Only)

    def _info(self, name: str, scheme: str) -> Any:
        from zeroconf import ServiceInfo
        instance = name.removesuffix(".local").replace(".", " ")
        return ServiceInfo(DNS_SD[scheme], f"{instance}.{DNS_SD[scheme]}", port=443 if scheme == "https" else 80,
                           server=f"{name}.", addresses=[socket.inet_aton(a) for a in self.addresses])

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.zc.loop).result(timeout)

    def sync(self, names: dict[str, str]) -> None:
        addresses = lan_addresses(self.only)
        if addresses != self.addresses:  # a new lease: every name again, with the new addresses
            log("addresses", before=self.addresses, now=addresses)
            self.remove(list(self.infos))
            self.zc.close()
            self.addresses = addresses
            self.zc = self._zeroconf()
        gone = [n for n in self.infos if n not in names or self.schemes[n] != names[n]]
        self.remove(gone)
        new = {n: self._info(n, s) for n, s in sorted(names.items()) if n not in self.infos}
        if not new or not self.addresses:
            return

        async def register_all() -> None:
            tasks = await asyncio.gather(*(self.zc.async_register_service(i) for i in new.values()))
            await asyncio.gather(*tasks)
        self._run(register_all())
        self.infos.update(new)
        self.schemes.update({n: names[n] for n in new})
        log("announced", names=sorted(new), addresses=self.addresses)

    def remove(self, names: list[str]) -> None:
        if not names:
            return
        infos = [self.infos.pop(n) for n in names]
        for n in names:
            self.schemes.pop(n, None)

        async def unregister_all() -> None:
            tasks = await asyncio.gather(*(self.zc.async_unregister_service(i) for i in infos))
            await asyncio.gather(*tasks)
        self._run(unregister_all())
        log("withdrawn", names=sorted(names))

    def close(self) -> None:
        self.remove(list(self.infos))
        self.zc.close()


def main(argv: list[str] | None = None) -> int:
    node = spec.node_label(os.environ.get(NODE_ENV, "") or socket.gethostname())
    if node is None:
        print(f"basalt-mdns: the node's name {os.environ.get(NODE_ENV)!r} is not a DNS label", file=sys.stderr)
        return 1
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        client = kube.Client(kube.credentials())
    except Exception as exc:  # noqa: BLE001 - said, and the pod restarts
        print(f"basalt-mdns: {exc}", file=sys.stderr)
        return 1
    only = [i for i in os.environ.get(INTERFACES_ENV, "").split(",") if i] or None
    announcer = Announcer(only)
    log("start", node=node, addresses=announcer.addresses)
    try:
        while not stop:
            try:
                services = client.list("TraefikService", None, ",".join(f"{k}={v}" for k, v in spec.MANAGED.items()))
                announcer.sync(wanted(services, node))
            except Exception as exc:  # noqa: BLE001 - the API away: the names stay, tried again
                log("error", message=str(exc) or type(exc).__name__)
            deadline = time.monotonic() + POLL_S
            while not stop and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        announcer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
