"""Debian archive access: mirrors, signed indexes, package resolution.

Trust chain: ``InRelease`` is checked with ``gpgv`` against the archive
keyring; it lists the sha256 of every ``Packages`` index; each index lists the
sha256 of every ``.deb``. Everything downloaded is verified against that chain
before it enters the blob store.
"""

from __future__ import annotations

import functools
import json
import lzma
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import BasaltError, Problem
from builder import host, progress
from builder.download import BlobStore, download, sha256_file

DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
APT_SOURCES = Path("/etc/apt")


@dataclass(frozen=True)
class Source:
    """One archive location: a URI and the suites fetched from it."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...] = ("main",)


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    if fields:
        yield fields


def host_sources(etc_apt: Path = APT_SOURCES) -> list[Source]:
    """The Debian archives configured on the build host, in apt's order."""
    found: list[Source] = []
    legacy = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]
    for path in legacy:
        if not path.is_file():
            continue
        for raw in path.read_text(errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
            if m:
                found.append(Source(m.group(2).rstrip("/"), (m.group(3),), tuple(m.group(4).split()) or ("main",)))
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        for st in _deb822_stanzas(path.read_text(errors="replace")):
            if "deb" not in st.get("Types", "").split() or st.get("Enabled", "yes") == "no":
                continue
            for uri in st.get("URIs", "").split():
                found.append(Source(uri.rstrip("/"), tuple(st.get("Suites", "").split()),
                                    tuple(st.get("Components", "main").split())))
    return [s for s in found if s.uri.startswith(("http://", "https://", "file://")) and _is_debian(s)]


def _is_debian(source: Source) -> bool:
    return any(re.fullmatch(r"[a-z]+(-(updates|security|backports|proposed-updates))?", s) for s in source.suites) \
        and "/debian" in source.uri


def sources_for(suite: str, mirror: str | None, etc_apt: Path = APT_SOURCES,
                components: tuple[str, ...] = ("main",)) -> list[Source]:
    """Archives to use for ``suite``: the override mirror, else the host's apt sources. The host
    gives mirrors and suites; the components are the image's (``non-free-firmware`` for the Pi's
    firmware, say), so a build does not depend on which components the host happens to list."""
    if mirror:
        return [Source(mirror.rstrip("/"), (suite, f"{suite}-updates"), components)]
    picked: list[Source] = []
    for src in host_sources(etc_apt):
        suites = tuple(s for s in src.suites if s == suite or s.startswith(f"{suite}-"))
        if suites:
            picked.append(Source(src.uri, suites, components))
    if not picked:
        raise BasaltError(Problem(
            f"no Debian mirror for '{suite}' in the build host's apt sources ({etc_apt}/sources.list*)",
            hint="set debian.mirror in the image definition to a Debian mirror URL"))
    return picked


# --- Debian version comparison (Debian Policy 5.6.12) -----------------------

def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"[^\d]*", a).group()  # type: ignore[union-attr]
        nb = re.match(r"[^\d]*", b).group()  # type: ignore[union-attr]
        for i in range(max(len(na), len(nb))):
            ca = _order(na[i]) if i < len(na) else 0
            cb = _order(nb[i]) if i < len(nb) else 0
            if ca != cb:
                return ca - cb
        a, b = a[len(na):], b[len(nb):]
        da = re.match(r"\d*", a).group()  # type: ignore[union-attr]
        db = re.match(r"\d*", b).group()  # type: ignore[union-attr]
        if int(da or 0) != int(db or 0):
            return int(da or 0) - int(db or 0)
        a, b = a[len(da):], b[len(db):]
    return 0


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as Debian version ``a`` sorts before, equal to, after ``b``."""
    def split(v: str) -> tuple[int, str, str]:
        epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
        upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
        return int(epoch or 0), upstream, revision
    ea, ua, ra = split(a)
    eb, ub, rb = split(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


# --- Indexes ------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    filename: str
    sha256: str
    size: int
    uri: str
    depends: str = ""
    provides: str = ""

    @property
    def url(self) -> str:
        return f"{self.uri}/{self.filename}"

    def dependency_groups(self) -> list[list[str]]:
        """``a (>= 1) | b:any, c`` -> ``[['a', 'b'], ['c']]`` (versions are not constrained:
        an index carries one version of each package, the newest of which is taken)."""
        groups = []
        for group in self.depends.split(","):
            names = [re.split(r"[\s(:\[]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
            names = [n for n in names if n]
            if names:
                groups.append(names)
        return groups


def check_release(text: str, suite: str, url: str, now: float | None = None) -> None:
    """A signed Release is only good for the suite asked for and until its Valid-Until (as apt
    checks them): an old, validly signed Release replayed by a mirror or a man in the middle would
    otherwise pin packages with known holes, and one for another suite would swap the set."""
    import email.utils
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()
                                           if line and not line.startswith(" ") and ":" in line)}
    names = {fields.get("Suite", ""), fields.get("Codename", "")}
    if suite not in names:
        raise BasaltError(Problem(f"{url}: a signed Release for {fields.get('Codename') or fields.get('Suite')!r}, "
                                  f"not {suite!r}", hint="the mirror serves another suite here: check debian.mirror"))
    until = fields.get("Valid-Until")
    if until:
        try:
            expires = email.utils.parsedate_to_datetime(until).timestamp()
        except (TypeError, ValueError):
            raise BasaltError(Problem(f"{url}: its Valid-Until {until!r} is not a date",
                                      hint="use another mirror")) from None
        if expires < (time.time() if now is None else now):
            raise BasaltError(Problem(f"{url}: the signed Release expired on {until} (an old copy, replayed?)",
                                      hint="the mirror is stale or not the archive: use another (debian.mirror)"))


def verified_release(store: BlobStore, source: Source, suite: str, keyring: Path) -> dict[str, tuple[str, int]]:
    """Fetch and verify ``InRelease``; return ``{index path: (sha256, size)}``."""
    url = f"{source.uri}/dists/{suite}/InRelease"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "InRelease"
        download(url, raw, label=f"{suite}/InRelease")
        plain = Path(tmp) / "Release"
        host.run(["gpgv", "--keyring", str(keyring), "--output", str(plain), str(raw)], f"{url}: signature check",
                 hint=f"the mirror is not signed by a key in {keyring}; set debian.keyring or use a Debian mirror")
        text = plain.read_text()
    check_release(text, suite, url)
    sums: dict[str, tuple[str, int]] = {}
    in_sha = False
    for line in text.splitlines():
        if not line.startswith(" "):
            in_sha = line.startswith("SHA256:")
            continue
        if in_sha:
            digest, size, name = line.split()
            sums[name] = (digest, int(size))
    return sums


def _parse_packages(text: str, uri: str) -> Iterator[Package]:
    for st in _deb822_stanzas(text):
        deps = ", ".join(x for x in (st.get("Pre-Depends", ""), st.get("Depends", "")) if x)
        yield Package(st["Package"], st["Version"], st.get("Architecture", ""), st["Filename"],
                      st["SHA256"], int(st["Size"]), uri, deps, st.get("Provides", ""))


class Index:
    """All packages of the given sources for one architecture, newest version of each."""

    def __init__(self, packages: Iterable[Package]):
        self.packages: dict[str, Package] = {}
        self.providers: dict[str, list[str]] = {}
        for pkg in packages:
            cur = self.packages.get(pkg.name)
            if cur is None or compare_versions(pkg.version, cur.version) > 0:
                self.packages[pkg.name] = pkg
        for pkg in self.packages.values():
            for prov in pkg.provides.split(","):
                name = re.split(r"[\s(]", prov.strip(), maxsplit=1)[0]
                if name:
                    self.providers.setdefault(name, []).append(pkg.name)

    @classmethod
    def load(cls, store: BlobStore, sources: list[Source], arch: str, keyring: Path) -> Index:
        found: list[Package] = []
        for src in sources:
            for suite in src.suites:
                sums = verified_release(store, src, suite, keyring)
                for comp in src.components:
                    name = f"{comp}/binary-{arch}/Packages.xz"
                    if name not in sums:
                        if suite == src.suites[0] and comp == "main":
                            raise BasaltError(Problem(f"{src.uri} {suite}: no {name} in the signed Release",
                                                      hint=f"is '{arch}' built for this suite?"))
                        continue
                    digest, size = sums[name]
                    found.extend(_cached_index(store, f"{src.uri}/dists/{suite}/{name}", digest, size, src.uri))
        return cls(found)

    def resolve(self, wanted: Iterable[str], exclude: Iterable[str] = ()) -> list[Package]:
        """The dependency closure of ``wanted``, leaving out ``exclude`` (and what only they need)."""
        excluded = set(exclude)
        chosen: dict[str, Package] = {}
        queue: list[tuple[str, str]] = [(name, "packages") for name in wanted]
        while queue:
            name, why = queue.pop(0)
            real = self._real(name, chosen)
            if real is None:
                raise BasaltError(Problem(f"package '{name}' (needed by {why}) is not in the archive",
                                          hint="check the spelling, or list the package under 'exclude' "
                                               "if the image can do without it"))
            if real in chosen:
                continue
            pkg = self.packages[real]
            chosen[real] = pkg
            for group in pkg.dependency_groups():
                if any(alt in excluded for alt in group):
                    continue
                if any(self._real(alt, chosen) in chosen for alt in group):
                    continue
                pick = next((alt for alt in group if self._real(alt, chosen)), group[0])
                queue.append((pick, real))
        return sorted(chosen.values(), key=lambda p: p.name)

    def _real(self, name: str, chosen: dict[str, Package]) -> str | None:
        if name in self.packages:
            return name
        provs = self.providers.get(name, [])
        return next((p for p in provs if p in chosen), provs[0] if provs else None)

    def exact(self, names: Iterable[str]) -> list[Package]:
        """The named packages without their dependencies (boot loader files are only unpacked)."""
        out = []
        for name in names:
            if name not in self.packages:
                raise BasaltError(Problem(f"package '{name}' is not in the archive",
                                          hint="is the suite or architecture right?"))
            out.append(self.packages[name])
        return out

    def kernel(self, name: str) -> Package:
        """The versioned kernel package behind a metapackage such as ``linux-image-amd64``."""
        pkg = self.packages.get(name)
        if pkg is None:
            raise BasaltError(Problem(f"kernel package '{name}' is not in the archive",
                                      hint="use the metapackage for the architecture, e.g. linux-image-amd64"))
        for group in pkg.dependency_groups():
            if group[0].startswith("linux-image-") and group[0] in self.packages:
                return self.kernel(group[0])
        return pkg


def _cached_index(store: BlobStore, url: str, digest: str, size: int, uri: str) -> list[Package]:
    """Parse a Packages.xz, memoised on disk by its hash (parsing 60k stanzas takes seconds)."""
    parsed = store.root.parent.parent / "indexes" / f"{digest}.json"
    if parsed.is_file():
        return [Package(**d, uri=uri) for d in json.loads(parsed.read_text())]
    blob = store.fetch(url, digest, size, label=url.split("/dists/", 1)[-1])
    with progress.step(f"Parsing {url.split('/dists/', 1)[-1]}"):
        pkgs = list(_parse_packages(lzma.decompress(blob.read_bytes()).decode("utf-8", "replace"), uri))
    parsed.parent.mkdir(parents=True, exist_ok=True)
    tmp = parsed.with_suffix(f".{os.getpid()}.tmp")
    rows = [{k: v for k, v in p.__dict__.items() if k != "uri"} for p in pkgs]
    tmp.write_text(json.dumps(rows))
    tmp.replace(parsed)
    return pkgs


@functools.cache
def keyring_path(value: str | None) -> Path:
    path = Path(value) if value else DEFAULT_KEYRING
    if not path.is_file():
        raise BasaltError(Problem(f"archive keyring {path} not found",
                                  hint="apt-get install debian-archive-keyring, or set debian.keyring"))
    return path


__all__ = [
    "Index",
    "Package",
    "Source",
    "compare_versions",
    "host_sources",
    "keyring_path",
    "sha256_file",
    "sources_for",
]


def blobs_by_role(lock_dir: Path, store: BlobStore, role: str) -> list[tuple[dict[str, Any], Path]]:
    """The locked packages of one role (the fetch stage's ``packages.lock.json`` in ``lock_dir``)
    with their verified blob paths."""
    rows = json.loads((lock_dir / "packages.lock.json").read_text())["packages"]
    return [(r, store.path(r["sha256"])) for r in rows if r["role"] == role]
