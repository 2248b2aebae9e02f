"""``basalt doctor``: can k3s (and containers) run on this kernel and OS, and if not, why.

Each check reads the running system (kernel config, loaded and built-in modules, the
cgroup v2 hierarchy, sysctls, swap, mount propagation) and says what is missing and how
to fix it. Only "fail" results make k3s unable to run; "warn" is advice.
Paths are relative to ``root`` so the checks can be tested on a made-up tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent import layout
from agent.pid1 import modalias

# Kernel options containers and k3s need; "a|b" is satisfied by either.
KERNEL_OPTIONS = (
    ("NAMESPACES", "namespaces"), ("NET_NS", "network namespaces"), ("PID_NS", "PID namespaces"),
    ("IPC_NS", "IPC namespaces"), ("UTS_NS", "UTS namespaces"), ("USER_NS", "user namespaces"),
    ("CGROUPS", "control groups"), ("CGROUP_BPF", "cgroup v2 device control"),
    ("CGROUP_SCHED", "the cpu controller"), ("CPUSETS", "the cpuset controller"),
    ("MEMCG", "the memory controller"), ("CGROUP_PIDS", "the pids controller"),
    ("KEYS", "kernel keyrings"), ("SECCOMP", "seccomp"), ("POSIX_MQUEUE", "POSIX message queues"),
    ("OVERLAY_FS", "overlayfs (image layers)"), ("VETH", "veth pairs (pod networking)"),
    ("BRIDGE", "bridges (cni0)"), ("BRIDGE_NETFILTER", "bridged traffic seen by iptables"),
    ("VXLAN", "VXLAN (flannel)"), ("NF_CONNTRACK", "connection tracking"), ("NF_NAT", "NAT"),
    ("IP_NF_NAT|NFT_NAT", "iptables or nftables NAT"),
    ("NETFILTER_XT_MATCH_CONNTRACK", "the conntrack match"),
    ("NETFILTER_XT_TARGET_MASQUERADE|NFT_MASQ", "masquerading"),
)
# Modules that must be loaded (or built in); "a|b" is satisfied by either.
MODULES = (
    ("overlay", "overlayfs snapshotter"), ("br_netfilter", "bridged pod traffic through iptables"),
    ("bridge", "the cni0 bridge"), ("veth", "pod network interfaces"), ("vxlan", "flannel's VXLAN backend"),
    ("nf_conntrack", "connection tracking"), ("nf_nat", "NAT"),
    ("iptable_nat|nft_chain_nat", "service NAT (iptables or nftables)"),
    ("xt_conntrack", "kube-proxy's conntrack rules"), ("xt_MASQUERADE|nft_masq", "masquerading pod traffic"),
)
SYSCTLS = (
    ("net.ipv4.ip_forward", "1", "routing pod traffic"),
    ("net.bridge.bridge-nf-call-iptables", "1", "iptables seeing bridged IPv4 traffic"),
    ("net.bridge.bridge-nf-call-ip6tables", "1", "ip6tables seeing bridged IPv6 traffic"),
)
CONTROLLERS = ("cpu", "cpuset", "memory", "pids")


@dataclass(frozen=True)
class Result:
    status: str  # ok | warn | fail | info
    what: str
    detail: str = ""
    fix: str = ""


class Doctor:
    def __init__(self, root: str = "/"):
        self.root = root
        self.release = self.read("proc/sys/kernel/osrelease").strip()
        self.cmdline = self.read("proc/cmdline").split()

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self, rel: str, default: str = "") -> str:
        try:
            with open(self.path(rel), errors="replace") as f:
                return f.read()
        except OSError:
            return default

    # --- inputs -------------------------------------------------------------------
    def kernel_config(self) -> tuple[str | None, dict[str, str]]:
        import gzip
        candidates = ("proc/config.gz", f"usr/lib/modules/{self.release}/config", f"boot/config-{self.release}")
        for rel in candidates:
            if not os.path.isfile(self.path(rel)):
                continue
            opener = gzip.open if rel.endswith(".gz") else open
            with opener(self.path(rel), "rt") as f:
                text = f.read()
            values = {}
            for line in text.splitlines():
                key, sep, value = line.partition("=")
                if sep and key.startswith("CONFIG_"):
                    values[key[len("CONFIG_"):]] = value
            return "/" + rel, values
        return None, {}

    def builtin(self) -> set[str]:
        text = self.read(f"usr/lib/modules/{self.release}/modules.builtin")
        return {_module_name(line) for line in text.splitlines() if line.strip()}

    def available(self) -> set[str]:
        text = self.read(f"usr/lib/modules/{self.release}/modules.dep")
        return {_module_name(line.split(":")[0]) for line in text.splitlines() if ":" in line}

    def blocked(self, name: str) -> str | None:
        """Where ``name`` is blocked from loading, if it is."""
        for arg in self.cmdline:
            key, _, value = arg.partition("=")
            if key in ("module_blacklist", "modprobe.blacklist") and name in value.split(","):
                return f"{key}={value} on the kernel command line"
        for d in ("etc/modprobe.d", "usr/lib/modprobe.d", "lib/modprobe.d"):
            try:
                names = sorted(os.listdir(self.path(d)))
            except OSError:
                continue
            for conf in names:
                for line in self.read(f"{d}/{conf}").splitlines():
                    words = line.split()
                    if words[:2] == ["blacklist", name] or (words[:2] == ["install", name] and
                                                              words[2:3] in (["/bin/false"], ["/bin/true"])):
                        return f"'{line.strip()}' in /{d}/{conf}"
        return None

    # --- checks -------------------------------------------------------------------
    def check_kernel_config(self) -> list[Result]:
        source, config = self.kernel_config()
        if source is None:
            return [Result("warn", "kernel config", "not found (no /proc/config.gz, "
                           f"/usr/lib/modules/{self.release}/config or /boot/config-{self.release})",
                           "module and cgroup checks below still apply")]
        missing = [f"CONFIG_{alts} ({why})" for alts, why in KERNEL_OPTIONS
                   if not any(config.get(a) in ("y", "m") for a in alts.split("|"))]
        if missing:
            return [Result("fail", "kernel config", f"{source} lacks " + ", ".join(missing),
                           "use a kernel built with these options (Debian's linux-image-* has them)")]
        return [Result("ok", "kernel config", f"{len(KERNEL_OPTIONS)} options set in {source}")]

    def check_modules(self) -> list[Result]:
        builtin, available = self.builtin(), self.available()
        out = []
        for alts, why in MODULES:
            names = alts.split("|")
            if any(os.path.isdir(self.path(f"sys/module/{n}")) or n in builtin for n in names):
                out.append(Result("ok", f"module {alts}", why))
                continue
            name = names[0]
            blocked = self.blocked(name)
            if blocked:
                out.append(Result("fail", f"module {name}", f"not loaded: blocked by {blocked}",
                                  f"remove that block, then 'modprobe {name}' (needed for {why})"))
            elif not available:
                out.append(Result("fail", f"module {name}", f"not loaded, and /usr/lib/modules/{self.release}"
                                  "/modules.dep is missing", f"boot a Basalt kernel (needed for {why})"))
            elif not any(n in available for n in names):
                out.append(Result("fail", f"module {name}", f"not in this image's /usr/lib/modules/{self.release}",
                                  f"the image definition's kernel.modules.exclude drops it: add its path to "
                                  f"kernel.modules.keep (needed for {why})"))
            else:
                out.append(Result("fail", f"module {name}", "not loaded",
                                  f"modprobe {name}; to load it every boot add '{name}' to k3os.modules in "
                                  f"config.yaml (needed for {why})"))
        return out

    def check_cgroups(self) -> list[Result]:
        mounts = [line.split() for line in self.read("proc/self/mounts").splitlines()]
        if not any(m[1:3] == ["/sys/fs/cgroup", "cgroup2"] for m in mounts if len(m) > 2):
            return [Result("fail", "cgroup v2", "/sys/fs/cgroup is not a cgroup2 mount",
                           "mount -t cgroup2 cgroup2 /sys/fs/cgroup (Basalt's initramfs does; "
                           "remove systemd.unified_cgroup_hierarchy=0 if set)")]
        available = self.read("sys/fs/cgroup/cgroup.controllers").split()
        delegated = self.read("sys/fs/cgroup/cgroup.subtree_control").split()
        absent = [c for c in CONTROLLERS if c not in available]
        if absent:
            fix = "boot with cgroup_enable=memory (Raspberry Pi firmware disables it)" if "memory" in absent else \
                "use a kernel with these controllers"
            return [Result("fail", "cgroup v2 controllers", f"kernel does not offer: {' '.join(absent)}", fix)]
        undelegated = [c for c in CONTROLLERS if c not in delegated]
        if undelegated:
            return [Result("fail", "cgroup v2 controllers", f"not delegated to child groups: {' '.join(undelegated)}",
                           "echo '" + " ".join(f"+{c}" for c in undelegated) +
                           "' > /sys/fs/cgroup/cgroup.subtree_control (the agent does this at boot)")]
        return [Result("ok", "cgroup v2 controllers", " ".join(CONTROLLERS) + " available and delegated")]

    def check_sysctls(self) -> list[Result]:
        out = []
        for name, want, why in SYSCTLS:
            value = self.read("proc/sys/" + name.replace(".", "/"), "").strip()
            if value == want:
                out.append(Result("ok", f"sysctl {name}", f"= {value}"))
            else:
                got = f"= {value}" if value else "absent" + (" (br_netfilter not loaded)" if "bridge" in name else "")
                out.append(Result("fail", f"sysctl {name}", f"{got}, needs {want} for {why}",
                                  f"sysctl -w {name}={want}; every boot: k3os.sysctl: {{{name}: '{want}'}}"))
        return out

    def check_swap(self) -> list[Result]:
        active = [line.split()[0] for line in self.read("proc/swaps").splitlines()[1:] if line.strip()]
        if active:
            return [Result("fail", "swap", "on: " + ", ".join(active),
                           "swapoff -a (the kubelet refuses to run with swap)")]
        return [Result("ok", "swap", "off")]

    def check_propagation(self) -> list[Result]:
        for line in self.read("proc/self/mountinfo").splitlines():
            fields = line.split()
            if len(fields) > 6 and fields[4] == "/":
                optional = fields[6:fields.index("-")] if "-" in fields else []
                if any(o.startswith("shared:") for o in optional):
                    return [Result("ok", "mount propagation", "/ is shared")]
                return [Result("fail", "mount propagation", "/ is private",
                               "mount --make-rshared / (the agent does this on container images)")]
        return [Result("warn", "mount propagation", "cannot read /proc/self/mountinfo")]

    def check_k3s(self) -> list[Result]:
        binary = self.path("usr/bin/k3s")
        out = []
        if not os.path.exists(binary):
            out.append(Result("info", "k3s binary", "not in this image (build with k3s.enabled to add it)"))
        elif not os.access(binary, os.X_OK):
            out.append(Result("fail", "k3s binary", "/usr/bin/k3s is not executable", "rebuild the image"))
        else:
            version = self.read(layout.LIB_K3S_VERSION.lstrip("/")).strip() or "unknown version"
            out.append(Result("ok", "k3s binary", f"/usr/bin/k3s ({version})"))
        state = [line.split() for line in self.read("proc/self/mounts").splitlines()]
        var = next((m for m in reversed(state) if len(m) > 2 and m[1] == "/var"), None)
        if var is None or var[2] == "tmpfs":
            out.append(Result("warn", "k3s data", "/var is in RAM: cluster state and images are lost at reboot",
                              f"attach a state partition (label {layout.STATE_LABEL}) or install to disk"))
        mem_kb = next((int(line.split()[1]) for line in self.read("proc/meminfo").splitlines()
                       if line.startswith("MemTotal:")), 0)
        if mem_kb and mem_kb < 1 << 20:
            out.append(Result("warn", "memory", f"{mem_kb // 1024} MiB: a k3s server wants 2 GiB, an agent 512 MiB"))
        return out

    def check_drivers(self) -> list[Result]:
        """A device present whose only driver the image left out (its kernel.modules.profile)."""
        from agent.pid1 import devices
        index = modalias.load(self.path(f"usr/lib/modules/{self.release}/{modalias.INDEX}"))
        if index is None:
            return []
        aliases = devices.device_aliases(self.path("sys"))
        missing = [(a, m) for a, m in modalias.missing(index, aliases) if not any(modalias.resolve(index, [a]))]
        if not missing:
            return [Result("ok", "drivers", f"every device of the {len(aliases)} present that has a driver has it "
                           "in this image")]
        return [Result("warn", f"driver {module}", f"device {alias} wants {module}, which this image leaves out",
                       f"build the image with kernel.modules.keep: [the path of {module}.ko], or "
                       "kernel.modules.profile: all (docs/image-definition.md)") for alias, module in missing]

    def run(self) -> list[Result]:
        return [*self.check_kernel_config(), *self.check_modules(), *self.check_cgroups(), *self.check_sysctls(),
                *self.check_swap(), *self.check_propagation(), *self.check_k3s(), *self.check_drivers()]


def _module_name(path: str) -> str:
    """``kernel/net/bridge/br_netfilter.ko.xz`` -> ``br_netfilter`` (dashes are underscores)."""
    return modalias.module_name(path.strip())


def render(results: list[Result], release: str) -> str:
    lines = [f"basalt doctor: kernel {release or 'unknown'}"]
    for r in results:
        lines.append(f"  {r.status.upper():<5} {r.what}" + (f": {r.detail}" if r.detail else ""))
        if r.fix and r.status in ("fail", "warn"):
            lines.append(f"        fix: {r.fix}")
    failed = [r for r in results if r.status == "fail"]
    lines.append(f"k3s cannot run here: {len(failed)} problem{'s' if len(failed) > 1 else ''}" if failed
                 else "ready for k3s and containers")
    return "\n".join(lines)
