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
