"""Provisioning modules (users, SSH, NTP, time zone, network, Wi-Fi) as pure plans from
{config, facts} fixtures and applied into a scratch root; datasources (NoCloud seed media,
HTTP with retries); merge order with datasources; the last known-good fallback."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.config import bootargs, datasources, sources
from agent.modules import actions, plans
from builder.vm import seed

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nadm:x:4:\nnogroup:x:65534:\n"
FACTS = {"passwd": PASSWD, "group": GROUP, "interfaces": ["eth0", "eth1"], "wireless": [],
         "have_wpa_supplicant": False}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0000 me@laptop"
DHCP0 = ("service", "dhcp-eth0", plans.dhcp_argv("eth0"))
DHCP1 = ("service", "dhcp-eth1", plans.dhcp_argv("eth1"))
LO = ("ip", ["link", "set", "lo", "up"])

PLANS: list[tuple[str, dict[str, Any], dict[str, Any], list[tuple[Any, ...]]]] = [
    ("users: a new user gets the next uid, its group, supplementary groups (made when missing), a locked "
     "password and a home", {"users": [{"name": "ops", "groups": ["adm", "operators"]}]}, FACTS,
     [("write", "/etc/passwd", (PASSWD + "ops:x:1000:1000:ops:/home/ops:/bin/sh\n").encode(), 0o644, "root:root"),
      ("write", "/etc/group", (GROUP.replace("adm:x:4:", "adm:x:4:ops") + "ops:x:1000:\noperators:x:1001:ops\n")
       .encode(), 0o644, "root:root"),
      ("shadow", {"ops": None}), ("mkdir", "/home/ops", 0o755, "ops:ops")]),
    ("users: k3OS's password is the default user's; a user's password unless locked",
     {"k3os": {"password": "$6$salt$hash"}, "users": [{"name": "a", "password": "pw"},
                                                       {"name": "b", "password": "pw", "lock_password": True}]},
     FACTS, [("write", "/etc/passwd", (PASSWD + "a:x:1000:1000:a:/home/a:/bin/sh\nb:x:1001:1001:b:/home/b:/bin/sh\n")
              .encode(), 0o644, "root:root"),
             ("write", "/etc/group", (GROUP + "a:x:1000:\nb:x:1001:\n").encode(), 0o644, "root:root"),
             ("shadow", {"root": "$6$salt$hash", "a": "pw", "b": None}),
             ("mkdir", "/home/a", 0o755, "a:a"), ("mkdir", "/home/b", 0o755, "b:b")]),
    ("ssh keys at boot: lines only, to the default user (root) and each user",
     {"ssh_authorized_keys": [KEY, "github:alice"], "users": [{"name": "ops", "ssh_authorized_keys": [KEY]}]},
     FACTS, [("keys", "/root/.ssh/authorized_keys", [KEY], [], "root:root"),
             ("keys", "/home/ops/.ssh/authorized_keys", [KEY], [], "ops:ops")]),
    ("ssh server: keys only by default, host key on the state partition", {"ssh_authorized_keys": [KEY]}, FACTS,
     [("mkdir", "/var/lib/basalt/ssh", 0o700, "root:root"),
      ("hostkey", "/var/lib/basalt/ssh/dropbear_ed25519_host_key"),
      ("service", "sshd", ["/usr/sbin/dropbear", "-F", "-E", "-p", "22", "-r",
                           "/var/lib/basalt/ssh/dropbear_ed25519_host_key", "-s"])]),
    ("ssh server: port and password logins", {"basalt": {"ssh": {"port": 2222, "password_authentication": True}}},
     FACTS, [("mkdir", "/var/lib/basalt/ssh", 0o700, "root:root"),
             ("hostkey", "/var/lib/basalt/ssh/dropbear_ed25519_host_key"),
             ("service", "sshd", ["/usr/sbin/dropbear", "-F", "-E", "-p", "2222", "-r",
                                  "/var/lib/basalt/ssh/dropbear_ed25519_host_key"])]),
    ("ssh server: disabled", {"basalt": {"ssh": {"enabled": False}}}, FACTS, [("stop", "sshd")]),
    ("ntp", {"k3os": {"ntp_servers": ["0.pool.example", "10.0.0.1"]}}, FACTS,
     [("write", "/etc/openntpd/ntpd.conf", b"server 0.pool.example\nserver 10.0.0.1\n", 0o644, "root:root"),
      ("mkdir", "/run/openntpd", 0o755, "root:root"),
      ("service", "ntpd", ["/usr/sbin/ntpd", "-d", "-f", "/etc/openntpd/ntpd.conf"])]),
    ("timezone", {"timezone": "Europe/Berlin"}, FACTS,
     [("symlink", "/usr/share/zoneinfo/Europe/Berlin", "/etc/localtime"),
      ("write", "/etc/timezone", b"Europe/Berlin\n", 0o644, "root:root")]),
    ("wifi without wpa_supplicant in the image: the config is written, the gap reported",
     {"k3os": {"wifi": [{"name": "site", "passphrase": "pw"}, {"name": "open"}]}}, FACTS,
     [("write", "/etc/wpa_supplicant/basalt.conf",
       b'ctrl_interface=/run/wpa_supplicant\nupdate_config=0\n\nnetwork={\n\tssid="site"\n\tpsk="pw"\n\tpriority=2\n}\n'
       b'\nnetwork={\n\tssid="open"\n\tkey_mgmt=NONE\n\tpriority=1\n}\n', 0o600, "root:root"),
      ("error", "wifi", "wpa_supplicant is not in this image: add the wpasupplicant package (and wireless drivers) "
                        "to the image definition")]),
]


@pytest.mark.parametrize(("what", "config", "facts", "expected"), PLANS, ids=[p[0].split(":")[0] + str(i)
                                                                            for i, p in enumerate(PLANS)])
def test_plans(what: str, config: dict[str, Any], facts: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    name = {"users": "users", "ssh keys at boot": "ssh_authorized_keys", "ssh server": "ssh_server", "ntp": "ntp",
            "timezone": "timezone", "wifi without wpa_supplicant in the image": "wifi"}[what.split(":")[0]]
    planned = dict(plans.plan_phase("initrd", config, facts) + plans.plan_phase("boot", config, facts))
    assert planned[name] == expected


def test_wifi_with_a_wireless_interface_runs_a_supplicant_and_dhcp() -> None:
    facts = {**FACTS, "wireless": ["wlan0"], "have_wpa_supplicant": True}
    plan = plans.plan_wifi({"basalt": {"wifi": [{"name": "n"}]}}, facts)
    assert plan[1:] == [("service", "wifi-wlan0", ["/usr/sbin/wpa_supplicant", "-i", "wlan0", "-c",
                                                   "/etc/wpa_supplicant/basalt.conf"]),
                        ("service", "dhcp-wlan0", plans.dhcp_argv("wlan0"))]
    assert plans.plan_wifi({"basalt": {"wifi": [{"name": "n"}]}}, {**facts, "wireless": []})[-1] == \
        ("error", "wifi", "wifi is configured but there is no wireless interface")


def test_remote_keys_only_at_runtime() -> None:
    config = {"ssh_authorized_keys": [KEY, "github:alice", "gitlab:bob", "https://keys.example/me"],
              "users": [{"name": "ops", "ssh_authorized_keys": [KEY]}]}
    runtime = dict(plans.plan_phase("runtime", config, FACTS))
    assert runtime["ssh_authorized_keys_remote"] == [
        ("keys", "/root/.ssh/authorized_keys", [KEY],
         ["https://github.com/alice.keys", "https://gitlab.com/bob.keys", "https://keys.example/me"], "root:root")]


@pytest.mark.parametrize(("network", "expected"), [
    ({}, [LO, DHCP0, DHCP1]),
    ({"interfaces": {"eth0": {"addresses": ["192.168.1.10/24", "fd00::10/64"], "gateway": "192.168.1.1",
                              "routes": [{"to": "10.8.0.0/16", "via": "192.168.1.254"}], "dns": ["192.168.1.1"]}}},
     [LO, DHCP1, ("stop", "dhcp-eth0"), ("ip", ["addr", "flush", "dev", "eth0"]), ("ip", ["link", "set", "eth0", "up"]),
      ("ip", ["addr", "add", "192.168.1.10/24", "dev", "eth0"]), ("ip", ["addr", "add", "fd00::10/64", "dev", "eth0"]),
      ("ip", ["route", "replace", "default", "via", "192.168.1.1", "dev", "eth0"]),
      ("ip", ["route", "replace", "10.8.0.0/16", "via", "192.168.1.254", "dev", "eth0"]),
      ("write", "/etc/resolv.conf", b"nameserver 192.168.1.1\n", 0o644, "root:root"),
      ("touch", "/run/basalt/network-up")]),
    ({"interfaces": {"eth1": {"dhcp": False}, "mgmt": {"vlan": {"id": 42, "link": "eth0"}, "dhcp": True}}},
     [LO, DHCP0, ("stop", "dhcp-eth1"), ("ip", ["addr", "flush", "dev", "eth1"]), ("ip", ["link", "set", "eth1", "up"]),
      ("modprobe", "8021q", ""), ("ip", ["link", "add", "link", "eth0", "name", "mgmt", "type", "vlan", "id", "42"]),
      ("ip", ["link", "set", "mgmt", "up"]), ("service", "dhcp-mgmt", plans.dhcp_argv("mgmt")),
      ("touch", "/run/basalt/network-up")]),
    ({"interfaces": {"wlan9": {"dhcp": True}}},
     [LO, DHCP0, DHCP1, ("error", "network.interfaces.wlan9", "no interface 'wlan9' (present: eth0, eth1)")]),
])
def test_network_plans(network: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    assert plans.plan_network({"network": network} if network else {}, FACTS) == expected


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def start(self, name: str, argv: list[str]) -> None:
        self.calls.append(("start", name, *argv))

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))


def scratch(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    me = f"me:x:{os.getuid()}:{os.getgid()}::/home/me:/bin/sh\n"
    (tmp_path / "etc/passwd").write_text(PASSWD + me)
    (tmp_path / "etc/group").write_text(GROUP + f"me:x:{os.getgid()}:\n")
    (tmp_path / "etc/shadow").write_text("root:!:19000:0:99999:7:::\nme:$6$old$hash:19000:0:99999:7:::\n")
    (tmp_path / "usr/share/zoneinfo/Europe").mkdir(parents=True)
    (tmp_path / "usr/share/zoneinfo/Europe/Berlin").write_bytes(b"TZif")
    return tmp_path


def test_plain_passwords_are_hashed_before_they_touch_disk(tmp_path: Path) -> None:
    import _crypt
    root = scratch(tmp_path)
    planned = [("shadow", {"root": "s3cret", "me": None, "new": "$6$given$hash"})]
    assert actions.apply(planned, run=lambda argv: 0, root=str(root)) == []
    rows = {r.split(":")[0]: r.split(":") for r in (root / "etc/shadow").read_text().splitlines()}
    assert rows["root"][1].startswith("$6$") and _crypt.crypt("s3cret", rows["root"][1]) == rows["root"][1]
    assert "s3cret" not in (root / "etc/shadow").read_text()
    assert rows["me"][1] == "$6$old$hash"  # None keeps an existing hash (locks only a password-less account)
    assert rows["new"][1] == "$6$given$hash"
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o600


def test_keys_services_symlink_and_errors_apply(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    root = scratch(tmp_path)
    (http_server.root / "me.keys").write_text(f"{KEY}\n# comment\n\nssh-rsa AAAAB3 other\n")
    services = Recorder()
    planned = [("keys", "/home/me/.ssh/authorized_keys", [KEY], [f"{http_server.url}/me.keys"], "me:me"),
               ("symlink", "/usr/share/zoneinfo/Europe/Berlin", "/etc/localtime"),
               ("symlink", "/usr/share/zoneinfo/Mars/Olympus", "/etc/localtime"),
               ("service", "sshd", ["/usr/sbin/dropbear", "-F"]), ("stop", "ntpd"), ("touch", "/ready"),
               ("error", "wifi", "no wireless interface")]
    errors = actions.apply(planned, run=lambda argv: 0, root=str(root), services=services)
    assert errors == ["symlink /usr/share/zoneinfo/Mars/Olympus: /usr/share/zoneinfo/Mars/Olympus does not exist "
                      "in this image", "error wifi: no wireless interface"]
    keys = root / "home/me/.ssh/authorized_keys"
    assert keys.read_text() == f"{KEY}\n{KEY}\nssh-rsa AAAAB3 other\n"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and stat.S_IMODE(keys.parent.stat().st_mode) == 0o700
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"
    assert services.calls == [("start", "sshd", "/usr/sbin/dropbear", "-F"), ("stop", "ntpd")]
    assert (root / "ready").exists()


def test_key_urls_are_retried_then_reported(http_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr("time.sleep", lambda s: None)
    with pytest.raises(OSError, match=r"cannot fetch keys from .*/missing.keys after 3 attempts: HTTP Error 404"):
        actions.fetch_keys(f"{http_server.url}/missing.keys", attempts=3)
    assert [p for p, _ in http_server.requests] == ["/missing.keys"] * 3


# --- datasources -------------------------------------------------------------------

def test_seed_iso_has_the_cidata_label_and_rock_ridge_names(tmp_path: Path) -> None:
    import pycdlib
    user = tmp_path / "user-data"
    user.write_text("#cloud-config\nhostname: from-seed\n")
    iso = seed.make_seed(tmp_path / "seed.iso", user)
    assert datasources.fs_label(iso.read_bytes()[:36864]) == ("iso9660", b"cidata")
    reader = pycdlib.PyCdlib()
    reader.open(str(iso))
    names = sorted(c.rock_ridge.name().decode() for c in reader.list_children(rr_path="/")
                   if c.rock_ridge and c.is_file())
    reader.close()
    assert names == ["meta-data", "user-data"]


def test_seed_refuses_an_invalid_user_data(tmp_path: Path) -> None:
    from agent.errors import BasaltError
    user = tmp_path / "user-data"
    user.write_text("#cloud-config\nhostname: bad_name!\n")
    with pytest.raises(BasaltError, match=r"user-data:2: hostname: 'bad_name!' is not valid here"):
        seed.make_seed(tmp_path / "seed.iso", user)
    assert not list(tmp_path.glob("seed.iso*"))


def test_labels_of_real_vfat_and_ext4_filesystems(tmp_path: Path) -> None:
    vfat = tmp_path / "vfat.img"
    with open(vfat, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkfs.vfat", "-n", "CIDATA", str(vfat)], check=True, capture_output=True)
    assert datasources.fs_label(vfat.read_bytes()[:36864]) == ("vfat", b"CIDATA")
    state = seed.make_state_disk(tmp_path / "state.img", size_mb=16)
    assert datasources.fs_label(state.read_bytes()[:36864]) == ("ext4", b"BASALT_STATE")
    assert datasources.fs_label(bytes(36864)) is None


def test_find_seed_scans_block_devices(tmp_path: Path) -> None:
    sys_block, dev = tmp_path / "sys", tmp_path / "dev"
    sys_block.mkdir()
    dev.mkdir()
    user = tmp_path / "user-data"
    user.write_text("hostname: x\n")
    for name in ("loop0", "sda", "sr0", "sr1"):
        (sys_block / name).mkdir()
    (dev / "sda").write_bytes(bytes(40000))
    seed.make_seed(dev / "sr1", user)  # sr0: an empty drive (no device node to open)
    (dev / "loop0").write_bytes((dev / "sr1").read_bytes())  # loop devices are never seeds
    assert datasources.find_seed(str(sys_block), str(dev)) == (str(dev / "sr1"), "iso9660")


def test_http_datasource_retries_and_reports_change(tmp_path: Path, http_server) -> None:  # type: ignore[no-untyped-def]
    slept: list[float] = []
    dest = tmp_path / "http"
    with pytest.raises(OSError, match=r"no answer after 3 attempts: HTTP Error 404"):
        datasources.fetch_url(f"{http_server.url}/user-data", str(dest), attempts=3, sleep=slept.append)
    assert slept == [2.0, 4.0]
    (http_server.root / "user-data").write_text("#!/bin/sh\necho hi\n")
    assert datasources.fetch_url(f"{http_server.url}/user-data", str(dest), sleep=slept.append) is True
    assert datasources.fetch_url(f"{http_server.url}/user-data", str(dest), sleep=slept.append) is False
    assert stat.S_IMODE((dest / "user-data").stat().st_mode) == 0o700  # a script: executable


def test_datasource_url_is_not_a_config_key() -> None:
    cmdline = "quiet basalt.datasource=http://10.0.2.100/ud k3os.datasource=cdrom"
    assert bootargs.datasource_url(cmdline) == "http://10.0.2.100/ud"
    assert sources.cmdline_config(cmdline, {"hostname"}) == {"k3os": {"datasource": "cdrom"}}
    assert bootargs.has_config("quiet basalt.datasource=https://x/y", "/nonexistent", ())


# --- merge order with datasources, known-good fallback -------------------------------

def layout(tmp_path: Path) -> dict[str, Any]:
    nocloud, http = tmp_path / "nocloud", tmp_path / "http"
    nocloud.mkdir()
    http.mkdir()
    (tmp_path / "baked.yaml").write_text("hostname: baked\nk3os: {labels: {a: baked, b: baked}}\n")
    (tmp_path / "state.yaml").write_text("k3os: {labels: {b: state, c: state}}\n")
    (nocloud / "meta-data").write_text("instance-id: i-1\nlocal-hostname: meta-host\n")
    (nocloud / "user-data").write_text("#cloud-config\nk3os: {labels: {c: nocloud}}\n")
    (http / "user-data").write_text("#!/bin/sh\ntouch /tmp/x\n")
    return {"baked": str(tmp_path / "baked.yaml"), "state": str(tmp_path / "state.yaml"),
            "state_dir": str(tmp_path / "none"), "datasource_dirs": (str(nocloud), str(http)),
            "known_good": str(tmp_path / "lkg.json"), "rejected": str(tmp_path / "rejected.json")}


def test_datasources_merge_last_and_scripts_are_kept_apart(tmp_path: Path) -> None:
    paths = layout(tmp_path)
    merged = sources.gather("basalt.labels.a=cmd", **paths)
    assert merged.value == {"hostname": "meta-host", "k3os": {"labels": {"a": "baked", "b": "state", "c": "nocloud"}},
                            "basalt": {"labels": {"a": "cmd"}}}
    nocloud = paths["datasource_dirs"][0]
    assert merged.sources == [paths["baked"], "kernel command line", paths["state"], f"{nocloud}/meta-data",
                              f"{nocloud}/user-data"]
    assert merged.scripts == [f"{paths['datasource_dirs'][1]}/user-data"]
    assert merged.origin[("hostname",)] == f"{nocloud}/meta-data" and merged.problems == []


def test_invalid_source_falls_back_to_the_last_known_good_config(tmp_path: Path) -> None:
    paths = layout(tmp_path)
    good = sources.gather("", **paths)
    sources.save_known_good(good, paths["known_good"])
    Path(paths["state"]).write_text("k3os:\n  labels: {b: state}\n  taints: [oops]\n")
    merged = sources.gather("", **paths)
    assert merged.value == good.value and merged.fallback == "a source has problems"
    assert merged.sources == [f"last known-good ({', '.join(good.sources)})"]
    assert merged.problems[0].render().startswith(f"{paths['state']}:3: k3os.taints[0]: 'oops' is not valid here")
    assert merged.scripts == []
    # Without a known-good config, the valid sources still apply (the invalid one is left out).
    os.unlink(paths["known_good"])
    partial = sources.gather("", **paths)
    assert partial.fallback is None and paths["state"] not in partial.sources


def test_a_reverted_trial_config_is_not_applied_at_the_next_boot(tmp_path: Path) -> None:
    paths = layout(tmp_path)
    sources.save_known_good(sources.gather("", **paths), paths["known_good"])
    Path(paths["state"]).write_text("network: {interfaces: {eth0: {addresses: [10.9.9.9/24]}}}\n")
    trial = sources.gather("", **paths)
    assert trial.problems == [] and "network" in trial.value
    sources.reject(trial.digest, paths["rejected"])
    again = sources.gather("", **paths)
    assert "network" not in again.value and again.fallback is not None and "not confirmed" in again.fallback
    Path(paths["state"]).write_text("network: {interfaces: {eth0: {addresses: [10.0.2.15/24]}}}\n")
    fixed = sources.gather("", **paths)  # an edited config is tried again
    assert fixed.fallback is None and fixed.value["network"]["interfaces"]["eth0"]["addresses"] == ["10.0.2.15/24"]
    assert json.loads(Path(paths["rejected"]).read_text())["digest"] == trial.digest


def test_a_precompiled_baked_config_is_used_only_while_it_matches(tmp_path: Path) -> None:
    from agent.config.validate import check_text
    baked = tmp_path / "config.yaml"
    text = "hostname: Edge-1\nk3os: {dnsNameserver: 10.0.0.1}\n"
    # numbers of every kind, unquoted, precompile (marshal takes plain values only)
    numbers = "basalt: {upgrade: {health_timeout: 30}}\nwrite_files: [{path: /a, permissions: 0644}]\n"
    assert sources.precompile(numbers.encode(), check_text(numbers).value, sources.schema_bytes())
    baked.write_text(text)
    raw = sources.schema_bytes()
    (tmp_path / "config.bin").write_bytes(sources.precompile(text.encode(), check_text(text).value, raw))
    none = str(tmp_path / "none")
    kw: dict[str, Any] = {"state": none, "state_dir": none, "datasource_dirs": (), "known_good": none, "rejected": none}
    assert sources.gather("", str(baked), **kw).value == \
        {"hostname": "Edge-1", "k3os": {"dns_nameservers": ["10.0.0.1"]}}
    # The sidecar's value is what the node uses, so prove it is read: a doctored value with the right key wins...
    (tmp_path / "config.bin").write_bytes(sources.precompile(text.encode(), {"hostname": "from-sidecar"}, raw))
    assert sources.gather("", str(baked), **kw).value == {"hostname": "from-sidecar"}
    # ...and once the YAML differs from what was compiled, the YAML is parsed and checked again.
    baked.write_text("hostname: bad_name!\n")
    merged = sources.gather("", str(baked), **kw)
    assert merged.problems[0].render().startswith(f"{baked}:1: hostname: 'bad_name!' is not valid here")


@pytest.mark.parametrize(("network", "lines"), [
    ({"name": "site", "passphrase": "correct horse"}, ['\tssid="site"', '\tpsk="correct horse"']),
    ({"name": 'a "quoted" name', "passphrase": "x" * 8}, ["\tssid=61202271756f74656422206e616d65",
                                                          '\tpsk="xxxxxxxx"']),
    ({"name": "café"}, ["\tssid=636166c3a9", "\tkey_mgmt=NONE"]),
    ({"name": "hex", "passphrase": "AB" * 32}, ['\tssid="hex"', "\tpsk=" + "ab" * 32]),
])
def test_wifi_networks_cannot_break_the_supplicant_config(network: dict[str, str], lines: list[str]) -> None:
    (_, path, text, mode, _), = plans.plan_wifi({"basalt": {"wifi": [network]}}, FACTS)[:1]
    assert path == "/etc/wpa_supplicant/basalt.conf" and mode == 0o600
    body = text.decode().split("network={\n")[1].splitlines()
    assert body[:2] == lines and body[2:] == ["\tpriority=1", "}"]


@pytest.mark.parametrize(("passphrase", "ok"), [("12345678", True), ("1234567", False), ("x" * 63, True),
                                                ("x" * 64, False), ("ab" * 32, True), ("new\nline-xx", False)])
def test_the_schema_takes_only_passphrases_wpa_takes(passphrase: str, ok: bool) -> None:
    import json

    from agent.config.validate import check_text
    loaded = check_text(json.dumps({"basalt": {"wifi": [{"name": "n", "passphrase": passphrase}]}}))
    assert loaded.ok is ok, loaded.problems
    if not ok:
        assert "8 to 63 printable ASCII" in str(loaded.problems[0].hint)


def test_an_unmanaged_interface_gets_no_dhcp_and_no_wifi_client() -> None:
    config = {"network": {"interfaces": {"wlan1": {"unmanaged": True}, "eth1": {"unmanaged": True}}},
              "basalt": {"wifi": [{"name": "n"}]}}
    facts = {**FACTS, "interfaces": ["eth0", "eth1"], "wireless": ["wlan0", "wlan1"], "have_wpa_supplicant": True}
    services = [a[1] for a in plans.plan_network(config, facts) + plans.plan_wifi(config, facts)
                if a[0] == "service"]
    assert services == ["dhcp-eth0", "wifi-wlan0", "dhcp-wlan0"]
