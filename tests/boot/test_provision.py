"""Provisioning over SSH: a config's effects checked through the host forward with the key it
installed; a NoCloud seed CD plus an HTTP datasource; an invalid config that must fall back
to the last known-good one kept on the state disk; and ``config apply --try`` reverting a
static-IP typo that cut SSH off.

Every guest is bounded by timeouts and killed on exit (the Guest context manager); the HTTP
server listens on 127.0.0.1 only, and the guest reaches it through guestfwd."""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from pathlib import Path

from builder import pipeline, plan
from builder.vm import seed
from builder.vm.qemu import IDLE, READY, Guest

BOOT_TIMEOUT = 300


def iso_of(out: Path) -> Path:
    return next(out.glob("*.iso"))


def provisioning_config(pub: str) -> str:
    b64 = base64.b64encode(b"encoded\n").decode()
    gzb64 = base64.b64encode(gzip.compress(b"zipped\n", mtime=0)).decode()
    return f"""\
hostname: site-a
ssh_authorized_keys:
- {pub}
users:
- name: ops
  groups: [operators]
  password: s3cret-Pa55
  ssh_authorized_keys: ["{pub}"]
timezone: Europe/Berlin
write_files:
- path: /etc/basalt-test/plain
  content: "plain text\\n"
- path: /etc/basalt-test/b64
  encoding: b64
  content: {b64}
  permissions: '0600'
  owner: ops:operators
- path: /etc/basalt-test/gz
  encoding: gzip+base64
  content: {gzb64}
run_cmd:
- ip -4 addr show eth0 > /run/run-ran
k3os:
  ntp_servers: [10.0.2.2]
  sysctl:
    vm.swappiness: '7'
  modules:
  - dummy numdummies=2
  environment:
    HTTP_PROXY: http://proxy.invalid:3128
"""


def test_ssh_provisioning_trial_apply_and_known_good_fallback(built_iso: Path, key: Path, tmp_path: Path,
                                                             qemu_available: None) -> None:
    pub = key.with_suffix(".pub").read_text().strip()
    config = tmp_path / "config.yaml"
    config.write_text(provisioning_config(pub))
    good = pipeline.build(plan.plan("x86_64-iso", str(config)), out=tmp_path / "good")
    state = seed.make_state_disk(tmp_path / "state.img")
    known_hosts = tmp_path / "known_hosts"

    with Guest(iso_of(good), disks=[state], firmware="direct") as guest:
        assert "errors=0" in guest.wait_for(READY, BOOT_TIMEOUT).group(0), guest.tail()
        guest.wait_ssh(key, "ops", options=("StrictHostKeyChecking=accept-new", f"UserKnownHostsFile={known_hosts}",
                                             "HostKeyAlias=basalt-test-node"))
        assert guest.ssh("id", key, "ops") == \
            "uid=1000(ops) gid=1000(ops) groups=1000(ops),1001(operators)"

        def root(cmd: str) -> str:
            return guest.ssh(cmd, key)
        assert root("hostname") == "site-a"
        assert root("cat /etc/basalt-test/plain /etc/basalt-test/b64 /etc/basalt-test/gz") == \
            "plain text\nencoded\nzipped"
        assert root("stat -c '%a %U:%G' /etc/basalt-test/b64 /etc/basalt-test/plain") == \
            "600 ops:operators\n644 root:root"
        assert root("cat /proc/sys/vm/swappiness") == "7"
        assert root("ls -d /sys/class/net/dummy* | wc -l") == "2"  # the module, with its parameter
        assert root("cat /etc/environment") == "HTTP_PROXY=http://proxy.invalid:3128"
        assert root("readlink /etc/localtime; date +%Z") in ("/usr/share/zoneinfo/Europe/Berlin\nCET",
                                                            "/usr/share/zoneinfo/Europe/Berlin\nCEST")
        shadow = root("grep ^ops: /etc/shadow").split(":")
        assert shadow[1].startswith("$6$") and "s3cret" not in root("cat /etc/shadow")
        assert root("for i in $(seq 60); do [ -s /run/run-ran ] && break; sleep 1; done; cat /run/run-ran") \
            .count("inet 10.0.2.15/24") == 1  # run_cmd ran once the network was up
        status = json.loads(root("basalt status --json"))
        assert status["errors"] == [] and status["state_device"] == "/dev/vda"
        assert {n: s["state"] for n, s in status["services"].items() if n in ("sshd", "ntpd")} == \
            {"sshd": "running", "ntpd": "running"}
        # Keys only: the server offers no password method.
        denied = guest.ssh("true", key, "ops", check=False,
                           options=("PreferredAuthentications=password", "StrictHostKeyChecking=no",
                                    "UserKnownHostsFile=/dev/null"))
        assert "Permission denied (publickey)" in denied

        # A static-IP typo applied on trial cuts SSH off; unconfirmed, it reverts by itself.
        root("printf 'network:\\n  interfaces:\\n    eth0:\\n      addresses: [10.0.9.15/24]\\n' "
             "> /var/lib/basalt/config.yaml")
        root("setsid basalt config apply --try 45 > /run/try.out 2>&1 < /dev/null &")
        guest.wait_for(r"basalt: config applied on trial: reverts in 45(\.0)?s", 60)
        # cut off: a new connection (one kept from before may outlive the address it was made to)
        assert "reachable" not in guest.ssh("echo reachable", key, check=False, timeout=60, shared=False)
        guest.wait_for(r"basalt: error: config: reverted: 'config apply --try 45' was not confirmed", 120)
        guest.wait_ssh(key, timeout=90)
        assert root("cat /run/try.out") == "applied on trial: reverts in 45 s unless 'basalt config confirm'"
        status = json.loads(root("basalt status --json"))
        assert status["config_fallback"].startswith("reverted:")
        assert "eth0=10.0.2.15/24" in status["addresses"]

        # A good change, confirmed, becomes the known-good config.
        root("echo 'hostname: site-b' > /var/lib/basalt/config.yaml")
        assert root("basalt config apply --try 120") == \
            "applied on trial: reverts in 120 s unless 'basalt config confirm'"
        assert root("hostname") == "site-b"
        assert root("basalt config confirm") == "confirmed: this config is now the last known-good"
        known_good = json.loads(root("cat /var/lib/basalt/last-known-good.json"))
        assert known_good["config"]["hostname"] == "site-b"
        assert known_good["sources"][-1] == "/var/lib/basalt/config.yaml"
        # Both hold the config's secrets: root's only. The validated source is remembered (and
        # the edit below, a changed source, is validated again at the next boot).
        assert root("stat -c '%a %U' /var/lib/basalt/last-known-good.json /var/lib/basalt/validated-config.bin") == \
            "600 root\n600 root"
        # An operator's typo, then a power cycle.
        root("printf 'hostname: bad_name!\nusers:\n- name: ops\n  shell: nope\n' > /var/lib/basalt/config.yaml")
        assert guest.powerdown(90), guest.tail()

    # The same node boots again: the invalid source is reported and the known-good config used.
    with Guest(iso_of(good), disks=[state], firmware="direct") as guest:
        ready = guest.wait_for(READY, BOOT_TIMEOUT)
        assert int(ready.group(4)) >= 2
        console = guest.console()
        edited = "/var/lib/basalt/config.yaml"
        assert f"basalt: error: config: {edited}:1: hostname: 'bad_name!' is not valid here" in console
        assert re.search(re.escape(f"basalt: error: config: {edited}:4: users[0].shell: ") + r".*", console)
        assert "basalt: error: config: using the last known-good config (a source has problems)" in console
        # Same host key (strict checking against boot one's known_hosts), same login key.
        guest.wait_ssh(key, options=("StrictHostKeyChecking=yes", f"UserKnownHostsFile={known_hosts}",
                                       "HostKeyAlias=basalt-test-node"))
        assert guest.ssh("hostname", key) == "site-b"
        status = json.loads(guest.ssh("basalt status --json", key))
        assert status["config_fallback"] == "a source has problems"
        assert any("hostname: 'bad_name!'" in e for e in status["errors"])
        assert status["config_sources"][0].startswith("last known-good (")
        validate = guest.ssh("basalt config validate 2>&1; echo rc=$?", key)
        assert validate.startswith(f"{edited}:1: hostname: 'bad_name!' is not valid here") and validate.endswith("rc=1")
        # Service logs live on the state partition: boot one's DHCP lease is still logged.
        assert guest.ssh("readlink /run/basalt/log", key) == "/var/log/basalt"
        assert int(guest.ssh("grep -c 'lease of 10.0.2.15 obtained' /var/log/basalt/dhcp-eth0.log", key)) >= 2


def test_nocloud_seed_and_http_datasource_with_static_network(built_iso: Path, key: Path, tmp_path: Path,
                                                             http_server, qemu_available: None) -> None:  # type: ignore[no-untyped-def]
    pub = key.with_suffix(".pub").read_text().strip()
    user_data = tmp_path / "user-data"
    user_data.write_text(f"""#cloud-config
ssh_authorized_keys: [{pub}]
network:
  interfaces:
    eth0:
      addresses: [10.0.2.15/24]
      gateway: 10.0.2.2
      dns: [10.0.2.3]
write_files:
- path: /etc/from-seed
  content: seed
""")
    meta = tmp_path / "meta-data"
    meta.write_text("instance-id: test-1\nlocal-hostname: seed-host\n")
    seed_iso = seed.make_seed(tmp_path / "seed.iso", user_data, meta)
    (http_server.root / "user-data").write_text("#!/bin/sh\necho \"script ran as $(id -u)\" > /run/script-ran\n")
    out = built_iso
    cmdline = ("console=ttyS0,115200 quiet basalt.label=BASALT basalt.mode=live "
               "basalt.datasource=http://10.0.2.100/user-data")
    with Guest(iso_of(out), extra_cdroms=[seed_iso], guestfwd=[("10.0.2.100:80", http_server.port)],
               direct=(out / "vmlinuz", out / "initrd.img", cmdline)) as guest:
        guest.wait_for(r"basalt: nocloud seed found on /dev/sr1", BOOT_TIMEOUT)
        assert "errors=0" in guest.wait_for(READY, BOOT_TIMEOUT).group(0)
        guest.wait_ssh(key)

        def root(cmd: str) -> str:
            return guest.ssh(cmd, key)
        assert root("hostname") == "seed-host"  # from meta-data
        assert root("cat /etc/from-seed") == "seed"
        assert root("ip -4 route show default") .startswith("default via 10.0.2.2 dev eth0")
        assert root("cat /etc/resolv.conf") == "nameserver 10.0.2.3"
        deadline = time.monotonic() + 120
        while root("cat /run/script-ran 2>/dev/null || true") == "" and time.monotonic() < deadline:
            time.sleep(2)
        assert root("cat /run/script-ran") == "script ran as 0"
        assert ("/user-data", None) in http_server.requests
        status = json.loads(root("basalt status --json"))
        assert "dhcp-eth0" not in status["services"]  # static: no DHCP client
        assert status["config_sources"] == ["/run/basalt/datasource/nocloud/meta-data",
                                            "/run/basalt/datasource/nocloud/user-data"]
        shown = root("basalt config show")
        assert "hostname = 'seed-host'    # /run/basalt/datasource/nocloud/meta-data" in shown
        assert "network.interfaces.eth0.gateway = '10.0.2.2'    # /run/basalt/datasource/nocloud/user-data" in shown
        guest.wait_for(IDLE, 60)
