"""HTTPS for apps, with no cert-manager: a site CA the node keeps, or ACME through Traefik's own
certificate resolver.

- ``site-ca`` (the default; offline sites): the node makes a CA once, under its state partition
  (``/var/lib/basalt/apps-ca``: the key 0600), and gives it to the apps controller as the Secret
  ``basalt-system/basalt-site-ca``. The controller issues each app a certificate for its host and
  its revisions' preview hosts (the Secret ``APP-tls``, 90 days, renewed 30 days before its end or
  when the hosts change); Traefik serves it on ``websecure``. ``basalt app ca`` prints the CA's
  certificate, for clients to trust.
- ``acme``: Traefik asks the ACME directory in config (``app_tls.acme_directory``, ``acme_email``)
  for each host it routes, over HTTP-01 on ``web``, through its resolver ``basalt``.
- ``off``: plain HTTP, as before.

In both TLS modes plain HTTP on ``web`` is redirected to HTTPS (Traefik's ``redirectScheme``).
Keys and certificates are made with the ``openssl`` command (OpenSSL 3), never by our own code:
P-256 keys, SHA-256 signatures, random 127-bit serial numbers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.apps.spec import MANAGED, problem

MODES = ("site-ca", "acme", "off")
DEFAULT_MODE = "site-ca"
RESOLVER = "basalt"  # Traefik's certificate resolver, in ACME mode
NAMESPACE = "basalt-system"
CA_SECRET = "basalt-site-ca"  # kubernetes.io/tls: the site CA, mounted into the controller only
SETTINGS = "basalt-apps"  # ConfigMap: the mode and the CA's certificate (public), for the CLI
CA_MOUNT = "/etc/basalt/site-ca"  # in the controller's pod: tls.crt, tls.key
CERT_DAYS, RENEW_DAYS = 90, 30
CA_DAYS = 3650
OPENSSL = "/usr/bin/openssl"
TIMEOUT_S = 30
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                   r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)+$")


def secret_name(app: str) -> str:
    return f"{app}-tls"


def _openssl(args: list[str], cwd: str) -> None:
    # an empty configuration of its own (not the system's, and no /dev needed: a chroot may lack it)
    conf = os.path.join(cwd, "openssl.cnf")
    if not os.path.exists(conf):
        Path(conf).write_text("")
    env = {"PATH": "/usr/bin:/bin", "OPENSSL_CONF": conf}
    try:
        done = subprocess.run([os.environ.get("BASALT_OPENSSL", OPENSSL), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OSError(f"openssl {args[0]}: {exc}") from None
    if done.returncode != 0:
        raise OSError(f"openssl {args[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}")


def _private_dir() -> tempfile.TemporaryDirectory[str]:
    """A directory only this process's user may enter (mkdtemp: 0700), removed with what is in it."""
    return tempfile.TemporaryDirectory(prefix="basalt-tls-")


def make_ca(common_name: str) -> tuple[bytes, bytes]:
    """A new CA: (certificate PEM, private key PEM)."""
    with _private_dir() as d:
        _openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                  "-keyout", "ca.key", "-out", "ca.crt", "-days", str(CA_DAYS), "-sha256",
                  "-set_serial", f"0x{secrets.randbits(127):x}", "-subj", "/CN=" + _dn(common_name),
                  "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign"], d)
        return Path(d, "ca.crt").read_bytes(), Path(d, "ca.key").read_bytes()


def issue(ca_cert: bytes, ca_key: bytes, hosts: list[str], days: int = CERT_DAYS) -> tuple[bytes, bytes]:
    """A server certificate for ``hosts`` (the first is its subject), signed by the CA:
    (certificate chain PEM: the leaf then the CA, private key PEM)."""
    with _private_dir() as d:
        fd = os.open(os.path.join(d, "ca.key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ca_key)
        Path(d, "ca.crt").write_bytes(ca_cert)
        Path(d, "ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                  "extendedKeyUsage=serverAuth\n"
                                  f"subjectAltName={','.join('DNS:' + h for h in hosts)}\n")
        _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem"], d)
        _openssl(["req", "-new", "-key", "key.pem", "-subj", "/CN=" + _dn(hosts[0]), "-out", "req.pem"], d)
        _openssl(["x509", "-req", "-in", "req.pem", "-CA", "ca.crt", "-CAkey", "ca.key", "-sha256",
                  "-set_serial", f"0x{secrets.randbits(127):x}", "-days", str(days), "-extfile", "ext",
                  "-out", "cert.pem"], d)
        return Path(d, "cert.pem").read_bytes() + ca_cert, Path(d, "key.pem").read_bytes()


def _dn(value: str) -> str:
    """A value for ``-subj /CN=…``: the characters that would start another attribute escaped."""
    return re.sub(r"([/+=,\\])", r"\\\1", value)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tls_secret(name: str, namespace: str, cert: bytes, key: bytes, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**MANAGED, **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": meta,
            "data": {"tls.crt": b64(cert), "tls.key": b64(key)}}


def settings(mode: str, ca_cert: bytes = b"") -> dict[str, Any]:
    """The ConfigMap the CLI reads: the cluster's TLS mode for new apps, and the CA's certificate."""
    data = {"tls": mode, **({"ca.crt": ca_cert.decode()} if ca_cert else {})}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": SETTINGS, "namespace": NAMESPACE, "labels": dict(MANAGED)}, "data": data}


def node_manifest(mode: str, ca_dir: str, node: str) -> bytes:
    """The k3s auto-deploy manifest a server writes at boot: the settings, and in ``site-ca`` mode
    the site CA as a Secret (made under ``ca_dir`` the first time, kept after)."""
    docs: list[dict[str, Any]] = []
    ca_cert = b""
    if mode == "site-ca":
        ca_cert, ca_key = keep_ca(ca_dir, node)
        docs.append(tls_secret(CA_SECRET, NAMESPACE, ca_cert, ca_key))
    docs.insert(0, settings(mode, ca_cert))
    return "".join(f"---\n{json.dumps(d, indent=2)}\n" for d in docs).encode()


def keep_ca(ca_dir: str, node: str) -> tuple[bytes, bytes]:
    """The site CA under ``ca_dir`` (a directory of root's, 0700), made if it is not there."""
    from agent import files
    files.make_dir(ca_dir, 0o700, (0, 0))
    crt, key = os.path.join(ca_dir, "ca.crt"), os.path.join(ca_dir, "ca.key")
    try:
        return _read(crt), _read(key)
    except FileNotFoundError:
        pass
    cert, secret = make_ca(f"Basalt site CA {node}"[:64])
    files.write_atomic(key, secret, 0o600, (0, 0))  # the key first: a certificate alone is never kept
    files.write_atomic(crt, cert, 0o644, (0, 0))
    return cert, secret


def _read(path: str, limit: int = 64 << 10) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


@dataclass(frozen=True)
class Tls:
    """An app's HTTPS, kept in its TraefikService's annotations: the mode, and in ``site-ca`` mode
    the hosts its certificate names and when it is to be renewed (Unix time)."""

    mode: str = "off"
    hosts: tuple[str, ...] = ()
    renew: float = 0.0

    def annotations(self, domain: str) -> dict[str, str]:
        """What the TraefikService carries; nothing for plain HTTP (an app from before TLS reads the same)."""
        if self.mode == "off":
            return {}
        out = {f"{domain}/tls": self.mode}
        if self.hosts:
            out[f"{domain}/tls-hosts"] = ",".join(self.hosts)
            out[f"{domain}/tls-renew"] = f"{self.renew:.0f}"
        return out

    @classmethod
    def from_annotations(cls, notes: dict[str, str], domain: str) -> Tls:
        mode = notes.get(f"{domain}/tls", "off")
        hosts = tuple(h for h in notes.get(f"{domain}/tls-hosts", "").split(",") if h)
        try:
            renew = float(notes.get(f"{domain}/tls-renew", "0"))
        except ValueError:
            renew = 0.0
        return cls(mode if mode in MODES else "off", hosts, renew)

    def due(self, hosts: list[str], now: float) -> bool:
        """Whether a ``site-ca`` app needs a new certificate: none yet, other hosts, or near its end."""
        return self.mode == "site-ca" and (tuple(hosts) != self.hosts or now >= self.renew)


def check_mode(mode: str, path: str = "tls") -> str:
    if mode not in MODES:
        raise problem(f"{mode!r} is not a TLS mode", f"one of {', '.join(MODES)}", path)
    return mode


def check_acme(directory: str, email: str) -> None:
    """ACME's settings, as far as they can be checked without asking the directory."""
    url = urllib.parse.urlsplit(directory)
    if url.scheme != "https" or not url.hostname or url.username or url.password:
        raise problem(f"{directory!r} is not an ACME directory URL", "https://HOST/PATH, as the ACME server "
                      "documents it, e.g. https://acme-v02.api.letsencrypt.org/directory", "app_tls.acme_directory")
    if not EMAIL.fullmatch(email) or len(email) > 254:
        raise problem(f"{email!r} is not an e-mail address", "the ACME account's contact, e.g. ops@example.com",
                      "app_tls.acme_email")


def probe_acme(directory: str, ca_file: str | None = None, timeout: float = 10.0) -> None:
    """Ask the directory whether it is one (bounded: time, and 64 KiB of answer); a clear refusal if not."""
    import ssl
    import urllib.error
    import urllib.request
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with urllib.request.urlopen(directory, timeout=timeout, context=context) as r:
            body = r.read(64 << 10)
        doc = json.loads(body)
        if not isinstance(doc, dict) or "newAccount" not in doc or "newOrder" not in doc:
            raise ValueError("its answer is not an ACME directory (no newAccount, newOrder)")
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise problem(f"{directory}: the ACME directory does not answer: {exc}",
                      "check the URL and that this node reaches it; app_tls.mode: site-ca needs no network",
                      "app_tls.acme_directory") from None


def traefik_arguments(directory: str, email: str, storage: str = "/data/acme.json") -> list[str]:
    """Traefik's static arguments for the ``basalt`` resolver: HTTP-01 on ``web``, its account and
    certificates kept in /data (k3s's chart: the pod's volume)."""
    prefix = f"--certificatesresolvers.{RESOLVER}.acme"
    return [f"{prefix}.caserver={directory}", f"{prefix}.email={email}", f"{prefix}.storage={storage}",
            f"{prefix}.httpchallenge.entrypoint=web"]


def helm_chart_config(directory: str, email: str) -> dict[str, Any]:
    """k3s's Traefik, given the resolver: a HelmChartConfig its chart merges into its values."""
    values = {"additionalArguments": traefik_arguments(directory, email)}
    return {"apiVersion": "helm.cattle.io/v1", "kind": "HelmChartConfig",
            "metadata": {"name": "traefik", "namespace": "kube-system"},
            "spec": {"valuesContent": json.dumps(values, indent=2)}}


def renew_at(now: float | None = None) -> float:
    return (time.time() if now is None else now) + (CERT_DAYS - RENEW_DAYS) * 86400
