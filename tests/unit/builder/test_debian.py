"""Debian archive logic: version order, dependency resolution, host apt sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import BasaltError
from builder.debian import Index, Package, Source, compare_versions, host_sources, sources_for


@pytest.mark.parametrize(("a", "b", "sign"), [
    ("1.0", "1.0", 0), ("1.0", "1.1", -1), ("1.10", "1.9", 1), ("1:0.1", "2.0", 1),
    ("1.0~rc1", "1.0", -1), ("1.0-1", "1.0-2", -1), ("2.36-9+deb12u4", "2.36-9+deb12u14", -1),
    ("6.1.192-2", "6.1.92-2", 1), ("1.0a", "1.0", 1), ("1.0+b1", "1.0", 1), ("0.9-1", "0.9-1~bpo", 1),
])
def test_compare_versions(a: str, b: str, sign: int) -> None:
    result = compare_versions(a, b)
    assert (result > 0) - (result < 0) == sign


def pkg(name: str, depends: str = "", version: str = "1", provides: str = "") -> Package:
    return Package(name, version, "amd64", f"pool/{name}.deb", "0" * 64, 1, "http://m", depends, provides)


INDEX = Index([
    pkg("app", "libc6 (>= 2.36), libfoo | libbar, python3:any, debconf (>= 0.5) | debconf-2.0"),
    pkg("libc6"), pkg("libbar", "libc6"), pkg("python3", "python3.11"), pkg("python3.11", "libc6"),
    pkg("debconf", "perl-base"), pkg("perl-base"), pkg("mta-impl", provides="mail-transport-agent"),
    pkg("needs-mta", "mail-transport-agent"), pkg("libc6", version="2"),
    pkg("linux-image-amd64", "linux-image-6.1.0-9-amd64 (= 6.1)"), pkg("linux-image-6.1.0-9-amd64", "kmod"),
])


def test_resolve_follows_depends_alternatives_and_arch_qualifiers() -> None:
    names = [p.name for p in INDEX.resolve(["app"], exclude=["debconf", "debconf-2.0"])]
    assert names == ["app", "libbar", "libc6", "python3", "python3.11"]


def test_resolve_takes_newest_version() -> None:
    assert {p.name: p.version for p in INDEX.resolve(["libc6"])}["libc6"] == "2"


def test_resolve_without_exclude_pulls_debconf_chain() -> None:
    assert "perl-base" in [p.name for p in INDEX.resolve(["app"])]


def test_resolve_virtual_package() -> None:
    assert [p.name for p in INDEX.resolve(["needs-mta"])] == ["mta-impl", "needs-mta"]


def test_resolve_missing_package_names_who_needs_it() -> None:
    index = Index([pkg("a", "ghost")])
    with pytest.raises(BasaltError) as exc:
        index.resolve(["a"])
    assert exc.value.render() == ("package 'ghost' (needed by a) is not in the archive\n"
                                  "hint: check the spelling, or list the package under 'exclude' "
                                  "if the image can do without it")


def test_kernel_metapackage_is_followed() -> None:
    assert INDEX.kernel("linux-image-amd64").name == "linux-image-6.1.0-9-amd64"


def test_host_sources_reads_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://other.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n")
    (tmp_path / "sources.list.d" / "vendor.sources").write_text(
        "Types: deb\nURIs: https://vendor.example/apt\nSuites: stable\nComponents: main\n")
    assert host_sources(tmp_path) == [
        Source("http://mirror.example/debian", ("bookworm",), ("main", "contrib")),
        Source("http://other.example/debian-security", ("bookworm-security",), ("main",)),
    ]
    assert [s.uri for s in sources_for("bookworm", None, tmp_path)] == [
        "http://mirror.example/debian", "http://other.example/debian-security"]
    # The host gives mirrors and suites; the image gives the components (the host's 'contrib' is not used).
    assert sources_for("bookworm", None, tmp_path, ("main", "non-free-firmware")) == [
        Source("http://mirror.example/debian", ("bookworm",), ("main", "non-free-firmware")),
        Source("http://other.example/debian-security", ("bookworm-security",), ("main", "non-free-firmware"))]


def test_mirror_override_and_missing_sources(tmp_path: Path) -> None:
    assert sources_for("trixie", "http://m.example/debian/", tmp_path) == [
        Source("http://m.example/debian", ("trixie", "trixie-updates"))]
    with pytest.raises(BasaltError) as exc:
        sources_for("trixie", None, tmp_path)
    assert "set debian.mirror" in exc.value.render()


RELEASE = """Origin: Debian
Label: Debian
Suite: {suite}
Codename: {codename}
Date: Sat, 08 Nov 2025 09:37:23 UTC
{valid}Architectures: all amd64 arm64
SHA256:
 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef  1234 main/binary-amd64/Packages.xz
"""
NOW = 1_764_806_400.0  # 2025-12-04


@pytest.mark.parametrize(("suite", "codename", "valid", "asked", "message"), [
    ("oldstable", "bookworm", "", "bookworm", None),  # the main suite carries no Valid-Until
    ("stable-security", "bookworm-security", "Valid-Until: Sat, 13 Dec 2025 09:37:23 UTC\n", "bookworm-security",
     None),
    ("oldstable", "bookworm", "", "bookworm-updates", "a signed Release for 'bookworm', not 'bookworm-updates'"),
    ("stable", "trixie", "", "bookworm", "a signed Release for 'trixie', not 'bookworm'"),
    ("oldstable-updates", "bookworm-updates", "Valid-Until: Sat, 15 Nov 2025 09:37:23 UTC\n", "bookworm-updates",
     "the signed Release expired on Sat, 15 Nov 2025 09:37:23 UTC (an old copy, replayed?)"),
    ("oldstable-updates", "bookworm-updates", "Valid-Until: someday\n", "bookworm-updates",
     "its Valid-Until 'someday' is not a date"),
])
def test_a_signed_release_is_good_only_for_its_suite_and_until_it_expires(
        suite: str, codename: str, valid: str, asked: str, message: str | None) -> None:
    from builder.debian import check_release
    text = RELEASE.format(suite=suite, codename=codename, valid=valid)
    if message is None:
        check_release(text, asked, "http://mirror/InRelease", NOW)
        return
    with pytest.raises(BasaltError) as err:
        check_release(text, asked, "http://mirror/InRelease", NOW)
    assert err.value.render().splitlines()[0] == f"http://mirror/InRelease: {message}"
