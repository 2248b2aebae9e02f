"""The config validator on real cloud-init configs and by class of problem: exact lines (a block
value's problem at its key's line), k3OS's all-lower-case spellings, payloads that must decode,
placeholders in any value, every problem in one run, relative paths, warnings and hints."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.validate import check_text, load_config
from tests.unit.agent.config.test_config import rendered

ROOT = Path(__file__).resolve().parents[4]
CLOUD_INIT = ROOT.parent / "shared" / "testdata" / "cloud-init-examples"

# cloud-init's own documentation examples (../shared/testdata/cloud-init-examples, SOURCES.md):
# the exact "line: path: message" of every problem and warning, by line. 04 (write_files with b64,
# !!binary and gzip'd !!binary content) is the one Basalt takes whole.
EXPECTED: dict[str, list[str] | None] = {
    "01": [
        '11: bootcmd[1]: an exec-style command (a list of arguments): each item is one shell command line',
    ],
    "02": [
        '17: runcmd[0]: an exec-style command (a list of arguments): each item is one shell command line',
        '18: runcmd[1]: an exec-style command (a list of arguments): each item is one shell command line',
        '19: runcmd[2]: an exec-style command (a list of arguments): each item is one shell command line',
        '24: runcmd[5]: an exec-style command (a list of arguments): each item is one shell command line',
    ],
    "03": [
        "13: ssh_keys: unknown key 'ssh_keys'",
        "33: no_ssh_fingerprints: unknown key 'no_ssh_fingerprints'",
        "37: ssh: unknown key 'ssh'",
    ],
    # its selinux file's base64 ends in '...' ("truncated for example purposes"): k3OS's decoder
    # refuses it, and so does Basalt's, rather than write what a lenient decoder makes of it
    "04": ["12: write_files[0].content: content does not decode as b64: Only base64 data is allowed"],
    "05": [
        "25: ntp: unknown key 'ntp'",
    ],
    "06": [
        "5: groups: unknown key 'groups'",
        '16: users[0]: expected object, got string',
        "18: users[1].gecos: unknown key 'gecos'",
        "19: users[1].primary_group: unknown key 'primary_group'",
        "21: users[1].selinux_user: unknown key 'selinux_user'",
        "22: users[1].expiredate: unknown key 'expiredate'",
        "23: users[1].ssh_import_id: unknown key 'ssh_import_id'",
        "26: users[1].lock_passwd: unknown key 'lock_passwd'",
        "27: users[1].passwd: unknown key 'passwd'",
        "29: users[2].gecos: unknown key 'gecos'",
        "30: users[2].sudo: unknown key 'sudo'",
        "32: users[2].ssh_import_id: unknown key 'ssh_import_id'",
        "35: users[2].lock_passwd: unknown key 'lock_passwd'",
        "39: users[3].gecos: unknown key 'gecos'",
        "40: users[3].homedir: unknown key 'homedir'",
        "41: users[3].sudo: unknown key 'sudo'",
        "43: users[4].gecos: unknown key 'gecos'",
        "44: users[4].inactive: unknown key 'inactive'",
        "45: users[4].system: unknown key 'system'",
        "50: users[6]: 'name' is required",
        "50: users[6].snapuser: unknown key 'snapuser'",
        "52: users[7].ssh_redirect_user: unknown key 'ssh_redirect_user'",
    ],
    "07": [
        "10: ca_certs: unknown key 'ca_certs'",
    ],
    "08": [
        "29: mounts: unknown key 'mounts'",
        "38: mount_default_fields: unknown key 'mount_default_fields'",
        "43: swap: unknown key 'swap'",
    ],
    "09": [
        "8: wireguard: unknown key 'wireguard'",
    ],
    "10": [
        "10: manage_resolv_conf: unknown key 'manage_resolv_conf'",
        "12: resolv_conf: unknown key 'resolv_conf'",
    ],
    "11": [
        "35: power_state: unknown key 'power_state'",
    ],
    "12": [
        "28: growpart: unknown key 'growpart'",
    ],
    "13": [
        "7: final_message: unknown key 'final_message'",
    ],
    "14": [
        "4: datasource: unknown key 'datasource'",
    ],
    "15": [
        "9: disk_setup: unknown key 'disk_setup'",
        "15: fs_setup: unknown key 'fs_setup'",
        "24: device_aliases: unknown key 'device_aliases'",
        "25: disk_setup: duplicate key 'disk_setup'",
        "31: fs_setup: duplicate key 'fs_setup'",
        "41: disk_setup: duplicate key 'disk_setup'",
        "47: fs_setup: duplicate key 'fs_setup'",
        "56: device_aliases: duplicate key 'device_aliases'",
        "57: disk_setup: duplicate key 'disk_setup'",
        "63: fs_setup: duplicate key 'fs_setup'",
        "80: disk_setup: duplicate key 'disk_setup'",
        "171: fs_setup: duplicate key 'fs_setup'",
    ],
    "16": [
        "9: apt_pipelining: unknown key 'apt_pipelining'",
        "17: packages: unknown key 'packages'",
        "19: apt: unknown key 'apt'",
    ],
    "17": [
        "12: packages: unknown key 'packages'",
    ],
    "18": [
        "8: yum_repos: unknown key 'yum_repos'",
    ],
    "19": [
        "11: apt: unknown key 'apt'",
        "51: chef: unknown key 'chef'",
    ],
    "20": [
        "7: puppet: unknown key 'puppet'",
    ],
    "21": [
        "6: package_update: unknown key 'package_update'",
        "11: package_upgrade: unknown key 'package_upgrade'",
        "15: package_reboot_if_required: unknown key 'package_reboot_if_required'",
        "18: packages: unknown key 'packages'",
        "48: mounts: unknown key 'mounts'",
        "57: mount_default_fields: unknown key 'mount_default_fields'",
        "69: ssh_keys: unknown key 'ssh_keys'",
        "90: disable_ec2_metadata: unknown key 'disable_ec2_metadata'",
        '105: runcmd[0]: an exec-style command (a list of arguments): each item is one shell command line',
        '106: runcmd[1]: an exec-style command (a list of arguments): each item is one shell command line',
        '107: runcmd[2]: an exec-style command (a list of arguments): each item is one shell command line',
        '112: runcmd[5]: an exec-style command (a list of arguments): each item is one shell command line',
        '123: bootcmd[1]: an exec-style command (a list of arguments): each item is one shell command line',
        "135: cloud_config_modules: unknown key 'cloud_config_modules'",
        "161: ssh_import_id: unknown key 'ssh_import_id'",
        "169: apt: unknown key 'apt'",
        "187: byobu_by_default: unknown key 'byobu_by_default'",
        "193: disable_root: unknown key 'disable_root'",
        '212: users[0]: expected object, got string',
        "214: users[1].ssh_redirect_user: unknown key 'ssh_redirect_user'",
        "219: locale: unknown key 'locale'",
        "221: locale_configfile: unknown key 'locale_configfile'",
        "229: resize_rootfs: unknown key 'resize_rootfs'",
        "313: final_message: unknown key 'final_message'",
        "324: phone_home: unknown key 'phone_home'",
        "377: password: unknown key 'password'",
        "378: chpasswd: unknown key 'chpasswd'",
        "379: ssh_pwauth: unknown key 'ssh_pwauth'",
        "417: power_state: unknown key 'power_state'",
    ],
}


def examples() -> list[Path]:
    if not CLOUD_INIT.is_dir():
        pytest.skip(f"{CLOUD_INIT} is not present (shared/ sits beside the repository in CI)")
    return sorted(CLOUD_INIT.glob("*.yaml"))


def test_cloud_init_examples_are_all_covered() -> None:
    assert sorted(p.name[:2] for p in examples()) == sorted(EXPECTED)


@pytest.mark.parametrize("number", sorted(EXPECTED))
def test_cloud_init_examples(number: str) -> None:
    path = next(p for p in examples() if p.name.startswith(number))
    assert rendered(load_config(str(path))) == [f"{path}:{e}" for e in EXPECTED[number] or []]


def test_cloud_init_write_files_decode_as_cloud_init_writes_them() -> None:
    from agent.config.content import unbase64
    from agent.modules.plans import plan_write_files
    loaded = load_config(str(next(p for p in examples() if p.name.startswith("04"))))
    truncated, *rest = loaded.value["write_files"]
    assert truncated["path"] == "/etc/sysconfig/selinux"  # refused (EXPECTED["04"]); its whole part decodes:
    assert unbase64(truncated["content"].removesuffix("...").encode()[:56]).startswith(
        b"\n# This file controls the state of SELinux")
    files = {a[1]: a[2] for a in plan_write_files({"write_files": rest}, {})}
    assert files["/usr/bin/hello"] == b"#!/bin/sh\necho hello world\n"  # gzip + !!binary
    assert files["/bin/arch"].startswith(b"\x7fELF")  # !!binary


@pytest.mark.parametrize(("text", "expected"), [
    # 1. a block value's problem is at its key's line, after comments and blank lines
    ("k3os:\n  # the token\n\n  token:\n    a: b\n", ["4: k3os.token: expected string, got object"]),
    ("ntp:\n  # servers\n  servers: [a]\n", ["1: ntp: unknown key 'ntp'"]),
    ("users:\n  - name: a\n  -\n    # comment\n    shell: /bin/sh\n", ["3: users[1]: 'name' is required"]),
    ("write_files:\n# a comment\n- path: /a\n  content: x\n  mode: '0644'\n",
     ["5: write_files[0].mode: unknown key 'mode'"]),
    # 5. every problem, every duplicate, in one run; the hint names the key's own line
    ("hostname: a\nk3os:\n  token: x\nhostname: b\nk3os:\n  token: y\nbogus: 1\n",
     ["4: hostname: duplicate key 'hostname'", "5: k3os: duplicate key 'k3os'", "7: bogus: unknown key 'bogus'"]),
])
def test_lines_and_every_problem(text: str, expected: list[str]) -> None:
    assert rendered(check_text(text, "c.yaml")) == [f"c.yaml:{e}" for e in expected]


def test_duplicate_hint_names_the_first_keys_line() -> None:
    problem = check_text("k3os:\n  labels:\n    a: b\nk3os:\n  labels: {}\n").problems[0]
    assert problem.hint == "'k3os' is already set on line 1: keep one"


@pytest.mark.parametrize(("text", "expected"), [
    # 2. k3OS's all-lower-case JSON names, and cloud-init's runcmd/bootcmd
    ("runcmd: [date]", {"run_cmd": ["date"]}),
    ("bootcmd: [date]", {"boot_cmd": ["date"]}),
    ("initcmd: [date]", {"init_cmd": ["date"]}),
    ("sshauthorizedkeys: [github:a]", {"ssh_authorized_keys": ["github:a"]}),
    ("k3os: {k3sargs: [server]}", {"k3os": {"k3s_args": ["server"]}}),
    ("k3os: {datasources: [aws]}", {"k3os": {"data_sources": ["aws"]}}),
    ("k3os: {dnsnameservers: [1.1.1.1], ntpservers: [pool.ntp.org], serverurl: 'https://s:6443', token: t}",
     {"k3os": {"dns_nameservers": ["1.1.1.1"], "ntp_servers": ["pool.ntp.org"], "server_url": "https://s:6443",
               "token": "t"}}),
    ("writefiles: [{path: /a}]", {"write_files": [{"path": "/a"}]}),
])
def test_k3os_lower_case_spellings(text: str, expected: dict[str, object]) -> None:
    loaded = check_text(text)
    assert loaded.problems == () and loaded.value == expected


def test_exec_style_command_gets_its_own_message() -> None:
    loaded = check_text("runcmd:\n  - echo ok\n  - [ls, -l, /tmp dir]\n", "c.yaml")
    assert [p.render() for p in loaded.problems] == [
        "c.yaml:3: runcmd[1]: an exec-style command (a list of arguments): each item is one shell command line\n"
        "hint: write it as one string: \"ls -l '/tmp dir'\""]


GZ = base64.b64encode(gzip.compress(b"hello\n", mtime=0)).decode()


@pytest.mark.parametrize(("encoding", "content", "expected"), [
    ("b64", "aGVsbG8K", None),
    ("base64", "aGVsbG8K", None),
    ("b64", "not*base64!", "content does not decode as b64: "),
    ("gz+b64", GZ, None),
    ("gzip+base64", GZ, None),
    ("gz+base64", "aGVsbG8K", "content does not decode as gz+base64: Not a gzipped file"),
    ("gzip+b64", GZ[:-12], "content does not decode as gzip+b64: "),  # truncated
    ("gzip", "plain text", "content does not decode as gzip: Not a gzipped file"),
    # strict base64, as k3OS decodes it: line breaks and spaces between characters only
    ("b64", "aGVs bG8K", None),
    ("b64", "aGVsbG8K!", "content does not decode as b64: Only base64 data is allowed"),
    ("b64", "hello world, not base64", "content does not decode as b64: "),
    ("b64", "aGVsbG8", "content does not decode as b64: Incorrect padding"),
    ("b64", "$CONTENT", "content does not decode as b64: Only base64 data is allowed"),
    # a gzip bomb: 17 KiB that would gunzip to 17 MiB
    ("gz+b64", base64.b64encode(gzip.compress(bytes(17 << 20), mtime=0)).decode(),
     "content does not decode as gz+b64: it decompresses to more than 16 MiB"),
    ("gz+b64", base64.b64encode(gzip.compress(b"a", mtime=0) + gzip.compress(b"b", mtime=0)).decode(), None),
])
def test_write_files_payloads_are_decoded_while_validating(encoding: str, content: str,
                                                           expected: str | None) -> None:
    text = f"write_files:\n- path: /etc/x\n  encoding: {encoding}\n  content: '{content}'\n"
    loaded = check_text(text, "c.yaml")
    if expected is None:
        assert loaded.problems == ()
        return
    (problem,) = loaded.problems
    assert problem.line == 4 and problem.path == "write_files[0].content"
    assert problem.message.startswith(expected), problem.message


def test_a_gzip_bomb_is_refused_within_a_second_and_little_memory() -> None:
    import time
    import tracemalloc
    bomb = base64.b64encode(gzip.compress(bytes(256 << 20), mtime=0, compresslevel=9)).decode()  # 256 MiB in 350 KiB
    text = f"write_files:\n- path: /x\n  encoding: gz+b64\n  content: {bomb}\n"
    started = time.process_time()  # CPU time: the work itself, whatever else the machine runs
    (problem,) = check_text(text).problems
    assert time.process_time() - started < 1.0
    assert problem.message.endswith("it decompresses to more than 16 MiB"), problem.message
    tracemalloc.start()
    check_text(text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 << 20, peak


def test_binary_payloads() -> None:
    good = base64.b64encode(gzip.compress(b"hi")).decode()
    assert check_text(f"write_files:\n- path: /a\n  encoding: gzip\n  content: !!binary {good}\n").problems == ()
    bad = check_text("write_files:\n- path: /a\n  encoding: gz\n  content: !!binary aGVsbG8K\n", "c.yaml")
    assert rendered(bad) == ["c.yaml:4: write_files[0].content: content does not decode as gz+b64: "
                             "Not a gzipped file (b'he')"]


@pytest.mark.parametrize(("text", "path"), [
    ("k3os: {token: '${TOKEN}'}", "k3os.token"),
    ("k3os: {server_url: 'https://{{ server }}:6443', token: t}", "k3os.server_url"),
    ("k3os: {labels: {site: '<site-name>'}}", "k3os.labels.site"),
    ("k3os: {environment: {HTTP_PROXY: '${PROXY}'}}", "k3os.environment.HTTP_PROXY"),
    ("k3os: {k3s_args: [server, '--node-ip={{ ip }}']}", "k3os.k3s_args[1]"),
    ("write_files: [{path: '/etc/${NAME}.conf'}]", "write_files[0].path"),
    ("basalt: {wifi: [{name: '<ssid>', passphrase: p4ssphrase}]}", "basalt.wifi[0].name"),
])
def test_placeholders_in_any_value(text: str, path: str) -> None:
    (problem,) = check_text(text).problems
    assert problem.path == path and problem.message.endswith("looks like an unfilled template placeholder")
    assert problem.hint == "render the template first"


def test_placeholders_in_payload_and_shell_are_meant() -> None:
    text = ("write_files: [{path: /a, content: 'echo ${HOME} <b>'}]\nrun_cmd: ['echo ${HOSTNAME}']\n"
            "k3s: {manifests: ['{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {\"name\": \"x\"}, "
            "\"data\": {\"a\": \"${b}\"}}']}\n")
    assert check_text(text).problems == ()


def test_relative_write_files_path_is_written_from_root_with_a_warning() -> None:
    loaded = check_text("write_files:\n- path: etc/motd\n  content: hi\n", "c.yaml")
    assert loaded.problems == () and loaded.value["write_files"][0]["path"] == "/etc/motd"
    assert [w.render() for w in loaded.warnings] == [
        "c.yaml:2: warning: write_files[0].path: relative path 'etc/motd' is written as '/etc/motd' (as k3OS does)"
        "\nhint: write '/etc/motd'"]


@pytest.mark.parametrize(("text", "expected"), [
    ("k3os: {k3s_args: [server, --no-deploy=traefik]}",
     "1: warning: k3os.k3s_args[1]: k3s removed --no-deploy in v1.26 (this image has v1.34.2+k3s1): k3s will not "
     "start"),
    ("k3os: {k3s_args: [server, --docker]}",
     "1: warning: k3os.k3s_args[1]: k3s removed --docker in v1.24 (this image has v1.34.2+k3s1): k3s will not start"),
    ("k3os: {k3s_args: [server, --disable traefik]}",
     "1: warning: k3os.k3s_args[1]: '--disable traefik' is one argument to k3s, space and all, not two"),
    ("k3os: {k3s_args: [server, cluster-init]}",
     "1: warning: k3os.k3s_args[1]: 'cluster-init' is not a flag to k3s without its dashes"),
    ("k3os: {k3s_args: [server, '--node-label=a=b --flannel-backend=none']}",
     "1: warning: k3os.k3s_args[1]: '--node-label=a=b --flannel-backend=none' holds two flags in one argument: k3s "
     "reads '--node-label=a=b' with the rest as its value"),
    ("k3os: {k3s_args: [--disable=traefik, server]}",
     "1: warning: k3os.k3s_args[1]: 'server' is a k3s subcommand only as the first item; here it is an argument"),
    ("k3os: {k3s_args: [agent]}",
     "1: warning: k3os.k3s_args[0]: k3s runs as an agent, but there is no server_url to join"),
    ("ssh_authorized_keys: ['http://keys.example/ops.keys']",
     "1: warning: ssh_authorized_keys[0]: http://keys.example/ops.keys is fetched over plain http: anyone between "
     "the node and the server can add a key that logs in"),
    ("users: [{name: bob, ssh_authorized_keys: ['http://k.example/bob']}]",
     "1: warning: users[0].ssh_authorized_keys[0]: http://k.example/bob is fetched over plain http: anyone between "
     "the node and the server can add a key that logs in"),
    ("write_files: [{path: /etc/connman/main.conf}]",
     "1: warning: write_files[0].path: nothing on Basalt reads /etc/connman/main.conf"),
    ("write_files: [{path: /etc/ssh/sshd_config}]",
     "1: warning: write_files[0].path: nothing on Basalt reads /etc/ssh/sshd_config"),
])
def test_warnings_for_what_a_node_would_break_on(text: str, expected: str) -> None:
    from agent.config.validate import check
    from agent.config.yamlsource import loads
    loaded = check(loads(text, "c.yaml"), k3s_version="v1.34.2+k3s1")  # the x86_64-k3s image's release
    assert loaded.problems == ()
    assert [w.render().splitlines()[0] for w in loaded.warnings] == [f"c.yaml:{expected}"]


def test_removed_flags_are_fine_on_an_old_k3s() -> None:
    from agent.config.validate import check
    from agent.config.yamlsource import loads
    doc = loads("k3os: {k3s_args: [server, --no-deploy=traefik]}\n", "c.yaml")
    assert check(doc, k3s_version="v1.21.5+k3s2").warnings == ()


@pytest.mark.parametrize(("text", "hint"), [
    ("ntp: {servers: [a]}", "cloud-init's 'ntp' is not supported by Basalt: Basalt's equivalent is "
                            "'basalt.ntp_servers' (a list of NTP servers)"),
    ("resolv_conf: {nameservers: [1.1.1.1]}", "cloud-init's 'resolv_conf' is not supported by Basalt: Basalt's "
                                              "equivalent is 'basalt.dns_nameservers' (a list of addresses)"),
    ("users: [{name: a, passwd: x}]", "did you mean 'password'?"),
    # never "move it under basalt:" where it would mean something else there
    ("ssh: {emit_keys_to_console: false}", "cloud-init's 'ssh' is not supported by Basalt: cloud-init's SSH "
                                           "settings are not Basalt's: 'basalt.ssh' configures the SSH server "
                                           "(enabled, port, password_authentication)"),
    ("datasource: {Ec2: {timeout: 5}}", "cloud-init's 'datasource' is not supported by Basalt: cloud-init's "
                                        "per-datasource settings are not Basalt's: 'basalt.data_sources' lists "
                                        "which datasources to read"),
    ("labels: [a]", "'basalt.labels' is something else (see docs/config.md): not supported at the top level"),
    # where it means the same, it is said
    ("password: x", "'password' belongs under 'basalt:' (or 'k3os:')"),
    ("data_sources: [aws]", "'data_sources' belongs under 'basalt:' (or 'k3os:')"),
])
def test_hints_name_basalts_equivalent(text: str, hint: str) -> None:
    (problem,) = check_text(text).problems
    assert problem.hint == hint


def test_host_validate_prints_warnings_and_exits_zero(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("hostname: edge\nk3os:\n  k3s_args: [server, --disable traefik]\n")
    proc = subprocess.run([sys.executable, "-m", "builder", "validate", str(config)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{config}: ok (site config)"
    assert proc.stderr.startswith(f"{config}:3: warning: k3os.k3s_args[1]: '--disable traefik' is one argument")


def test_the_schema_works_in_a_standard_validator_as_editors_use_it() -> None:
    """yaml-language-server and friends validate with a standard JSON Schema validator against the
    canonical spellings: the published schema must work there on its own (a relative $id)."""
    import json

    import jsonschema
    import yaml
    schema = json.loads((ROOT / "config/config.schema.json").read_text())
    assert schema["$id"] == "config.schema.json"
    validator = jsonschema.Draft202012Validator(schema)
    for example in sorted((ROOT / "config/examples").glob("*.yaml")):
        assert list(validator.iter_errors(yaml.safe_load(example.read_text()))) == [], example
    bad = sorted(e.message for e in validator.iter_errors({"hostname": "a", "bogus": 1, "k3os": {"token": 5}}))
    assert bad == ["5 is not of type 'string'", "Additional properties are not allowed ('bogus' was unexpected)"]
    docs = (ROOT / "docs/config.md").read_text()
    assert "# yaml-language-server: $schema=" in docs


# Injection: a field that reaches a line-based file (/etc/passwd, group, shadow, resolv.conf,
# ntpd.conf, wpa_supplicant.conf, /etc/environment, the kernel command line) cannot carry a line
# break, a ':' or a space into it; a pattern's '$' is the end of the value (not "before a final
# newline"). Each: (config, the exact problems).
INJECTIONS = [
    ('users:\n- name: bob\n  shell: "/bin/sh\\nevil::0:0::/:/bin/sh"\n',
     ["c.yaml:3: users[0].shell: '/bin/sh\\nevil::0:0::/:/bin/sh' is not valid here\nhint: an absolute path, "
      "e.g. /bin/sh"]),
    ('users:\n- name: bob\n  shell: "/bin/sh:x"\n',
     ["c.yaml:3: users[0].shell: '/bin/sh:x' is not valid here\nhint: an absolute path, e.g. /bin/sh"]),
    ('users:\n- name: bob\n  groups: ["wheel\\nevil:x:0:bob"]\n',
     ["c.yaml:3: users[0].groups[0]: 'wheel\\nevil:x:0:bob' is not valid here\nhint: a group name: lower-case "
      'letters, digits, _ and -; several as a list or "a, b"']),
    ('users:\n- name: bob\n  groups: "users,adm:x:0:"\n',
     ["c.yaml:3: users[0].groups[1]: 'adm:x:0:' is not valid here\nhint: a group name: lower-case "
      'letters, digits, _ and -; several as a list or "a, b"']),
    ('users:\n- name: bob\n  password: "$6$salt$hash:0:0::::::\\nevil::0:0::::::"\n',
     ["c.yaml:3: users[0].password: '<redacted>' is not valid here\nhint: a "
      "password on one line, or a crypt(3) hash ($6$..., $y$...: letters, digits and ./=,$ only)"]),
    ('hostname: "node1\\n"\n',
     ["c.yaml:1: hostname: 'node1\\n' is not valid here\nhint: a host name or FQDN: dot-separated labels of "
      "letters, digits and '-', at most 64 characters"]),
    ('k3os:\n  ntp_servers: ["pool.ntp.org\\nserver evil"]\n',
     ["c.yaml:2: k3os.ntp_servers[0]: 'pool.ntp.org\\nserver evil' is not valid here\nhint: a host name or an "
      "IP address"]),
    ('k3os:\n  dns_nameservers: ["1.1.1.1\\nnameserver 6.6.6.6"]\n',
     ["c.yaml:2: k3os.dns_nameservers[0]: '1.1.1.1\\nnameserver 6.6.6.6' is not valid here\nhint: an IPv4 or "
      "IPv6 address, e.g. 1.1.1.1"]),
    ('k3os:\n  environment: {"PATH=/tmp;x": y}\n',
     ["c.yaml:2: k3os.environment.PATH=/tmp;x: the key 'PATH=/tmp;x' is not valid here\nhint: a variable name: "
      "letters, digits and _, not starting with a digit"]),
    ('k3os:\n  labels: {"a b": x, ok: "v w"}\n',
     ["c.yaml:2: k3os.labels.a b: the key 'a b' is not valid here\nhint: a Kubernetes label key: [prefix/]name, "
      "letters, digits, - _ .",
      "c.yaml:2: k3os.labels.ok: 'v w' is not valid here\nhint: a Kubernetes label value: at most 63 letters, "
      "digits, - _ ., starting and ending with a letter or digit"]),
    ('k3os:\n  wifi: [{name: net, passphrase: "abcdefgh\\n}\\nnetwork={"}]\n',
     ["c.yaml:2: k3os.wifi[0].passphrase: '<redacted>' is not valid here\nhint: a WPA passphrase "
      "is 8 to 63 printable ASCII characters (or a 64-digit hex key); leave it out for an open network"]),
    ('k3os:\n  install: {tty: "ttyS0 init=/bin/sh"}\n',
     ["c.yaml:2: k3os.install.tty: 'ttyS0 init=/bin/sh' is not valid here\nhint: a console device and speed, "
      "e.g. ttyS0,115200"]),
    ('network:\n  interfaces:\n    eth0:\n      dns: ["1.1.1.1 x"]\n      vlan: {id: 5, link: "eth0;reboot"}\n'
     '      routes: [{to: "10.0.0.0/8\\n", via: "10.0.0.1"}]\n',
     ["c.yaml:4: network.interfaces.eth0.dns[0]: '1.1.1.1 x' is not valid here\nhint: an IPv4 or IPv6 address, "
      "e.g. 1.1.1.1",
      "c.yaml:5: network.interfaces.eth0.vlan.link: 'eth0;reboot' is not valid here\nhint: an interface name, "
      "e.g. eth0",
      "c.yaml:6: network.interfaces.eth0.routes[0].to: '10.0.0.0/8\\n' is not valid here\nhint: default, or an "
      "address with prefix length, e.g. 10.1.0.0/16"]),
]


@pytest.mark.parametrize(("text", "expected"), INJECTIONS)
def test_nothing_injects_a_line_or_a_field(text: str, expected: list[str]) -> None:
    assert [p.render() for p in check_text(text, "c.yaml").problems] == expected


@pytest.mark.parametrize(("text", "value"), [
    ('users:\n- name: bob\n  groups: "users, adm"\n', {"users": [{"name": "bob", "groups": ["users", "adm"]}]}),
    ('users:\n- name: bob\n  password: "$6$abc$def"\n', {"users": [{"name": "bob", "password": "$6$abc$def"}]}),
    ('users:\n- name: bob\n  password: ""\n', {"users": [{"name": "bob"}]}),  # k3OS: "" is not set
    ('k3os:\n  password: ""\n', {"k3os": {}}),
    ('k3os:\n  ntp_servers: [pool.ntp.org, 10.0.0.1, "fe80::1"]\n',
     {"k3os": {"ntp_servers": ["pool.ntp.org", "10.0.0.1", "fe80::1"]}}),
])
def test_what_people_write_is_read_as_cloud_init_and_k3os_read_it(text: str, value: dict[str, object]) -> None:
    loaded = check_text(text, "c.yaml")
    assert loaded.problems == () and loaded.value == value


def test_the_writers_refuse_a_field_that_would_add_a_line_even_past_the_schema() -> None:
    from agent.modules import plans
    with pytest.raises(ValueError, match="cannot be a field of 'bob'"):
        plans.colon_text([["bob", "x", "1000", "1000", "", "/home/bob", "/bin/sh\nevil::0:0::/:/bin/sh"]])
    with pytest.raises(ValueError, match="is not a variable name"):
        plans.plan_environment({"k3os": {"environment": {"A;B": "x"}}}, {})


@pytest.mark.parametrize(("text", "mode", "warning"), [
    ("write_files:\n- path: /a\n  permissions: 0644\n", 0o644,
     "c.yaml:3: warning: write_files[0].permissions: unquoted 0644 is read as the octal mode 0644 (as cloud-init "
     "writes 0644), not the number 420\nhint: quote it: '0644'"),
    ("write_files:\n- path: /a\n  permissions: 600\n", 0o600,
     "c.yaml:3: warning: write_files[0].permissions: unquoted 600 is read as the octal mode 600 (as cloud-init "
     "writes 0644), not the number 600\nhint: quote it: '600'"),
    ("write_files:\n- path: /a\n  permissions: '0640'\n", 0o640, None),
])
def test_an_unquoted_mode_is_the_octal_mode_it_looks_like_with_a_warning(text: str, mode: int,
                                                                         warning: str | None) -> None:
    """cloud-init's own documented form, permissions: 0644, was written as mode 0420."""
    from agent.modules.plans import plan_write_files
    loaded = check_text(text, "c.yaml")
    assert loaded.problems == ()
    assert [w.render() for w in loaded.warnings] == ([warning] if warning else [])
    assert plan_write_files(loaded.value, {})[0][3] == mode
