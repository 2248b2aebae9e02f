"""Provisioning: the config in force on this node — its sources merged and validated (a source
that fails validation is not applied: the last known-good config is), the hostname, and the
config modules applied phase by phase (``initrd``, ``boot``, ``runtime`` once the network is up),
again on ``basalt config apply`` and when the HTTP datasource changes."""

from __future__ import annotations

import os

from agent import layout, system
from agent.files import read_text
from agent.log import log
from agent.pid1.supervise import listdir, spawn_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.log import Errors
    from agent.pid1.supervise import Supervisor

COMMANDS_LOG = layout.RUN_LOG + "/config-commands.log"


class Provisioner:
    def __init__(self, supervisor: Supervisor, errors: Errors, phases: dict[str, int], version: str) -> None:
        self.supervisor, self.errors, self.phases, self.version = supervisor, errors, phases, version
        self.mode = "live"
        self.hostname = "basalt"
        self.config: dict[str, object] = {}
        self.merged: object = None  # sources.Merged of the config in force
        self.config_sources: list[str] = []
        self.config_fallback: str | None = None
        self.site_index: dict[str, object] | None = None  # the medium's stamped configs (agent/config/site.py)
        self.site_match: dict[str, object] | None = None
        self.base_tables: dict[str, str] = {}  # the image's passwd/group, before users: added to them
        self.trying: object = None  # control.Trial: an unconfirmed "config apply --try"
        self.runtime_done = False
        self.network_applied: list[object] | None = None  # the network plan last applied without an error
        self.debug = False  # basalt.debug: each config module's time on the console

    def load(self) -> dict[str, object]:
        """Merge the config sources (see sources.py); problems are logged and kept in the status."""
        from agent.config import bootargs
        text = read_text("/proc/cmdline")
        if self.site_index is not None:
            from agent.config import site
            self.site_match = self.errors.guard("site", site.select, self.site_index)
            if self.site_match:
                log(f"site: {site.describe(self.site_match)}")
        seed = self.errors.guard("nocloud seed", self.collect_seed, text)
        if not seed and not bootargs.has_config(text):
            return {}  # nothing to load: skip the parser and validator imports
        from agent.config import sources
        merged = sources.gather(text)
        for problem in merged.problems:
            self.errors.add("config", problem.render().replace("\n", " - "))
        if merged.fallback:
            log(f"error: config: using the last known-good config ({merged.fallback})")
        self.merged = merged
        self.config_sources = merged.sources
        self.config_fallback = merged.fallback
        return merged.value

    def collect_seed(self, cmdline: str) -> str | None:
        """Copy a NoCloud seed (a disk labelled CIDATA) if one is attached and this node may read it
        (datasources.seed_allowed); its device, or None."""
        from agent.config import datasources
        found = datasources.find_seed()
        if found is None:
            return None
        allowed, why = datasources.seed_allowed(self.mode, seed_data_sources(cmdline))
        if not allowed:
            log(f"nocloud seed on {found[0]} not read: {why}")
            return None
        datasources.collect_seed(*found)
        log(f"nocloud seed found on {found[0]} ({why})")
        return found[0]

    def facts(self) -> dict[str, object]:
        """What plans need to know about the running system."""
        if not self.base_tables:
            self.base_tables = {name: read_text(f"/etc/{name}") for name in ("passwd", "group")}
        net = "/sys/class/net"
        ifaces = sorted(os.listdir(net)) if os.path.isdir(net) else []
        wired = [i for i in ifaces if os.path.exists(f"{net}/{i}/device") and not os.path.exists(f"{net}/{i}/wireless")]
        k3s = os.path.exists(layout.K3S_BINARY)
        return {"hostname": self.hostname, **self.base_tables, "interfaces": wired,
                "wireless": [i for i in ifaces if os.path.exists(f"{net}/{i}/wireless")],
                "have_wpa_supplicant": os.path.exists("/usr/sbin/wpa_supplicant"),
                "version": self.version, "mode": self.mode, "slot": read_text(layout.RUN_SLOT, self.mode).strip(),
                "k3s": k3s, "upgrade_controller": k3s and os.path.exists(layout.LIB_UPGRADE_CONTROLLER),
                "k3s_images": listdir(layout.LIB_K3S + "/images") if k3s else [],
                "k3s_charts": listdir(layout.LIB_K3S + "/charts") if k3s else []}

    def run_phase(self, phase: str, skip: tuple[str, ...] = ()) -> list[str]:
        """Apply the config modules of ``phase``; each module's failure is recorded, the rest run."""
        if not self.config and not getattr(self.merged, "scripts", None) and not os.path.exists(layout.K3S_BINARY):
            return []
        from agent.modules import actions, plans
        before = len(self.errors)
        started = system.boot_ms()
        for name, planned in plans.plan_phase(phase, self.config, self.facts()):  # each planned as it comes
            if name in skip:
                continue
            for error in actions.apply(planned, run_command, services=self.supervisor):
                self.errors.add(f"{phase}/{name}", error)
            if self.debug:  # planned and applied
                log(f"module {phase}/{name}: {len(planned)} actions, {system.boot_ms() - started} ms")
                started = system.boot_ms()
        if phase == "runtime" and "scripts" not in skip:
            for script in getattr(self.merged, "scripts", []):
                code = run_command([script])
                if code != 0:
                    self.errors.add("runtime/user-data", f"{script} exited {code}")
        self.phases[f"{phase}_modules_done_ms"] = system.boot_ms()
        return self.errors[before:]

    def runtime(self) -> None:
        """Once the network is up: the HTTP datasource (a new or changed copy is applied now;
        its init_cmd and boot_cmd run from the next boot), then the runtime modules, run_cmd
        and user-data scripts."""
        from agent.config import bootargs
        url = bootargs.datasource_url(read_text("/proc/cmdline"))
        if url:
            from agent.config import datasources
            if self.errors.guard("datasource", datasources.fetch_url, url):
                log(f"datasource {url}: new user-data, applying")
                self.reconfigure()
        self.run_phase("runtime")
        self.runtime_done = True

    def reapply(self, runtime: bool = True) -> None:
        """The config in force, applied again to the running node: commands and scripts run once
        per boot, so not here."""
        from agent.modules import plans
        skip = (*plans.ONCE_PER_BOOT, "scripts")
        self.errors.guard("hostname", self.set_hostname, self.config)
        for phase in ("initrd", "boot"):
            self.run_phase(phase, skip)
        self.network()
        if runtime and self.runtime_done:
            self.run_phase("runtime", skip)

    def reconfigure(self) -> list[str]:
        """Re-read every source and apply the result to the running node (``basalt config
        apply``, a changed datasource)."""
        before = len(self.errors)
        config = self.load()
        if self.config_fallback and self.config:
            return self.errors[before:]  # invalid: keep what is in force
        self.config = config
        self.reapply()
        return self.errors[before:]

    def set_hostname(self, config: dict[str, object]) -> None:
        name = config.get("hostname")
        if isinstance(name, str) and name:
            self.hostname = name
        with open("/proc/sys/kernel/hostname", "w") as f:
            f.write(self.hostname)
        with open("/etc/hostname", "w") as f:
            f.write(self.hostname + "\n")
        with open("/etc/hosts", "w") as f:
            f.write(system.hosts_text(self.hostname))

    def network(self) -> None:
        """DHCP on every wired interface, or what ``network:`` says (static, VLAN). A plan the same
        as the last one applied without an error is not applied again: applying flushes a static
        interface's addresses before adding them back, a gap in which the node has no default route
        (the drivers loaded after ready, a datasource read again, a config apply that leaves the
        network as it was)."""
        from agent.modules import actions, plans
        planned: list[object] = list(plans.plan_network(self.config, self.facts()))
        if planned == self.network_applied:
            return
        errors = actions.apply(planned, run_command, services=self.supervisor)  # type: ignore[arg-type]
        for error in errors:
            self.errors.add("network", error)
        self.network_applied = None if errors else planned


def run_command(argv: list[str]) -> int:
    return spawn_wait(argv, log_path=COMMANDS_LOG)


def seed_data_sources(cmdline: str) -> object:
    """``data_sources`` as the node's own config sets it (every source but a seed), or None."""
    from agent.config import bootargs, datasources, sources
    from agent.config.section import section
    if not bootargs.has_config(cmdline):
        return None
    own = sources.gather(cmdline, datasource_dirs=tuple(d for d in datasources.DIRS if d != datasources.NOCLOUD_DIR))
    return section(own.value).get("data_sources")
