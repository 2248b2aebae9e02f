"""Config modules: pure plans from {config, facts} fixtures, and apply into a scratch root."""

from __future__ import annotations

import base64
import gzip
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.modules import actions, plans

GZ = gzip.compress(b"zipped\n", mtime=0)
B64 = base64.b64encode(b"encoded\n").decode()
GZB64 = base64.b64encode(GZ).decode()

# (config, facts, phase, expected [(module, actions)])
PLANS: list[tuple[dict[str, Any], dict[str, Any], str, list[tuple[str, list[tuple[Any, ...]]]]]] = [
    ({}, {}, "initrd", []),
    ({"write_files": [{"path": "/etc/a", "content": "plain\n"}]}, {}, "initrd",
     [("write_files", [("write", "/etc/a", b"plain\n", 0o644, "root:root")])]),
    ({"write_files": [{"path": "/x/b", "content": B64, "encoding": "base64", "permissions": "0600",
                       "owner": "nobody:nogroup"},
                      {"path": "/x/c", "content": GZB64, "encoding": "gzip+b64", "permissions": "755"}]}, {}, "initrd",
     [("write_files", [("write", "/x/b", b"encoded\n", 0o600, "nobody:nogroup"),
                       ("write", "/x/c", b"zipped\n", 0o755, "root:root")])]),
    ({"k3os": {"sysctl": {"vm.swappiness": "10", "kernel.printk": "4 4 1 7"}}}, {}, "initrd",
     [("sysctl", [("sysctl", "kernel.printk", "4 4 1 7"), ("sysctl", "vm.swappiness", "10")])]),
    ({"k3os": {"modules": ["kvm", "dummy numdummies=2"]}, "basalt": {"modules": ["loop max_loop=4"]}}, {}, "initrd",
     [("modules", [("modprobe", "loop", "max_loop=4")])]),  # basalt: wins over k3os: key by key
    ({"k3os": {"environment": {"http_proxy": "http://p:3128", "NOTE": "a b"}}}, {}, "initrd",
     [("environment", [("write", "/etc/environment", b"NOTE='a b'\nhttp_proxy=http://p:3128\n", 0o644,
                        "root:root")])]),
    ({"hostname": "edge-1"}, {}, "initrd", []),  # the host name is set by init itself (see test_agent)
    ({"init_cmd": ["echo i"], "boot_cmd": ["echo b"], "run_cmd": ["echo r"]}, {}, "initrd",
     [("init_cmd", [("run", "echo i")])]),
    ({"init_cmd": ["echo i"], "boot_cmd": ["echo b"], "run_cmd": ["echo r"]}, {}, "boot",
     [("boot_cmd", [("run", "echo b")])]),
    ({"init_cmd": ["echo i"], "boot_cmd": ["echo b"], "run_cmd": ["echo r"]}, {}, "runtime",
     [("run_cmd", [("run", "echo r")])]),
    ({"k3os": {"dns_nameservers": ["1.1.1.1", "9.9.9.9"]}}, {}, "boot",
     [("dns", [("write", "/etc/resolv.conf", b"nameserver 1.1.1.1\nnameserver 9.9.9.9\n", 0o644, "root:root")])]),
    ({"k3os": {"dns_nameservers": ["1.1.1.1"]}}, {"resolv_conf_from_dhcp": True}, "boot", [("dns", [])]),
    ({"write_files": [{"path": "/bad", "content": "%%%", "encoding": "gz"}]}, {}, "initrd",
     [("write_files", [("error", "write_files", "BadGzipFile: Not a gzipped file (b'%%')")])]),
]


@pytest.mark.parametrize(("config", "facts", "phase", "expected"), PLANS)
def test_plans(config: dict[str, Any], facts: dict[str, Any], phase: str,
               expected: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
    assert plans.plan_phase(phase, config, facts) == expected


def scratch_root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nme:x:{os.getuid()}:{os.getgid()}::/:/bin/sh\n")
    (tmp_path / "etc/group").write_text(f"root:x:0:\nme:x:{os.getgid()}:\n")
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/swappiness").write_text("60\n")
    return tmp_path


def test_apply_writes_atomically_with_mode_and_owner(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    planned = [("write", "/opt/app/conf", b"x=1\n", 0o640, "me:me"), ("sysctl", "vm.swappiness", "10")]
    assert actions.apply(planned, run=lambda argv: 0, root=str(root)) == []
    conf = root / "opt/app/conf"
    assert conf.read_bytes() == b"x=1\n" and stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert (conf.stat().st_uid, conf.stat().st_gid) == (os.getuid(), os.getgid())
    assert not list(root.rglob("*.basalt-new"))
    assert (root / "proc/sys/vm/swappiness").read_text() == "10"


def test_apply_reports_each_failure_and_keeps_going(tmp_path: Path) -> None:
    root = scratch_root(tmp_path)
    ran: list[list[str]] = []

    def run(argv: list[str]) -> int:
        ran.append(argv)
        return 3 if "false" in argv[-1] else 0
    planned = [("write", "/a", b"1", 0o644, "ghost:root"), ("run", "false"), ("modprobe", "dummy", "numdummies=2"),
               ("sysctl", "no.such.key", "1"), ("write", "/b", b"2", 0o644, "root:root")]
    errors = actions.apply(planned, run=run, root=str(root))
    assert errors[0] == "write /a: no such user 'ghost'"
    assert errors[1] == "run false: exited 3"
    assert errors[2].startswith("sysctl no.such.key: ")
    assert len(errors) == 3
    assert ran == [["/bin/sh", "-c", "false"], ["/usr/bin/busybox", "modprobe", "dummy", "numdummies=2"]]
    assert (root / "b").read_bytes() == b"2"  # the action after the failures still ran


BOB = 1000  # a user from `users:`, who owns their home and may plant links in it


def bobs_root(tmp_path: Path) -> Path:
    """A scratch root with bob's home (his, mode 0755) and a system directory that is root's alone."""
    root = scratch_root(tmp_path)
    with open(root / "etc/passwd", "a") as f:
        f.write(f"bob:x:{BOB}:{BOB}::/home/bob:/bin/sh\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"bob:x:{BOB}:\n")
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    os.chmod(root / "etc/shadow", 0o600)
    (root / "home/bob").mkdir(parents=True)
    os.chown(root / "home/bob", BOB, BOB)
    (root / "run").mkdir()
    (root / "var").mkdir()
    os.symlink("../run", root / "var/run")  # root's link in root's directory: followed
    return root


def plant(root: Path, link: str, target: str) -> None:
    """bob's link (owned by him, as if he made it)."""
    os.symlink(target, root / link)
    os.lchown(root / link, BOB, BOB)


def snapshot(directory: Path) -> dict[str, tuple[int, int, int, bytes]]:
    return {str(p.relative_to(directory)): (p.lstat().st_uid, p.lstat().st_gid, p.lstat().st_mode,
                                            p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in [directory, *directory.rglob("*")]}


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJvYg== bob@laptop"

# Hostile homes: (bob's link, its target, the action PID 1 carries out, the error it must report).
LINKS = [
    # ~/.ssh -> /etc: authorized_keys would land in /etc and /etc would be chowned to bob
    ("home/bob/.ssh", "../../etc", ("keys", "/home/bob/.ssh/authorized_keys", [KEY], [], "bob:bob"),
     "/home/bob/.ssh is a link that root does not control alone"),
    ("home/bob/.ssh", "/etc", ("keys", "/home/bob/.ssh/authorized_keys", [KEY], [], "bob:bob"),
     "/home/bob/.ssh is a link that root does not control alone"),
    # a write_files entry into bob's home, through a directory link he planted
    ("home/bob/conf", "/etc", ("write", "/home/bob/conf/shadow", b"root::0::::::\n", 0o644, "bob:bob"),
     "/home/bob/conf is a link that root does not control alone"),
    ("home/bob/deep", "../..", ("write", "/home/bob/deep/etc/shadow", b"root::0::::::\n", 0o600, "root:root"),
     "/home/bob/deep is a link that root does not control alone"),
    ("home/bob/made", "/etc", ("mkdir", "/home/bob/made/sudoers.d", 0o755, "bob:bob"),
     "/home/bob/made is a link that root does not control alone"),
    ("home/bob/t", "/etc", ("touch", "/home/bob/t/nologin"), "/home/bob/t is a link that root does not control alone"),
    ("home/bob/l", "/etc", ("symlink", "/etc/passwd", "/home/bob/l/localtime"),
     "/home/bob/l is a link that root does not control alone"),
]


@pytest.mark.parametrize(("link", "target", "action", "error"), LINKS)
def test_a_write_never_follows_a_link_a_user_planted(tmp_path: Path, link: str, target: str,
                                                     action: tuple[Any, ...], error: str) -> None:
    root = bobs_root(tmp_path)
    plant(root, link, target.replace("/etc", str(root / "etc")) if target.startswith("/") else target)
    etc = snapshot(root / "etc")
    errors = actions.apply([action], run=lambda argv: 0, root=str(root))
    assert len(errors) == 1 and error in errors[0], errors
    assert snapshot(root / "etc") == etc  # nothing written, created or chowned in /etc
    assert not list(root.rglob("*.basalt-new")) and not list(root.rglob("*.basalt-tmp"))


def test_a_users_link_at_the_target_is_replaced_not_followed_and_roots_links_are_followed(tmp_path: Path) -> None:
    root = bobs_root(tmp_path)
    plant(root, "home/bob/.profile", str(root / "etc/shadow"))
    etc = snapshot(root / "etc")
    planned = [("write", "/home/bob/.profile", b"PS1='$ '\n", 0o644, "bob:bob"),
               ("keys", "/home/bob/.ssh/authorized_keys", [KEY], [], "bob:bob"),
               ("write", "/var/run/basalt.pid", b"1\n", 0o644, "root:root")]
    assert actions.apply(planned, run=lambda argv: 0, root=str(root)) == []
    assert snapshot(root / "etc") == etc
    profile = root / "home/bob/.profile"
    assert not profile.is_symlink() and profile.read_bytes() == b"PS1='$ '\n" and profile.stat().st_uid == BOB
    ssh = root / "home/bob/.ssh"
    assert (ssh.stat().st_uid, stat.S_IMODE(ssh.stat().st_mode)) == (BOB, 0o700)
    assert (ssh / "authorized_keys").read_text() == KEY + "\n"
    assert (root / "run/basalt.pid").read_bytes() == b"1\n"  # /var/run -> ../run, root's: followed
    # directories made on the way to a user's are root's (0755); only the user's own is theirs
    assert actions.apply([("keys", "/srv/bob/.ssh/authorized_keys", [KEY], [], "bob:bob")], run=lambda argv: 0,
                         root=str(root)) == []
    for made, ids in (("srv", (0, 0, 0o755)), ("srv/bob", (0, 0, 0o755)), ("srv/bob/.ssh", (BOB, BOB, 0o700))):
        st = (root / made).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == ids, made
