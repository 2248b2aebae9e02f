"""HTTPS for apps, through the real Traefik: the site CA's certificates (issued by the controller
with the real ``openssl``), the redirect from plain HTTP, renewal, and ACME against Debian's real
``pebble`` (an ACME server, with its challenge test server as the DNS that names this host).

Real here: Traefik 3.5.1 (it reads the IngressRoutes, Middlewares and Secrets itself), TLS and
HTTP through its entry points, openssl, pebble and its HTTP-01 validation through Traefik's
``web`` entry point. Stand-ins (no k3s can run here): the API server and the kubelet (docs/apps.md).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube
from kubelet import Kubelet
from traefik import Traefik

from agent.apps import cli, controller, kube, spec, tls
from agent.errors import BasaltError
from agent.modules import actions, k3s
from builder.vm.qemu import free_port

DAY = 86400.0


@pytest.fixture(scope="module")
def site_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA as the controller's pod sees it: the Secret's tls.crt and tls.key, mounted."""
    d = tmp_path_factory.mktemp("site-ca")
    cert, key = tls.make_ca("Basalt site CA test")
    (d / "tls.crt").write_bytes(cert)
    (d / "tls.key").write_bytes(key)
    (d / "ca.pem").write_bytes(cert)
    return d


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeKube, Traefik, Path]]:
    work = tmp_path_factory.mktemp("tls")
    with FakeKube() as api, Kubelet(api), Traefik(api.url, work) as router:
        yield api, router, api.kubeconfig(work / "kubeconfig")


def basalt_app(conf: Path, *argv: str) -> int:
    return cli.standalone(["--kubeconfig", str(conf), *argv])


def https(port: int, host: str, cafile: Path | None, timeout: float = 10) -> tuple[int, str, dict[str, Any]]:
    """GET / for ``host`` over TLS to 127.0.0.1:``port`` (SNI ``host``), trusting only ``cafile``
    (or the system's CAs): (status, body, the server's certificate as ssl decodes it)."""
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = context.wrap_socket(raw, server_hostname=host)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip(), sock.getpeercert() or {}
    finally:
        conn.close()


def served(port: int, host: str, cafile: Path | None) -> tuple[int, str, dict[str, Any]] | None:
    """``https(…)`` once the app answers (200); None while Traefik has no server for it yet."""
    got = https(port, host, cafile)
    return got if got[0] == 200 else None


def plain(port: int, host: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/a/path?q=1", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location")
    finally:
        conn.close()


def until(check: Any, what: str, timeout: float = 20) -> Any:
    """``check()``'s first answer that is not None or an exception; bounded."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got is not None:
                return got
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not in {timeout}s (last: {last!r})")


def names(cert: dict[str, Any]) -> list[str]:
    return sorted(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")


def lifetime_days(cert: dict[str, Any]) -> float:
    return (ssl.cert_time_to_seconds(cert["notAfter"]) - ssl.cert_time_to_seconds(cert["notBefore"])) / DAY


def test_a_site_ca_app_is_served_over_https_with_its_own_certificate(
        cluster: tuple[FakeKube, Traefik, Path], site_ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api, router, conf = cluster
    # the node's manifest (agent/modules/k3s.py): the cluster's mode and the CA's certificate
    with api.lock:
        api.store("ConfigMap", tls.NAMESPACE, tls.SETTINGS, tls.settings("site-ca", (site_ca / "tls.crt").read_bytes()))
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "shop", "--port", "8080") == 0  # the cluster's mode
    said = capsys.readouterr().out
    assert "shop: revision v1 at https://shop.local/" in said, said
    client = kube.Client(kube.credentials(str(conf)))
    certificates = controller.Certificates(str(site_ca))
    now = time.time()
    controller.tick(client, now, certificates=certificates)

    secret = api.get("Secret", "shop-tls")
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["labels"]["basalt.io/app"] == "shop"
    notes = api.get("TraefikService", "shop")["metadata"]["annotations"]
    assert notes["basalt.io/tls"] == "site-ca" and notes["basalt.io/tls-hosts"] == "shop.local,v1-shop.local"
    assert abs(float(notes["basalt.io/tls-renew"]) - (now + 60 * DAY)) < 5

    # Traefik serves it: a client that trusts the site CA only gets the app, over TLS
    status, body, cert = until(lambda: served(router.websecure, "shop.local", site_ca / "ca.pem"),
                               "Traefik serving shop.local with the site CA's certificate")
    assert (status, body) == (200, "v1")
    assert names(cert) == ["shop.local", "v1-shop.local"] and round(lifetime_days(cert)) == tls.CERT_DAYS
    assert https(router.websecure, "v1-shop.local", site_ca / "ca.pem")[:2] == (200, "v1")
    with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know it
        https(router.websecure, "shop.local", None)
    # plain HTTP is sent to HTTPS, path and query kept
    assert plain(router.web, "shop.local") == (301, "https://shop.local/a/path?q=1")  # Traefik: 301 for a GET
    # a second tick: nothing due, nothing written
    version = secret["metadata"]["resourceVersion"]
    controller.tick(client, now + 1, certificates=certificates)
    assert api.get("Secret", "shop-tls")["metadata"]["resourceVersion"] == version

    # a staged revision's preview host: a new certificate names it
    assert basalt_app(conf, "stage", "shop", "nginx:1.28") == 0
    assert "at https://v2-shop.local/" in capsys.readouterr().out
    controller.tick(client, now + 2, certificates=certificates)
    status, body, cert = until(lambda: served(router.websecure, "v2-shop.local", site_ca / "ca.pem"),
                               "the certificate naming v2-shop.local")
    assert (status, body) == (200, "v2")
    assert names(cert) == ["shop.local", "v1-shop.local", "v2-shop.local"]

    # renewal: 60 days on, a new certificate (a new serial), served
    serial = cert["serialNumber"]
    controller.tick(client, now + 61 * DAY, certificates=certificates)

    def served_anew() -> dict[str, Any] | None:
        cert = https(router.websecure, "shop.local", site_ca / "ca.pem")[2]
        return cert if cert["serialNumber"] != serial else None

    renewed = until(served_anew, "the renewed certificate")
    assert names(renewed) == ["shop.local", "v1-shop.local", "v2-shop.local"]
    notes = api.get("TraefikService", "shop")["metadata"]["annotations"]
    assert abs(float(notes["basalt.io/tls-renew"]) - (now + 121 * DAY)) < 5

    # basalt app ca prints the CA's certificate, for clients to trust
    capsys.readouterr()
    assert basalt_app(conf, "ca") == 0
    assert capsys.readouterr().out == (site_ca / "tls.crt").read_text()
    # rm takes the app's certificate with it
    assert basalt_app(conf, "rm", "shop") == 0
    assert ("Secret", "default", "shop-tls") not in api.objects


def test_an_app_is_named_on_each_nodes_lan_in_its_routes_certificate_and_ps(
        cluster: tuple[FakeKube, Traefik, Path], site_ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api, router, conf = cluster
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "cafe", "--port", "8080", "--tls", "site-ca") == 0
    with api.lock:  # two nodes; the first has a domain name, which its LAN name drops
        for node in ("depot-7.site.example", "depot-8"):
            api.store("Node", "", node, {"metadata": {"name": node}})
    client = kube.Client(kube.credentials(str(conf)))
    certificates = controller.Certificates(str(site_ca))
    try:
        controller.tick(client, time.time(), certificates=certificates)
        assert api.get("TraefikService", "cafe")["metadata"]["annotations"]["basalt.io/nodes"] == "depot-7,depot-8"
        routes = api.get("IngressRoute", "cafe")["spec"]["routes"]
        assert [r["match"] for r in routes] == [
            "Host(`cafe.local`) || Host(`cafe.depot-7.local`) || Host(`cafe.depot-8.local`)",
            "Host(`v1-cafe.local`) || Host(`v1-cafe.depot-7.local`) || Host(`v1-cafe.depot-8.local`)"]
        status, body, cert = until(lambda: served(router.websecure, "cafe.depot-7.local", site_ca / "ca.pem"),
                                   "cafe by its LAN name")
        assert (status, body) == (200, "v1")
        assert names(cert) == ["cafe.depot-7.local", "cafe.depot-8.local", "cafe.local", "v1-cafe.depot-7.local",
                               "v1-cafe.depot-8.local", "v1-cafe.local"]
        assert https(router.websecure, "v1-cafe.depot-8.local", site_ca / "ca.pem")[:2] == (200, "v1")
        assert plain(router.web, "cafe.depot-8.local") == (301, "https://cafe.depot-8.local/a/path?q=1")
        capsys.readouterr()
        assert basalt_app(conf, "ps") == 0
        urls = [line.split()[-1] for line in capsys.readouterr().out.splitlines() if line.startswith("cafe ")]
        assert urls == ["https://v1-cafe.local/", "idle", "https://cafe.depot-7.local/", "https://cafe.depot-8.local/"]
        # a node gone: its names leave the routes and the certificate
        with api.lock:
            del api.objects[("Node", "", "depot-8")]
        controller.tick(client, time.time() + 1, certificates=certificates)
        assert [r["match"] for r in api.get("IngressRoute", "cafe")["spec"]["routes"]] == [
            "Host(`cafe.local`) || Host(`cafe.depot-7.local`)",
            "Host(`v1-cafe.local`) || Host(`v1-cafe.depot-7.local`)"]

        def reissued() -> list[str] | None:
            served = names(https(router.websecure, "cafe.local", site_ca / "ca.pem")[2])
            return served if "cafe.depot-8.local" not in served else None
        assert until(reissued, "the certificate without depot-8") == [
            "cafe.depot-7.local", "cafe.local", "v1-cafe.depot-7.local", "v1-cafe.local"]
    finally:
        with api.lock:
            for key in [k for k in api.objects if k[0] == "Node"]:
                del api.objects[key]
    assert basalt_app(conf, "rm", "cafe") == 0


def test_without_a_ca_the_controller_says_so_once_and_issues_when_it_comes(
        cluster: tuple[FakeKube, Traefik, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        site_ca: Path) -> None:
    api, router, conf = cluster
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "late", "--port", "8080", "--tls", "site-ca") == 0
    client = kube.Client(kube.credentials(str(conf)))
    mount = tmp_path / "mount"
    mount.mkdir()
    certificates = controller.Certificates(str(mount))
    capsys.readouterr()
    for i in range(3):
        controller.tick(client, time.time() + i, certificates=certificates)
    errors = [e for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["event"] == "error"]
    assert [e["message"] for e in errors] == [f"no site CA in {mount}: late has no certificate of its own yet"]
    assert ("Secret", "default", "late-tls") not in api.objects
    for name in ("tls.crt", "tls.key"):  # the Secret is mounted at last
        (mount / name).write_bytes((site_ca / name).read_bytes())
    controller.tick(client, time.time() + 4, certificates=certificates)
    status, body, _ = until(lambda: served(router.websecure, "late.local", site_ca / "ca.pem"), "late.local")
    assert (status, body) == (200, "v1")
    assert basalt_app(conf, "rm", "late") == 0


def test_an_app_with_tls_off_stays_plain_http(cluster: tuple[FakeKube, Traefik, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    api, router, conf = cluster
    assert basalt_app(conf, "run", "nginx:1.27", "--name", "open", "--port", "8080", "--tls", "off") == 0
    assert "at http://open.local/" in capsys.readouterr().out
    assert until(lambda: router.get("open.local") if router.get("open.local")[0] == 200 else None,
                 "open.local over HTTP")[1].strip() == "v1"
    assert not any(k == "Middleware" and n.startswith("open") for k, _, n in api.objects)
    assert basalt_app(conf, "rm", "open") == 0


def test_no_site_ca_in_the_cluster_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeKube() as api:
        assert cli.standalone(["--kubeconfig", str(api.kubeconfig(tmp_path / "kc")), "ca"]) == 1
    err = capsys.readouterr().err
    assert "this cluster has no site CA (basalt-system/basalt-apps has no ca.crt)" in err
    assert "hint: a Basalt k3s server makes one with app_tls.mode: site-ca" in err and "Traceback" not in err


# -- the node's part: the site CA made once, kept, never through a planted link ----------------------

class Ctx:
    """The action table's context, rooted in a temporary directory (agent/modules/actions.py)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def at(self, path: str) -> str:
        return str(self.root) + path


def apps_tls_action(config: dict[str, Any]) -> tuple[Any, ...]:
    facts = {"k3s": True, "version": "0.1.0", "k3s_images": ["basalt-apps-controller.tar"], "k3s_charts": []}
    found = [a for a in k3s.plan_files(config, facts) if a[0] == "apps-tls"]
    assert len(found) == 1, found
    return found[0]


def test_the_node_makes_its_site_ca_once_and_keeps_it_private(tmp_path: Path) -> None:
    action = apps_tls_action({"hostname": "depot-7"})
    assert action == ("apps-tls", "site-ca", "/var/lib/basalt/apps-ca",
                      "/var/lib/rancher/k3s/server/manifests/basalt-apps-tls.yaml", "depot-7")
    ctx = Ctx(tmp_path)
    actions.ACTIONS["apps-tls"](ctx, *action[1:])
    ca_dir = tmp_path / "var/lib/basalt/apps-ca"
    key, crt = ca_dir / "ca.key", ca_dir / "ca.crt"
    assert (ca_dir.stat().st_mode & 0o777, key.stat().st_mode & 0o777) == (0o700, 0o600)
    manifest = tmp_path / action[3].lstrip("/")
    assert manifest.stat().st_mode & 0o777 == 0o600
    docs = [json.loads(d) for d in manifest.read_text().split("---\n") if d.strip()]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("ConfigMap", "basalt-apps"),
                                                                 ("Secret", "basalt-site-ca")]
    assert docs[0]["data"] == {"tls": "site-ca", "ca.crt": crt.read_text()}
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "basicConstraints"],
                             input=crt.read_bytes(), capture_output=True, check=True).stdout.decode()
    assert "CN = Basalt site CA depot-7" in subject and "CA:TRUE, pathlen:0" in subject
    before = (crt.read_bytes(), key.read_bytes())
    actions.ACTIONS["apps-tls"](ctx, *action[1:])  # the next boot: the same CA
    assert (crt.read_bytes(), key.read_bytes()) == before
    # off: the settings only, the CA kept on disk (turning HTTPS back on keeps clients' trust)
    actions.ACTIONS["apps-tls"](ctx, "off", *action[2:])
    docs = [json.loads(d) for d in manifest.read_text().split("---\n") if d.strip()]
    assert [d["kind"] for d in docs] == ["ConfigMap"] and docs[0]["data"] == {"tls": "off"}
    assert (crt.read_bytes(), key.read_bytes()) == before


def test_a_planted_link_for_the_ca_key_is_refused_not_followed(tmp_path: Path) -> None:
    ca_dir = tmp_path / "var/lib/basalt/apps-ca"
    ca_dir.mkdir(parents=True, mode=0o700)
    target = tmp_path / "shadow"
    target.write_text("root:secret-hash:19000::::::\n")
    (ca_dir / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (ca_dir / "ca.key").symlink_to(target)
    with pytest.raises(OSError):
        tls.keep_ca(str(ca_dir), "depot-7")
    assert target.read_text() == "root:secret-hash:19000::::::\n"


# -- hostile inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize(("host", "message"), [
    ("shop.example.com", None),
    ("a" * 46 + ".local", None),
    ("*.example.com", "is not a host name"),
    ("10.0.2.15", "is an address, not a host name"),
    ("shop.local\nHost(`evil`)", "is not a host name"),
    ("shop`) || Host(`evil", "is not a host name"),
    ("Shop.Local", "is not a host name"),
    ("a" * 64 + ".local", "is not a host name"),
    ("a" * 47 + ".local", "is too long for its revisions' preview hosts"),
    (".".join(["a" * 60] * 4), "is too long for its revisions' preview hosts"),
    ("shop..local", "is not a host name"),
    ("shop.local.", "is not a host name"),
    ("-shop.local", "is not a host name"),
    ("shop/CN=evil", "is not a host name"),
    ("", "is not a host name"),
])
def test_hostile_hosts(host: str, message: str | None) -> None:
    if message is None:
        assert spec.check_host(host) == host
        return
    with pytest.raises(BasaltError) as caught:
        spec.check_host(host, "--host")
    assert message in str(caught.value) and "--host" in str(caught.value)


@pytest.mark.parametrize(("directory", "email", "message"), [
    ("https://acme.example/directory", "ops@example.com", None),
    ("http://acme.example/directory", "ops@example.com", "is not an ACME directory URL"),
    ("https://user:pw@acme.example/dir", "ops@example.com", "is not an ACME directory URL"),
    ("file:///etc/shadow", "ops@example.com", "is not an ACME directory URL"),
    ("https:///nohost", "ops@example.com", "is not an ACME directory URL"),
    ("https://acme.example/dir", "ops", "is not an e-mail address"),
    ("https://acme.example/dir", "ops@example.com\n--certificatesresolvers.x=y", "is not an e-mail address"),
    ("https://acme.example/dir", "a" * 65 + "@example.com", "is not an e-mail address"),
    ("https://acme.example/dir", "ops@" + "a" * 250 + ".com", "is not an e-mail address"),
])
def test_hostile_acme_settings(directory: str, email: str, message: str | None) -> None:
    if message is None:
        tls.check_acme(directory, email)
        return
    with pytest.raises(BasaltError) as caught:
        tls.check_acme(directory, email)
    assert message in str(caught.value)


@pytest.mark.parametrize("mode", ["", "SITE-CA", "letsencrypt", "off\n", "acme "])
def test_hostile_modes(mode: str) -> None:
    with pytest.raises(BasaltError) as caught:
        tls.check_mode(mode)
    assert "is not a TLS mode" in str(caught.value) and "site-ca, acme, off" in str(caught.value)


@pytest.mark.parametrize(("notes", "expected"), [
    ({}, tls.Tls()),
    ({"basalt.io/tls": "site-ca", "basalt.io/tls-hosts": "a.local,v1-a.local", "basalt.io/tls-renew": "100"},
     tls.Tls("site-ca", ("a.local", "v1-a.local"), 100.0)),
    ({"basalt.io/tls": "evil"}, tls.Tls()),  # an unknown mode written by hand: plain, never a crash
    ({"basalt.io/tls": "site-ca", "basalt.io/tls-renew": "soon"}, tls.Tls("site-ca", (), 0.0)),  # due now
])
def test_tls_records_read_back_from_annotations(notes: dict[str, str], expected: tls.Tls) -> None:
    assert tls.Tls.from_annotations(notes, "basalt.io") == expected


def test_an_acme_directory_that_does_not_answer_as_one_is_refused(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(BasaltError) as caught:
        tls.probe_acme(f"https://127.0.0.1:{port}/dir", timeout=2)
    assert "the ACME directory does not answer" in str(caught.value)
    assert "app_tls.mode: site-ca needs no network" in str(caught.value)


# -- ACME: Traefik's own resolver against a real ACME server -----------------------------------------

class Pebble:
    """Debian's ``pebble`` (an ACME server, as Let's Encrypt's staging) on 127.0.0.1, its HTTPS
    certificate from a CA made here; ``pebble-challtestsrv`` as the DNS it asks (every name is
    127.0.0.1, so HTTP-01 reaches Traefik's ``web`` entry point). Bounded; both killed by PID."""

    def __init__(self, work: Path, http_port: int) -> None:
        self.work = work
        self.port, self.mgmt, self.dns, self.dns_mgmt = free_port(), free_port(), free_port(), free_port()
        ca_cert, ca_key = tls.make_ca("pebble's listener CA (test)")
        cert, key = tls.issue(ca_cert, ca_key, ["localhost"])
        (work / "listener-ca.pem").write_bytes(ca_cert)
        (work / "cert.pem").write_bytes(cert)
        (work / "key.pem").write_bytes(key)
        (work / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(work / "cert.pem"), "privateKey": str(work / "key.pem"),
            "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}))
        self.directory = f"https://localhost:{self.port}/dir"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Pebble:
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        servers = ((["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns}", "-management",
                     f"127.0.0.1:{self.dns_mgmt}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                     "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""], "challtestsrv.log"),
                   (["pebble", "-config", str(self.work / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns}"],
                    "pebble.log"))
        deadline = time.monotonic() + 20
        try:  # whatever stops the start, the servers that did start are killed by their PIDs
            for argv, name in servers:
                with open(self.work / name, "wb") as log:
                    self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, env=env))
            while True:
                try:
                    tls.probe_acme(self.directory, str(self.work / "listener-ca.pem"), timeout=2)
                    return self
                except BasaltError:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                        raise
                    time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise

    def root(self) -> bytes:
        """The root pebble signs under (made anew at each start)."""
        context = ssl.create_default_context(cafile=str(self.work / "listener-ca.pem"))
        with urllib.request.urlopen(f"https://localhost:{self.mgmt}/roots/0", context=context, timeout=10) as r:
            return bytes(r.read(64 << 10))

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def test_an_acme_app_gets_its_certificate_from_the_acme_server_through_traefik(tmp_path: Path) -> None:
    web = free_port()
    with Pebble(tmp_path, http_port=web) as pebble, FakeKube() as api, Kubelet(api):
        # Traefik as the node's HelmChartConfig configures it (the resolver's arguments), trusting
        # pebble's listener as it trusts a public ACME server, on the web port pebble validates on
        args = tls.traefik_arguments(pebble.directory, "ops@example.com", storage=str(tmp_path / "acme.json"))
        conf = api.kubeconfig(tmp_path / "kubeconfig")
        with Traefik(api.url, tmp_path, extra=tuple(args), web=web,
                     env={"LEGO_CA_CERTIFICATES": str(tmp_path / "listener-ca.pem")}) as router:
            assert basalt_app(conf, "run", "nginx:1.27", "--name", "shop", "--port", "8080", "--tls", "acme") == 0
            assert ("Secret", "default", "shop-tls") not in api.objects  # Traefik's resolver's, not ours
            (tmp_path / "pebble-root.pem").write_bytes(pebble.root())
            status, body, cert = until(lambda: served(router.websecure, "shop.local", tmp_path / "pebble-root.pem"),
                                       "a certificate from the ACME server", timeout=60)
            assert (status, body) == (200, "v1") and "shop.local" in names(cert)
            assert plain(router.web, "shop.local") == (301, "https://shop.local/a/path?q=1")
            # the account and the certificate are kept where the chart keeps them (k3s: the pod's /data)
            stored = json.loads((tmp_path / "acme.json").read_text())
            domains = [c["domain"]["main"] for c in stored[tls.RESOLVER]["Certificates"]]
            assert "shop.local" in domains and (tmp_path / "acme.json").stat().st_mode & 0o077 == 0


NEEDS = ("hint: e.g. acme_directory: https://acme-v02.api.letsencrypt.org/directory, acme_email: ops@example.com; "
         "or mode: site-ca, which needs no network")


@pytest.mark.parametrize(("text", "value", "expected"), [
    ("app_tls:\n  mode: acme\n", {"mode": "acme"},
     [f"site.yaml:1: app_tls: app_tls.mode acme needs acme_directory\n{NEEDS}",
      f"site.yaml:1: app_tls: app_tls.mode acme needs acme_email\n{NEEDS}"]),
    ("app_tls:\n  mode: acme\n  acme_directory: http://x.org/dir\n  acme_email: ops@x.org\n", None,
     ["site.yaml:3: app_tls.acme_directory: 'http://x.org/dir' is not valid here\n"
      "hint: the ACME server's directory URL, https://…"]),
    ("app_tls:\n  mode: acme\n  acme_directory: https://x.org/dir\n  acme_email: \"ops@x.org\\n--evil=1\"\n", None,
     ["site.yaml:4: app_tls.acme_email: 'ops@x.org\\n--evil=1' is not an e-mail address\n"
      "hint: the ACME account's contact, e.g. ops@example.com"]),
    ("app_tls:\n  mode: acme\n  acme_directory: https://u:p@x.org/dir\n  acme_email: ops@x.org\n", None,
     ["site.yaml:3: app_tls.acme_directory: 'https://u:p@x.org/dir' is not an ACME directory URL\n"
      "hint: https://HOST/PATH, as the ACME server documents it, e.g. https://acme-v02.api.letsencrypt.org/directory"]),
    ("app_tls:\n  mode: letsencrypt\n", None,
     ["site.yaml:2: app_tls.mode: 'letsencrypt' is not one of ['site-ca', 'acme', 'off']"]),
    ("app_tls:\n  mode: off\n", {"mode": "off"}, []),  # YAML 1.1's false: the word was meant
    ("app_tls:\n  mode: OFF\n", {"mode": "off"}, []),
    ("app_tls:\n  mode: no\n", None,  # a boolean where a word was wanted: said as such, with the fix
     ["site.yaml:2: app_tls.mode: false (an unquoted no, off or false, which YAML reads as a boolean) is not one of "
      "['site-ca', 'acme', 'off']\nhint: quote the word to mean the text, e.g. \"no\""]),
    ("app_tls:\n  mode: yes\n", None,
     ["site.yaml:2: app_tls.mode: true (an unquoted yes, on or true, which YAML reads as a boolean) is not one of "
      "['site-ca', 'acme', 'off']\nhint: quote the word to mean the text, e.g. \"no\""]),
    ("app_tls:\n  mode: \"no\"\n", None, ["site.yaml:2: app_tls.mode: 'no' is not one of ['site-ca', 'acme', 'off']"]),
    ("app_tls: [site-ca]\n", None, ["site.yaml:1: app_tls: expected object, got array"]),
    ("app_tls:\n  acme_directory: https://" + "a" * 2100 + "\n", None,
     ["site.yaml:2: app_tls.acme_directory: must be at most 2048 characters"]),
])
def test_app_tls_in_config_is_checked_exactly(text: str, value: dict[str, str] | None, expected: list[str]) -> None:
    from agent.config.validate import check_text
    loaded = check_text(text, "site.yaml")
    assert [p.render() for p in loaded.problems] == expected
    if value is not None:
        assert loaded.value["app_tls"] == value


def test_acme_settings_in_another_mode_are_a_warning() -> None:
    from agent.config.validate import check_text
    loaded = check_text("app_tls:\n  mode: site-ca\n  acme_email: ops@x.org\n", "site.yaml")
    assert loaded.problems == ()
    assert [p.render() for p in loaded.warnings] == [
        "site.yaml:3: warning: app_tls.acme_email: acme_email is used only with app_tls.mode acme (this is site-ca)\n"
        "hint: set mode: acme, or remove it"]
