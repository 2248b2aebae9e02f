"""Config modules: each declares the keys that activate it and the phase it runs in, and has
a pure ``plan(config, facts) -> actions``. ``agent.modules.actions.apply`` carries actions out
(the one place that touches the system). A failing action is reported and the rest still run.

Phases (as k3OS): ``initrd`` (first, before anything else the agent starts), ``boot``, and
``runtime`` (once the network is up).

Actions are plain tuples, so plans compare equal in tests:
  ("write", path, data: bytes, mode: int, owner: str)
  ("sysctl", name, value)      ("modprobe", name, params)      ("run", command)
"""

from __future__ import annotations

from agent import files, layout
from agent.config.content import decode
from agent.config.section import K3S_KEYS, section

TYPE_CHECKING = False  # typing, base64 and gzip cost a tenth of a second each under emulation
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    Action = tuple[Any, ...]
    Plan = Callable[[dict[str, Any], dict[str, Any]], list[Action]]

    class Services(Protocol):
        """What apply needs from the supervisor (PID 1): start or restart, and stop, a service."""

        def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None: ...

        def stop(self, name: str) -> None: ...


def plan_write_files(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    return [("write", f["path"], decode(f.get("content", ""), f.get("encoding", "")),
             int(f.get("permissions", "0644"), 8), f.get("owner", "root:root"))
            for f in config.get("write_files", [])]


def plan_sysctl(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    return [("sysctl", name, str(value)) for name, value in sorted(section(config).get("sysctl", {}).items())]


def plan_modules(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    out = []
    for entry in section(config).get("modules", []):
        name, _, params = entry.partition(" ")
        out.append(("modprobe", name, params.strip()))
    return out


def plan_environment(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    env = section(config).get("environment", {})
    if not env:
        return []
    bad = [k for k in env if not (k.isidentifier() and k.isascii())]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a variable name")  # the schema refuses it first; the writer's guard
    text = "".join(f"{k}={_shell_quote(str(v))}\n" for k, v in sorted(env.items()))
    return [("write", "/etc/environment", text.encode(), 0o644, "root:root")]


def plan_dns(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    servers = section(config).get("dns_nameservers", [])
    if not servers or facts.get("resolv_conf_from_dhcp"):
        return []  # fallback servers: DHCP's win when it supplies some
    text = "".join(f"nameserver {s}\n" for s in servers)
    return [("write", "/etc/resolv.conf", text.encode(), 0o644, "root:root")]


def _commands(key: str) -> Plan:
    def plan(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
        return [("run", cmd) for cmd in config.get(key, [])]
    plan.__name__ = f"plan_{key}"
    return plan


def _shell_quote(value: str) -> str:
    if value and all(c.isalnum() or c in "@%+=:,./-_" for c in value):
        return value
    return "'" + value.replace("'", "'\\''") + "'"


DEFAULT_USER = "root"  # k3OS's top-level ssh_authorized_keys and k3os.password go to this account
SSH_STATE = layout.SSH_STATE
NETWORK_UP = layout.RUN_NETWORK_UP
WPA_CONF = "/etc/wpa_supplicant/basalt.conf"
DHCP_SCRIPT = "/usr/share/basalt/udhcpc.script"
FIRST_UID = 1000


def dhcp_argv(iface: str) -> list[str]:
    return ["/usr/bin/udhcpc", "-f", "-S", "-i", iface, "-s", DHCP_SCRIPT, "-t", "10", "-T", "2"]


def colon_rows(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def colon_text(rows: list[list[str]]) -> bytes:
    """/etc/passwd, group or shadow from rows; a field that would add a field or a line (the schema
    refuses them first, this is the writer's own guard) is an error, never written."""
    for row in rows:
        for field in row:
            if ":" in field or "\n" in field or "\r" in field:
                raise ValueError(f"{field!r} cannot be a field of {row[0]!r}'s entry: it holds ':' or a line break")
    return "".join(":".join(r) + "\n" for r in rows).encode()


def _free_id(used: set[int]) -> int:
    n = FIRST_UID
    while n in used:
        n += 1
    return n


def plan_users(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """/etc/passwd and /etc/group from the image's tables plus ``users:``, the shadow entries
    (a locked password unless one is given; plain text is hashed by apply, never written),
    and each home directory. /etc is rebuilt every boot, so this runs every boot."""
    passwd, group = colon_rows(facts.get("passwd", "")), colon_rows(facts.get("group", ""))
    passwords: dict[str, str | None] = {}
    root_password = section(config).get("password")
    if root_password:
        passwords[DEFAULT_USER] = root_password
    dirs: list[Action] = []
    for user in config.get("users", []):
        name = user["name"]
        row = next((r for r in passwd if r[0] == name), None)
        if row is None:
            uid = _free_id({int(r[2]) for r in passwd} | {int(g[2]) for g in group})
            if not any(g[0] == name for g in group):
                group.append([name, "x", str(uid), ""])
            gid = next(g[2] for g in group if g[0] == name)
            home = f"/home/{name}"
            passwd.append([name, "x", str(uid), gid, name, home, user.get("shell", "/bin/sh")])
            dirs.append(("mkdir", home, 0o755, f"{name}:{name}"))
        elif user.get("shell"):
            row[6] = user["shell"]
        for extra in user.get("groups", []):
            grow = next((g for g in group if g[0] == extra), None)
            if grow is None:
                grow = [extra, "x", str(_free_id({int(g[2]) for g in group} | {int(r[2]) for r in passwd})), ""]
                group.append(grow)
            members = [m for m in grow[3].split(",") if m]
            if name not in members:
                grow[3] = ",".join([*members, name])
        if user.get("password") and not user.get("lock_password"):
            passwords[name] = user["password"]
        else:
            passwords.setdefault(name, None)
    if not passwords and not dirs and not config.get("users"):
        return []
    return [("write", "/etc/passwd", colon_text(passwd), 0o644, "root:root"),
            ("write", "/etc/group", colon_text(group), 0o644, "root:root"),
            ("shadow", passwords), *dirs]


def home_of(name: str, facts: dict[str, Any]) -> str:
    for row in colon_rows(facts.get("passwd", "")):
        if row[0] == name and len(row) > 5:
            return row[5]
    return "/root" if name == "root" else f"/home/{name}"


def key_sets(config: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(user, key entries) for the default user and every user with keys."""
    out = []
    if config.get("ssh_authorized_keys"):
        out.append((DEFAULT_USER, config["ssh_authorized_keys"]))
    out += [(u["name"], u["ssh_authorized_keys"]) for u in config.get("users", []) if u.get("ssh_authorized_keys")]
    return out


def remote(entry: str) -> bool:
    return entry.startswith(("github:", "gitlab:", "http://", "https://"))


def key_url(entry: str) -> str:
    """Where a github:/gitlab:/URL entry's keys are published."""
    if entry.startswith("github:"):
        return f"https://github.com/{entry[7:]}.keys"
    if entry.startswith("gitlab:"):
        return f"https://gitlab.com/{entry[7:]}.keys"
    return entry


def _plan_keys(config: dict[str, Any], facts: dict[str, Any], fetch: bool) -> list[Action]:
    out: list[Action] = []
    for name, entries in key_sets(config):
        if not fetch or any(remote(e) for e in entries):
            home = home_of(name, facts)
            lines = [e for e in entries if not remote(e)]
            urls = [key_url(e) for e in entries if remote(e)] if fetch else []
            out.append(("keys", f"{home}/.ssh/authorized_keys", lines, urls, f"{name}:{name}" if name != "root"
                        else "root:root"))
    return out


def plan_ssh_keys(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """Boot: key lines only (a URL needs the network)."""
    return _plan_keys(config, facts, fetch=False)


def plan_ssh_keys_remote(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """Runtime: every key set with a github:/gitlab:/URL entry, rewritten with the fetched keys."""
    return _plan_keys(config, facts, fetch=True)


HOST_KEY = layout.SSH_HOST_KEY


def host_key_fingerprint(path: str = HOST_KEY) -> str:
    """``SHA256:...`` of a dropbear ed25519 host key (as ssh-keygen -l shows it): the key file is
    string "ssh-ed25519", string of 64 bytes (the private seed, then the public key). PID 1 logs it
    at every boot: binascii, not base64 (which imports re, enum and functools, kept for good)."""
    import binascii
    import struct
    with open(path, "rb") as f:
        data = f.read()
    try:
        n = struct.unpack_from(">I", data)[0]
        kind = data[4:4 + n]
        m = struct.unpack_from(">I", data, 4 + n)[0]
    except struct.error:
        kind, m = b"", 0
    if kind != b"ssh-ed25519" or m != 64 or len(data) < 8 + n + 64:
        raise ValueError(f"{path}: not a dropbear ed25519 key")
    public = data[8 + n + 32:8 + n + 64]
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + public
    return "SHA256:" + binascii.b2a_base64(files.sha256(blob).digest(), newline=False).decode().rstrip("=")


def plan_ssh_server(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """Dropbear with an ed25519 host key kept on the state partition; password logins off
    unless ``ssh.password_authentication``."""
    ssh = section(config).get("ssh", {})
    if not ssh.get("enabled", True):
        return [("stop", "sshd")]
    key = HOST_KEY
    argv = ["/usr/sbin/dropbear", "-F", "-E", "-p", str(ssh.get("port", 22)), "-r", key]
    if not ssh.get("password_authentication", False):
        argv.append("-s")
    return [("mkdir", SSH_STATE, 0o700, "root:root"), ("hostkey", key), ("service", "sshd", argv)]


NTP_CONF = "/etc/openntpd/ntpd.conf"


def plan_ntp(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """OpenNTPD (privilege-separated, 150 KB) syncing from ``ntp_servers``."""
    servers = section(config).get("ntp_servers", [])
    if not servers:
        return [("stop", "ntpd")]
    text = "".join(f"server {s}\n" for s in servers)
    return [("write", NTP_CONF, text.encode(), 0o644, "root:root"), ("mkdir", "/run/openntpd", 0o755, "root:root"),
            ("service", "ntpd", ["/usr/sbin/ntpd", "-d", "-f", NTP_CONF])]


def plan_timezone(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    zone = config["timezone"]
    return [("symlink", f"/usr/share/zoneinfo/{zone}", "/etc/localtime"),
            ("write", "/etc/timezone", f"{zone}\n".encode(), 0o644, "root:root")]


def plan_network(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """DHCP on every wired interface present unless ``network.interfaces`` says otherwise;
    static addresses, gateway, routes and DNS per interface; VLANs on top of a link.
    Re-planning after a change converges: a static interface's DHCP client is stopped and its
    addresses flushed before the new ones are added."""
    present = facts.get("interfaces", [])
    wanted: dict[str, Any] = config.get("network", {}).get("interfaces", {})
    out: list[Action] = [("ip", ["link", "set", "lo", "up"])]
    dns: list[str] = []
    static = False
    for iface in present:
        if iface not in wanted:
            out.append(("service", f"dhcp-{iface}", dhcp_argv(iface)))
    for iface, spec in wanted.items():
        if spec.get("unmanaged"):  # left to the user: no DHCP, no addresses, no Wi-Fi client
            continue
        vlan = spec.get("vlan")
        if vlan:
            out += [("modprobe", "8021q", ""),
                    ("ip", ["link", "add", "link", vlan["link"], "name", iface, "type", "vlan", "id", str(vlan["id"])])]
        elif iface not in present:
            out.append(("error", f"network.interfaces.{iface}",
                        f"no interface '{iface}' (present: {', '.join(present) or 'none'})"))
            continue
        if spec.get("dhcp", not spec.get("addresses")):
            out += [("ip", ["link", "set", iface, "up"]), ("service", f"dhcp-{iface}", dhcp_argv(iface))]
            continue
        static = True
        out += [("stop", f"dhcp-{iface}"), ("ip", ["addr", "flush", "dev", iface]),
                ("ip", ["link", "set", iface, "up"])]
        out += [("ip", ["addr", "add", a, "dev", iface]) for a in spec.get("addresses", [])]
        if spec.get("gateway"):
            out.append(("ip", ["route", "replace", "default", "via", spec["gateway"], "dev", iface]))
        out += [("ip", ["route", "replace", r["to"], "via", r["via"], "dev", iface]) for r in spec.get("routes", [])]
        dns += spec.get("dns", [])
    if dns:
        text = "".join(f"nameserver {s}\n" for s in dns)
        out.append(("write", "/etc/resolv.conf", text.encode(), 0o644, "root:root"))
    if static:
        out.append(("touch", NETWORK_UP))
    return out


def wpa_ssid(name: str) -> str:
    """An SSID as wpa_supplicant reads it: quoted, or as hex when quoting cannot carry it (a
    quote, a backslash, non-ASCII or control characters), so no name can break the file."""
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        return f'"{name}"'
    return name.encode().hex()


def wpa_auth(passphrase: str | None) -> str:
    """WPA-PSK from a passphrase (8-63 printable ASCII, quoted) or a 64-digit hex key (as is);
    an open network without one. The schema refuses anything else."""
    if not passphrase:
        return "\tkey_mgmt=NONE\n"
    if len(passphrase) == 64 and all(c in "0123456789abcdefABCDEF" for c in passphrase):
        return f"\tpsk={passphrase.lower()}\n"
    return f'\tpsk="{passphrase}"\n'


def plan_wifi(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    """wpa_supplicant's config from ``wifi:`` (most preferred first), a supplicant and a DHCP
    client on each wireless interface."""
    networks = section(config).get("wifi", [])
    if not networks:
        return []
    text = "ctrl_interface=/run/wpa_supplicant\nupdate_config=0\n"
    for prio, net in enumerate(networks):
        text += f"\nnetwork={{\n\tssid={wpa_ssid(net['name'])}\n{wpa_auth(net.get('passphrase'))}" \
                f"\tpriority={len(networks) - prio}\n}}\n"
    out: list[Action] = [("write", WPA_CONF, text.encode(), 0o600, "root:root")]
    interfaces = config.get("network", {}).get("interfaces", {})
    wireless = [i for i in facts.get("wireless", []) if not interfaces.get(i, {}).get("unmanaged")]
    if not facts.get("have_wpa_supplicant"):
        return [*out, ("error", "wifi", "wpa_supplicant is not in this image: add the wpasupplicant package "
                                       "(and wireless drivers) to the image definition")]
    if not wireless:
        return [*out, ("error", "wifi", "wifi is configured but there is no wireless interface")]
    for iface in wireless:
        out += [("service", f"wifi-{iface}", ["/usr/sbin/wpa_supplicant", "-i", iface, "-c", WPA_CONF]),
                ("service", f"dhcp-{iface}", dhcp_argv(iface))]
    return out


def plan_k3s_files(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    if not facts.get("k3s") and "k3s" not in config and not K3S_KEYS & set(section(config)):
        return []  # an image without k3s and a config without k3s keys: skip the import
    from agent.modules import k3s
    return k3s.plan_files(config, facts)


def plan_k3s_service(config: dict[str, Any], facts: dict[str, Any]) -> list[Action]:
    if not facts.get("k3s"):
        return []
    from agent.modules import k3s
    return k3s.plan_service(config, facts)


# (name, phase, keys that activate it, plan). Order within a phase is the order here:
# files first (commands may run what they wrote), commands last.
MODULES: list[tuple[str, str, tuple[str, ...], Plan]] = [
    ("users", "initrd", ("users", "password"), plan_users),  # before write_files, whose owners may be users
    ("modules", "initrd", ("modules",), plan_modules),
    ("sysctl", "initrd", ("sysctl",), plan_sysctl),
    ("environment", "initrd", ("environment",), plan_environment),
    ("write_files", "initrd", ("write_files",), plan_write_files),
    ("init_cmd", "initrd", ("init_cmd",), _commands("init_cmd")),
    ("ssh_authorized_keys", "boot", ("ssh_authorized_keys", "users"), plan_ssh_keys),
    ("ssh_server", "boot", ("ssh_authorized_keys", "users", "ssh", "password"), plan_ssh_server),
    ("timezone", "boot", ("timezone",), plan_timezone),
    ("dns", "boot", ("dns_nameservers",), plan_dns),
    ("ntp", "boot", ("ntp_servers",), plan_ntp),
    ("wifi", "boot", ("wifi",), plan_wifi),
    ("boot_cmd", "boot", ("boot_cmd",), _commands("boot_cmd")),
    ("ssh_authorized_keys_remote", "runtime", ("ssh_authorized_keys", "users"), plan_ssh_keys_remote),
    ("k3s", "boot", (), plan_k3s_files),  # no activating key: the image decides (facts["k3s"])
    ("run_cmd", "runtime", ("run_cmd",), _commands("run_cmd")),
    ("k3s_service", "runtime", (), plan_k3s_service),  # after run_cmd, as k3OS: commands may prepare it
]
# Modules whose effect "basalt config apply --try" reverts when the change is not confirmed.
REVERTIBLE = ("network", "users", "ssh_authorized_keys", "ssh_server", "dns", "wifi")
# Commands run once per boot; a live "basalt config apply" re-applies everything else.
ONCE_PER_BOOT = ("init_cmd", "boot_cmd", "run_cmd")


def plan_phase(phase: str, config: dict[str, Any], facts: dict[str, Any]) -> list[tuple[str, list[Action]]]:
    """The modules of ``phase`` that ``config`` activates, each with its actions."""
    keys = set(config) | set(section(config))
    out = []
    for name, ph, activators, plan in MODULES:
        if ph == phase and (keys & set(activators) or not activators):
            try:
                actions = plan(config, facts)
                if actions or activators:  # an always-on module with nothing to do is left out
                    out.append((name, actions))
            except Exception as exc:  # noqa: BLE001 - e.g. undecodable content: report, go on
                out.append((name, [("error", name, f"{type(exc).__name__}: {exc}")]))
    return out
