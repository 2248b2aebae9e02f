"""``basalt doctor`` on made-up system trees (the booted-image checks are in tests/boot)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from agent import doctor
from agent.pid1.init import rotate_logs

RELEASE = "6.1.0-28-amd64"


def healthy(root: Path) -> Path:
    def put(rel: str, text: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    put("proc/sys/kernel/osrelease", RELEASE + "\n")
    put("proc/cmdline", "console=ttyS0 quiet\n")
    options = {a.split("|")[0] for a, _ in doctor.KERNEL_OPTIONS}
    (root / "proc").mkdir(exist_ok=True)
    with gzip.open(root / "proc/config.gz", "wt") as f:
        f.write("".join(f"CONFIG_{o}=m\n" for o in sorted(options)))
    modules = [a.split("|")[0] for a, _ in doctor.MODULES]
    put(f"usr/lib/modules/{RELEASE}/modules.dep", "".join(f"kernel/x/{m}.ko:\n" for m in modules))
    put(f"usr/lib/modules/{RELEASE}/modules.builtin", "kernel/net/bridge/bridge.ko\n")
    for m in modules:
        if m != "bridge":
            (root / "sys/module" / m).mkdir(parents=True)
    put("proc/self/mounts", "/dev/sr0 / squashfs ro 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
                            "/dev/vda /var ext4 rw 0 0\n")
    put("proc/self/mountinfo", "20 1 7:0 / / ro shared:1 - squashfs /dev/loop0 ro\n")
    put("sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    put("sys/fs/cgroup/cgroup.subtree_control", "cpuset cpu io memory pids\n")
    for name, want, _ in doctor.SYSCTLS:
        put("proc/sys/" + name.replace(".", "/"), want + "\n")
    put("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n")
    put("proc/meminfo", "MemTotal:        2048000 kB\n")
    put("usr/bin/k3s", "#!/bin/sh\n")
    (root / "usr/bin/k3s").chmod(0o755)
    put("usr/lib/basalt/k3s/version", "v1.34.2+k3s1\n")
    return root


def failures(root: Path) -> dict[str, tuple[str, str]]:
    return {r.what: (r.detail, r.fix) for r in doctor.Doctor(str(root)).run() if r.status == "fail"}


def test_healthy_system_is_ready(tmp_path: Path) -> None:
    results = doctor.Doctor(str(healthy(tmp_path))).run()
    assert [r for r in results if r.status != "ok"] == []
    assert doctor.render(results, RELEASE).endswith("ready for k3s and containers")


@pytest.mark.parametrize(("breakage", "what", "detail", "fix"), [
    (lambda r: (r / "sys/module/br_netfilter").rmdir() or (r / "etc/modprobe.d").mkdir(parents=True) or
     (r / "etc/modprobe.d/site.conf").write_text("install br_netfilter /bin/false\n"),
     "module br_netfilter", "not loaded: blocked by 'install br_netfilter /bin/false' in /etc/modprobe.d/site.conf",
     "remove that block, then 'modprobe br_netfilter' (needed for bridged pod traffic through iptables)"),
    (lambda r: (r / "sys/module/vxlan").rmdir() or (r / f"usr/lib/modules/{RELEASE}/modules.dep").write_text(
        "kernel/x/overlay.ko:\n"),
     "module vxlan", f"not in this image's /usr/lib/modules/{RELEASE}",
     "the image definition's kernel.modules.exclude drops it: add its path to kernel.modules.keep "
     "(needed for flannel's VXLAN backend)"),
    (lambda r: (r / "sys/module/overlay").rmdir(), "module overlay", "not loaded",
     "modprobe overlay; to load it every boot add 'overlay' to k3os.modules in config.yaml "
     "(needed for overlayfs snapshotter)"),
    (lambda r: (r / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io pids\n"),
     "cgroup v2 controllers", "kernel does not offer: memory",
     "boot with cgroup_enable=memory (Raspberry Pi firmware disables it)"),
    (lambda r: (r / "sys/fs/cgroup/cgroup.subtree_control").write_text("cpu\n"),
     "cgroup v2 controllers", "not delegated to child groups: cpuset memory pids",
     "echo '+cpuset +memory +pids' > /sys/fs/cgroup/cgroup.subtree_control (the agent does this at boot)"),
    (lambda r: (r / "proc/swaps").write_text("Filename Type Size Used Priority\n/dev/vdb partition 1 0 -2\n"),
     "swap", "on: /dev/vdb", "swapoff -a (the kubelet refuses to run with swap)"),
    (lambda r: (r / "proc/sys/net/ipv4/ip_forward").write_text("0\n"),
     "sysctl net.ipv4.ip_forward", "= 0, needs 1 for routing pod traffic",
     "sysctl -w net.ipv4.ip_forward=1; every boot: k3os.sysctl: {net.ipv4.ip_forward: '1'}"),
    (lambda r: (r / "proc/self/mountinfo").write_text("20 1 7:0 / / ro - squashfs /dev/loop0 ro\n"),
     "mount propagation", "/ is private", "mount --make-rshared / (the agent does this on container images)"),
])
def test_each_missing_requirement_is_named_with_its_fix(tmp_path: Path, breakage: object, what: str, detail: str,
                                                       fix: str) -> None:
    root = healthy(tmp_path)
    breakage(root)  # type: ignore[operator]
    assert failures(root) == {what: (detail, fix)}


def test_kernel_command_line_block_and_missing_options(tmp_path: Path) -> None:
    root = healthy(tmp_path)
    (root / "sys/module/br_netfilter").rmdir()
    (root / "proc/cmdline").write_text("quiet module_blacklist=veth,br_netfilter\n")
    with gzip.open(root / "proc/config.gz", "wt") as f:
        f.write("CONFIG_NAMESPACES=y\n")
    found = failures(root)
    assert found["module br_netfilter"][0] == \
        "not loaded: blocked by module_blacklist=veth,br_netfilter on the kernel command line"
    assert found["kernel config"][0].startswith("/proc/config.gz lacks CONFIG_NET_NS (network namespaces), ")


def test_rotate_logs_keeps_two_generations_and_truncates_in_place(tmp_path: Path) -> None:
    log = tmp_path / "k3s.log"
    with log.open("ab") as writer:  # a service's O_APPEND descriptor, kept open across rotations
        for generation in (b"a", b"b", b"c"):
            writer.write(generation * 2000)
            writer.flush()
            assert rotate_logs(str(tmp_path), limit=1000, keep=2) == ["k3s.log"]
        writer.write(b"after")
        writer.flush()
    assert log.read_bytes() == b"after"  # the writer carried on at the start of the fresh file
    assert (tmp_path / "k3s.log.1").read_bytes() == b"c" * 2000
    assert (tmp_path / "k3s.log.2").read_bytes() == b"b" * 2000
    assert not (tmp_path / "k3s.log.3").exists()
    assert rotate_logs(str(tmp_path), limit=1000, keep=2) == []  # small files are left alone


def test_a_device_whose_driver_the_image_left_out_is_named(tmp_path: Path) -> None:
    """kernel.modules.profile left a device's only driver out: doctor names the device and the module
    (from the build's index, agent/pid1/modalias.py); a device whose driver is there is not named."""
    from agent.pid1 import modalias
    root = healthy(tmp_path)
    index = modalias.build("alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n",
                           "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:\n",
                           absent="alias pci:v00008086d00001593sv*sd*bc*sc*i* ice\n"
                                  "alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e_old\n")
    (root / f"usr/lib/modules/{RELEASE}/{modalias.INDEX}").write_bytes(index)
    assert [(r.status, r.what) for r in doctor.Doctor(str(root)).run() if r.what.startswith("driver")] == \
        [("ok", "drivers")]
    for dev, alias in (("0000:00:02.0", "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"),  # e1000e: here
                       ("0000:00:03.0", "pci:v00008086d00001593sv00008086sd00000001bc02sc00i00")):  # ice: left out
        d = root / "sys/bus/pci/devices" / dev
        d.mkdir(parents=True)
        (d / "modalias").write_text(alias + "\n")
    found = [r for r in doctor.Doctor(str(root)).run() if r.what.startswith("driver")]
    assert [(r.status, r.what, r.detail) for r in found] == [
        ("warn", "driver ice", "device pci:v00008086d00001593sv00008086sd00000001bc02sc00i00 wants ice, "
                               "which this image leaves out")]
    assert "kernel.modules.keep" in found[0].fix and "kernel.modules.profile: all" in found[0].fix
