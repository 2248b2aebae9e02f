"""Container readiness: what containerd and k3s need from the OS before they start — cgroup v2
controllers delegated to child groups, and, on images that run containers, the image's kernel
modules and sysctls, ``/`` shared for mount propagation, tmpfs container stores in live mode,
and the image's own services (``/usr/lib/basalt/services.d``)."""

from __future__ import annotations

import os

from agent import layout, system
from agent.files import read_text
from agent.pid1.supervise import listdir, spawn_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.log import Errors
    from agent.pid1.supervise import Supervisor

CONTAINER_DATA = ("/var/lib/containerd", "/var/lib/rancher")  # overlayfs snapshots live under these
CGROUP_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def prepare(supervisor: Supervisor, errors: Errors) -> None:
    with open("/sys/fs/cgroup/cgroup.controllers") as f:
        available = f.read().split()
    wanted = " ".join(f"+{c}" for c in CGROUP_CONTROLLERS if c in available)
    if wanted:
        write_file("/sys/fs/cgroup/cgroup.subtree_control", wanted)
    services = sorted(n for n in listdir(layout.LIB_SERVICES) if n.endswith(".json"))
    if not services and not os.path.exists(layout.K3S_BINARY):
        return
    names = [name for conf in listdir("/usr/lib/modules-load.d")
             for line in read_text(f"/usr/lib/modules-load.d/{conf}").splitlines()
             if (name := line.split("#")[0].strip())]
    if names and spawn_wait([layout.BUSYBOX, "modprobe", "-a", *names], quiet=True) != 0:
        errors.add("containers", f"modprobe -a {' '.join(names)} failed (basalt doctor names the missing ones)")
    for conf in sorted(listdir("/usr/lib/sysctl.d")):
        for line in read_text(f"/usr/lib/sysctl.d/{conf}").splitlines():
            key, sep, value = line.split("#")[0].partition("=")
            if sep:
                errors.guard(f"sysctl {key.strip()}", write_file,
                             "/proc/sys/" + key.strip().replace(".", "/"), value.strip())
    if spawn_wait([layout.BUSYBOX, "mount", "--make-rshared", "/"], quiet=True) != 0:
        errors.add("containers", "mount --make-rshared / failed")
    var = [fstype for _, target, fstype in system.mounts() if target == "/var"]
    if var and var[-1] == "overlay":  # live mode: an overlay cannot be the upper layer of another
        for d in CONTAINER_DATA:
            os.makedirs(d, 0o700, exist_ok=True)
            if spawn_wait([layout.BUSYBOX, "mount", "-t", "tmpfs", "-o", "mode=0700", "tmpfs", d], quiet=True) != 0:
                errors.add("containers", f"cannot mount a tmpfs on {d}")
    from agent import jsontext
    for name in services:
        spec = jsontext.loads(read_text(f"{layout.LIB_SERVICES}/{name}"))
        supervisor.ensure(name[:-5], spec["argv"], spec.get("env"))
