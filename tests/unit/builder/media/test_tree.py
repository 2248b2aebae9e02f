"""Writes into an image's root tree (builder/media/tree.py and the rootfs stage's writes through it):
a link in the tree, whether Debian's or one an overlay planted, is followed inside the tree and
never to the build host's file; a link at the written name is replaced. Each hostile case checks
that the host's file is untouched and where the write landed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import layout
from agent.errors import BasaltError
from builder.media import tree
from builder.stages import rootfs


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """An image tree and, beside it, a 'host' directory with a file the build must never touch."""
    root, host = tmp_path / "root", tmp_path / "host"
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    host.mkdir()
    (host / "victim").write_text("host\n")
    return root, host


def untouched(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["victim"]
    assert (host / "victim").read_text() == "host\n"


# (what the tree holds, the path written, where the write must land)
HOSTILE = [
    pytest.param({"etc/alternatives": "{host}"}, "etc/alternatives/victim", "{host}/victim",
                 id="absolute-link-to-a-host-directory-is-the-tree-s-own-path"),
    pytest.param({"usr/bin/awk": "{host}/victim"}, "usr/bin/awk", "usr/bin/awk",
                 id="link-at-the-name-to-a-host-file-is-replaced"),
    pytest.param({"usr/lib/basalt": "/../../../{host}"}, "usr/lib/basalt/version", "{host}/version",
                 id="dot-dots-stop-at-the-tree-s-root"),
    pytest.param({"usr/lib/basalt": "../../../../../../{host}"}, "usr/lib/basalt/version", "{host}/version",
                 id="relative-dot-dots-stop-at-the-tree-s-root"),
    pytest.param({"etc/x": "/etc/y", "etc/y": "../usr/lib"}, "etc/x/f", "usr/lib/f",
                 id="a-chain-of-links-inside-the-tree"),
    pytest.param({}, "usr/../../../{host}/victim", "{host}/victim", id="dot-dots-in-the-path-itself"),
]


@pytest.mark.parametrize(("links", "rel", "lands"), HOSTILE)
def test_a_write_never_leaves_the_tree(world: tuple[Path, Path], links: dict[str, str], rel: str,
                                       lands: str) -> None:
    root, host = world
    h = str(host).lstrip("/")
    for name, target in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target.format(host=h if target.startswith("/../") else host))
    written = tree.write(root, rel.format(host=h), "image\n")
    assert written == root / lands.format(host=h)
    assert written.read_text() == "image\n" and not written.is_symlink()
    assert oct(written.stat().st_mode & 0o777) == oct(0o644)
    untouched(host)


def test_a_link_loop_is_refused(world: tuple[Path, Path]) -> None:
    root, host = world
    (root / "etc/a").symlink_to("b")
    (root / "etc/b").symlink_to("a")
    with pytest.raises(BasaltError) as e:
        tree.write(root, "etc/a/f", "x")
    assert "/root/etc/a: too many symbolic links" in str(e.value)
    assert "fix the link in the overlay" in e.value.problems[0].hint
    untouched(host)


def test_copy_and_symlink_replace_a_link_and_keep_the_mode(world: tuple[Path, Path], tmp_path: Path) -> None:
    root, host = world
    (root / "usr/bin").mkdir()
    (root / "usr/bin/tool").symlink_to(host / "victim")
    src = tmp_path / "src"
    src.write_text("copied\n")
    out = tree.copy(root, "usr/bin/tool", src, 0o755)
    assert out.read_text() == "copied\n" and not out.is_symlink() and out.stat().st_mode & 0o777 == 0o755
    (root / "usr/bin/other").symlink_to(host / "victim")
    assert os.readlink(tree.symlink(root, "usr/bin/other", "busybox")) == "busybox"
    untouched(host)


def test_an_overlay_cannot_lead_the_build_out_of_the_tree(world: tuple[Path, Path], tmp_path: Path) -> None:
    """An overlay whose first entry is a link to a host directory, and whose next entry is a file
    under it: the file lands in the tree where the link leads inside it; busybox applets and modes
    go the same way."""
    root, host = world
    overlay = tmp_path / "overlay"
    (overlay / "rootfs/opt").mkdir(parents=True)
    (overlay / "rootfs/opt/escape").symlink_to(host)
    files = overlay / "rootfs/opt"
    (files / "zz").mkdir()
    (files / "zz/payload").write_text("overlay\n")
    (overlay / "overlay.yaml").write_text("busybox_applets: [ash]\nmodes: {opt/zz/payload: '0600'}\n")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/ash").symlink_to(host / "victim")  # dangling for the tree: its target is a host path
    rootfs.apply_overlay(overlay, root)
    assert os.readlink(root / "opt/escape") == str(host)  # the link itself is the overlay's to have
    assert (root / "opt/zz/payload").stat().st_mode & 0o777 == 0o600
    untouched(host)
    # a second overlay writing under the link: lands at the tree's own path of that name
    second = tmp_path / "second"
    (second / "rootfs/opt/escape").mkdir(parents=True)
    (second / "rootfs/opt/escape/victim").write_text("overlay\n")
    (second / "overlay.yaml").write_text("{}\n")
    rootfs.apply_overlay(second, root)
    assert (root / str(host).lstrip("/") / "victim").read_text() == "overlay\n"
    untouched(host)


def test_the_agent_goes_into_the_tree_past_a_planted_link(world: tuple[Path, Path]) -> None:
    """An overlay left /usr/lib/basalt as a link to a host directory: installing the agent writes
    inside the tree (at the link's target taken in the tree) and the host directory is untouched."""
    root, host = world
    (root / "usr/sbin").mkdir()
    (root / layout.LIB.lstrip("/")).symlink_to(host)
    (root / "usr/sbin/basalt").symlink_to(host / "victim")
    (root / "etc/os-release").symlink_to(host / "victim")
    rootfs.install_agent(root, "9.9")
    inside = root / str(host).lstrip("/")
    assert (inside / "version").read_text() == "9.9\n"
    assert (inside / "agent/pid1/init.py").is_file()
    assert (root / "usr/sbin/basalt").read_text().startswith("#!/usr/bin/python3 -S")
    assert os.readlink(root / "etc/os-release") == "../usr/lib/os-release"
    untouched(host)


def test_k3s_goes_into_the_tree_and_its_tool_links_keep_what_is_there(world: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """k3s's binary, version and tool links land in the tree: a planted link at the binary's name
    (to a host file) is replaced, an existing tool (a dangling link included) is kept."""
    import hashlib
    root, host = world
    (root / "usr/bin").mkdir()
    (root / "usr/sbin").mkdir()
    (root / "usr/bin/k3s").symlink_to(host / "victim")
    (root / "usr/bin/ctr").symlink_to("/nonexistent/ctr")  # dangling in the tree: kept
    binary = tmp_path / "k3s-bin"
    binary.write_bytes(b"\x7fELF stand-in")
    lock = {"version": "v1.33.3+k3s1",
            "binary": {"path": str(binary), "sha256": hashlib.sha256(binary.read_bytes()).hexdigest(), "size": 14}}
    rootfs.install_k3s(root, lock, [])
    k3s = root / "usr/bin/k3s"
    assert not k3s.is_symlink() and k3s.read_bytes() == b"\x7fELF stand-in" and k3s.stat().st_mode & 0o777 == 0o755
    assert os.readlink(root / "usr/bin/kubectl") == "k3s" and os.readlink(root / "usr/bin/crictl") == "k3s"
    assert os.readlink(root / "usr/bin/ctr") == "/nonexistent/ctr"
    assert (root / rootfs.K3S_SHARE / "version").read_text() == "v1.33.3+k3s1\n"
    untouched(host)
