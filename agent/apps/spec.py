"""What a user asks for: an app's name, image, port, scale, environment and host, checked."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from agent.errors import BasaltError, Problem

DOMAIN = "basalt.io"
APP, REVISION = f"{DOMAIN}/app", f"{DOMAIN}/revision"
MANAGED = {"app.kubernetes.io/managed-by": "basalt"}
# A revision's objects are named APP-REVISION: both short enough that the name stays a DNS label.
NAME = re.compile(r"^[a-z]([-a-z0-9]{0,28}[a-z0-9])?$")
REVISION_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,14}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
HOST = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")
# A revision's preview host is REVISION-HOST: with a 16-character revision and '-', the host's first
# label keeps 46 of DNS's 63, and the whole name 236 of its 253.
PREVIEW_ROOM = 17
# An OCI image reference, as the distribution spec's grammar has it: [registry[:port]/]path[:tag][@sha256:digest]
_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(rf"(?:[a-zA-Z0-9](?:[-a-zA-Z0-9.]*[a-zA-Z0-9])?(?::[0-9]{{1,5}})?/)?{_PART}(?:/{_PART})*"
                   r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
DEFAULT_DOMAIN = "local"  # an app's host when none is given: NAME.local (mDNS, /etc/hosts, or a Host header)
FIRST_REVISION = "v1"
INCREMENT, INTERVAL = 5, 5.0  # Rio's default rate: 5 points every 5 seconds
ROLLBACK_AFTER = 120.0  # seconds a promoted revision may stay unready before the promotion is undone
# A promotion is undone when, over a step's window, the new revision answers more than this share of
# its requests with 5xx (and more than the revisions it replaces), or its p95 latency is above
# MAX_LATENCY (and above theirs): judged from Traefik's own metrics (agent/apps/metrics.py).
MAX_ERROR_RATE, MAX_LATENCY = 0.05, 1.0
LATENCY_RANGE = (0.001, 60.0)


def problem(message: str, hint: str | None = None, path: str | None = None) -> BasaltError:
    return BasaltError(Problem(message, path=path, hint=hint))


BY_REQUESTS = ("concurrency", "rps")  # what a request-driven range scales on (Rio's default: concurrency)
CONCURRENCY, IDLE = 10.0, 60.0  # requests in flight per replica; seconds without a request before zero


@dataclass(frozen=True)
class Scale:
    """A fixed replica count (min == max), a range the HorizontalPodAutoscaler moves in on CPU
    (``MIN-MAX``), or a range the controller moves in on requests (``MIN-MAX,concurrency=N`` or
    ``,rps=N`` per replica; a range from 0 always: the controller wakes it on a request, and puts
    it to sleep after ``idle=`` seconds without one)."""

    min: int = 1
    max: int = 1
    on: str = ""  # "", "cpu", "concurrency", "rps"
    target: float = 0.0  # per replica: requests in flight (concurrency) or per second (rps)
    idle: float = IDLE  # a range from 0: seconds without a request before the revision sleeps

    @property
    def autoscaled(self) -> bool:
        """By the HorizontalPodAutoscaler (on CPU)."""
        return self.max > self.min and self.on == "cpu"

    @property
    def by_requests(self) -> bool:
        """By the controller, from Traefik's counters."""
        return self.on in BY_REQUESTS

    def __str__(self) -> str:
        if self.max == self.min and not self.by_requests:
            return str(self.min)
        text = f"{self.min}-{self.max}"
        if self.by_requests:
            text += f",{self.on}={self.target:g}"
            if self.min == 0:
                text += f",idle={format_interval(self.idle)}"
        return text


def parse_scale(value: Any, path: str = "scale") -> Scale:
    text = str(value).strip()
    head, *options = text.split(",")
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", head.strip())
    if isinstance(value, bool) or not m:
        raise problem(f"{value!r} is not a replica count or a range", "give N (e.g. 2), MIN-MAX (e.g. 1-5, on CPU), "
                      "or MIN-MAX,concurrency=N or ,rps=N (on requests; e.g. 0-3,concurrency=10)", path)
    low, high = int(m.group(1)), int(m.group(2) or m.group(1))
    if high < low:
        raise problem(f"{head}: the range runs backwards", f"write it {high}-{low}", path)
    if high < 1:
        raise problem(f"{head}: an app needs at least one replica", "give 1 or more (a revision at 0% weight "
                                                                    "is scaled down by the controller)", path)
    if high > 100:
        raise problem(f"{head}: more than 100 replicas", "a node of 1-2 GB runs a few; give at most 100", path)
    on, target, idle = ("cpu" if high > low else ""), 0.0, IDLE
    for option in options:
        key, eq, val = option.strip().partition("=")
        if key in BY_REQUESTS and eq:
            n = re.fullmatch(r"\d+(?:\.\d+)?", val.strip())
            if not n or not 0 < float(val) <= 10000:
                raise problem(f"{option.strip()!r}: {key} is a number of requests per replica, more than 0",
                              f"e.g. {key}=10", path)
            on, target = key, float(val)
        elif key == "idle" and eq:
            idle = parse_interval(val, path)
            if not 1 <= idle <= 86400:
                raise problem(f"{option.strip()!r}: idle is 1s to 24h", "e.g. idle=60s", path)
        else:
            raise problem(f"{option.strip()!r} is not a scale option", "concurrency=N, rps=N or idle=DURATION, "
                          "e.g. 0-3,concurrency=10,idle=60s", path)
    if low == 0 and on != "rps":
        on, target = "concurrency", target or CONCURRENCY  # only the controller scales from zero
    if on in BY_REQUESTS and high == low:
        raise problem(f"{text}: {on}= needs a range", f"e.g. 1-{max(high, 2)},{on}={target:g}", path)
    return Scale(low, high, on, target, idle)


def parse_interval(value: Any, path: str = "interval") -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(value).strip())
    if isinstance(value, bool) or not m:
        raise problem(f"{value!r} is not a duration", "give seconds, e.g. 5s, 500ms or 1m", path)
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]
    if seconds <= 0:
        raise problem(f"{value!r}: the interval must be more than zero", "e.g. 5s", path)
    return seconds


def format_interval(seconds: float) -> str:
    return f"{seconds:g}s"


def parse_error_rate(value: Any, path: str = "--max-error-rate") -> float:
    """A share of requests: ``5%`` (or ``5``), 0-100 percent; a fraction back."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%?", str(value).strip())
    if isinstance(value, bool) or not m or not 0 <= float(m.group(1)) <= 100:
        raise problem(f"{value!r} is not an error rate", "a percentage of requests 0-100, e.g. 5% (a promotion "
                                                         "is rolled back above it)", path)
    return float(m.group(1)) / 100


def format_error_rate(rate: float) -> str:
    return f"{rate * 100:g}%"


def parse_latency(value: Any, path: str = "--max-latency") -> float:
    """A p95 latency bound in seconds (``500ms``, ``1s``), 1 ms to 60 s."""
    seconds = parse_interval(value, path)
    low, high = LATENCY_RANGE
    if not low <= seconds <= high:
        raise problem(f"{value!r} is out of range", "a p95 latency from 1ms to 60s, e.g. 500ms", path)
    return seconds


def parse_env(items: list[str] | dict[str, Any], path: str = "env") -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    if isinstance(items, dict):
        pairs = [(str(k), "" if v is None else str(v)) for k, v in items.items()]
    else:
        for item in items:
            key, sep, val = item.partition("=")
            if not sep:
                raise problem(f"{item!r} is not KEY=VALUE", "e.g. --env LOG_LEVEL=debug", path)
            pairs.append((key, val))
    for key, _ in pairs:
        if not ENV_NAME.fullmatch(key):
            raise problem(f"{key!r} is not a valid environment variable name", "letters, digits, '_', '-', '.'; "
                                                                             "not starting with a digit", path)
    return tuple(pairs)


def check_name(name: str, path: str = "name") -> str:
    if not NAME.fullmatch(name):
        raise problem(f"{name!r} is not a valid app name", "lowercase letters, digits and '-', starting with a "
                                                          "letter, at most 30 characters", path)
    return name


def check_revision(revision: str, path: str = "revision") -> str:
    if not REVISION_NAME.fullmatch(revision):
        raise problem(f"{revision!r} is not a valid revision name", "lowercase letters, digits and '-', at most "
                                                                   "16 characters, e.g. v2", path)
    return revision


def check_image(image: str, path: str = "image") -> str:
    if not image:
        raise problem("an app needs an image", "e.g. image: nginx:1.27", path)
    if len(image) > 255 or not IMAGE.fullmatch(image):
        raise problem(f"{image!r} is not an image reference", "[registry/]name[:tag][@sha256:digest], "
                                                             "e.g. nginx:1.27 or ghcr.io/acme/shop:2", path)
    return image


def check_port(port: Any, path: str = "port") -> int:
    ok = not isinstance(port, bool) and (isinstance(port, int) or str(port).isdigit())
    if not ok or not 1 <= int(port) <= 65535:
        raise problem(f"{port!r} is not a TCP port", "the port the container listens on, 1-65535", path)
    return int(port)


def check_host(host: str, path: str = "host") -> str:
    """A DNS name an app answers on, and its certificate names: no wildcard, no IP address, room
    for its revisions' preview hosts."""
    if not HOST.fullmatch(host):
        raise problem(f"{host!r} is not a host name", "lowercase letters, digits and '-' in dot-separated labels of "
                      "at most 63 characters, e.g. shop.example.com", path)
    if host.rsplit(".", 1)[-1].isdigit():
        raise problem(f"{host!r} is an address, not a host name", "give the app a name (e.g. shop.local) that "
                      "resolves to this node: routes and certificates are by name", path)
    first = host.split(".", 1)[0]
    if len(first) > 63 - PREVIEW_ROOM or len(host) > 253 - PREVIEW_ROOM:
        raise problem(f"{host!r} is too long for its revisions' preview hosts (REVISION-{first}...)",
                      f"at most {63 - PREVIEW_ROOM} characters in the first label and {253 - PREVIEW_ROOM} in all",
                      path)
    return host


@dataclass(frozen=True)
class AppSpec:
    """``basalt app run`` (and each entry of config.yaml's ``apps:``)."""

    name: str
    image: str
    port: int
    scale: Scale = Scale()
    env: tuple[tuple[str, str], ...] = ()
    host: str = ""
    namespace: str = "default"
    revision: str = FIRST_REVISION
    labels: dict[str, str] = field(default_factory=dict)
    tls: str = "off"  # site-ca, acme or off (agent/apps/tls.py)

    @property
    def url_host(self) -> str:
        return self.host or f"{self.name}.{DEFAULT_DOMAIN}"


def from_fields(fields: dict[str, Any]) -> AppSpec:
    """An AppSpec from config.yaml's fields (already schema-checked: types and keys)."""
    name = check_name(str(fields["name"]))
    image = check_image(str(fields.get("image") or ""))
    return AppSpec(name=name, image=image, port=check_port(fields.get("port")),
                   scale=parse_scale(fields.get("scale", 1)), env=parse_env(fields.get("env") or {}),
                   host=check_host(fields["host"]) if fields.get("host") else "",
                   namespace=str(fields.get("namespace") or "default"),
                   revision=check_revision(str(fields.get("revision") or FIRST_REVISION)))


LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def node_label(node: str) -> str | None:
    """A node's name as the label of its LAN names: its first label, if that is a DNS label."""
    first = node.split(".", 1)[0].lower()
    return first if LABEL.fullmatch(first) else None


def local_host(app: str, namespace: str, node: str) -> str:
    """The app's name on ``node``'s LAN, announced by mDNS (agent/apps/mdns.py): APP.NODE.local,
    or APP.NAMESPACE.NODE.local outside the default namespace."""
    return f"{app}.{node}.local" if namespace == "default" else f"{app}.{namespace}.{node}.local"


def preview_host(host: str, revision: str) -> str:
    """A revision's own host name: REVISION-HOST (shop.example.com → v2-shop.example.com)."""
    first, dot, rest = host.partition(".")
    return f"{revision}-{first}{dot}{rest}"
