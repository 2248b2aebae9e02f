"""Site config loading: k3OS compatibility, name forgiveness, exact errors, fuzzing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config.section import section
from agent.config.validate import LoadedConfig, check_text, load_config
from agent.errors import BasaltError

ROOT = Path(__file__).resolve().parents[4]
CORPUS = ROOT.parent / "shared" / "testdata" / "k3os-configs"
DATA = ROOT / "tests" / "data"

# Real k3OS configs from public repositories (../shared/testdata/k3os-configs, SOURCES.md lists the
# known defects). None: loads with no problem. A list: the exact "line: path: message" of each problem and
# each warning ("line: warning: path: message"), by line. A string: the YAML syntax (or structure) error.
EXPECTED: dict[str, list[str] | str | None] = {
    "01": None,
    "02": [
        "2: ssh_authorized_keys[0]: '${tf_ssh_pubkey}' looks like an unfilled template placeholder",
        # shown with the problems now: every rule runs in the one run
        "4: warning: write_files[0].path: nothing on Basalt reads /var/lib/connman/default.config",
        "11: hostname: '${tf_appliance_hostname}' looks like an unfilled template placeholder",
        "20: k3os.environment.K3S_TOKEN: '${tf_cluster_token}' looks like an unfilled template placeholder",
        "22: k3os.labels.region: '${tf_label_region}' looks like an unfilled template placeholder",
        "23: k3os.labels.zone: '${tf_label_zone}' looks like an unfilled template placeholder",
    ],
    "03": "12: YAML syntax error: found character '%' that cannot start any token",
    "04": '2: ssh_authorized_keys[0]: mapping keys must be plain scalars',
    "05": "2: YAML syntax error: expected alphabetic or numeric character, but found '{'",
    "06": None,
    "07": [
        "10: warning: write_files[0].path: relative path 'etc/conf.d/qemu-guest-agent' is written as "
        "'/etc/conf.d/qemu-guest-agent' (as k3OS does)",
        '10: warning: write_files[0].path: nothing on Basalt reads /etc/conf.d/qemu-guest-agent',
    ],
    "08": [
        '3: ssh_authorized_keys[0]: expected string, got null',
        "19: write_files[0].enconding: unknown key 'enconding'",
    ],
    "09": [
        '3: ssh_authorized_keys[0]: expected string, got null',
        '5: k3os.token: expected string, got object',
        "10: k3os.server_url: 'https://##masterip##:6443' looks like an unfilled template placeholder",
        "19: write_files[0].enconding: unknown key 'enconding'",
    ],
    "10": [
        "1: hostname: '$hostname' looks like an unfilled template placeholder",
        "2: write_files[0]: '$write_files' looks like an unfilled template placeholder",
        "21: k3os.password: '$k3os_password' looks like an unfilled template placeholder",
        "22: k3os.token: '$k3os_token' looks like an unfilled template placeholder",
        "23: k3os.server_url: '$k3os_server_url' looks like an unfilled template placeholder",
        "24: k3os.k3s_args[0]: '$k3os_args_k3s_args' looks like an unfilled template placeholder",
    ],
    "11": [
        "8: k3os.hostname: unknown key 'hostname'",
    ],
    "12": [
        '36: warning: write_files[1].path: nothing on Basalt reads /etc/ssh/sshd_config',
    ],
    "13": None,
    "14": [
        '14: warning: write_files[0].path: nothing on Basalt reads /etc/conf.d/qemu-guest-agent',
    ],
    "15": [
        '29: warning: k3os.k3s_args[1]: k3s removed --no-deploy in v1.26: k3s will not start',
    ],
    "16": [
        '17: warning: k3os.k3s_args[0]: k3s runs as an agent, but there is no server_url to join',
    ],
    "17": [
        "5: k3os.server_url: 'https://<public-ip>:6443' looks like an unfilled template placeholder",
        "8: sshAuthorizedKeys[0]: 'github:<yourgithubname>' looks like an unfilled template placeholder",
    ],
    "18": [
        '4: warning: write_files[0].path: nothing on Basalt reads /var/lib/connman/default.config',
    ],
    "19": [
        '59: warning: write_files[5].path: nothing on Basalt reads /etc/conf.d/syslog',
        '69: warning: write_files[7].path: nothing on Basalt reads /etc/init.d/k3s-logger',
        '97: warning: k3os.k3s_args[0]: k3s runs as an agent, but there is no server_url to join',
    ],
    "20": None,
    "21": [
        '10: warning: write_files[0].path: nothing on Basalt reads /var/lib/connman/default.config',
    ],
    "22": [
        '31: warning: k3os.k3s_args[1]: k3s removed --no-deploy in v1.26: k3s will not start',
    ],
    "23": None,
    "24": "3: YAML syntax error: found character '%' that cannot start any token",
    "25": [
        "21: k3os.password: '<redacted>' looks like an unfilled template placeholder",
        "23: k3os.token: '<redacted>' looks like an unfilled template placeholder",
    ],
    "26": None,
    "27": [
        '3: warning: write_files[0].path: nothing on Basalt reads /var/lib/connman/default.config',
    ],
    "28": [
        '6: warning: k3os.k3s_args[1]: k3s removed --no-deploy in v1.26: k3s will not start',
    ],
    "29": None,
    "30": [
        "7: k3os: duplicate key 'k3os'",
    ],
}


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        pytest.skip(f"{CORPUS} is not present (shared/ sits beside the repository in CI)")
    return sorted(CORPUS.glob("*.yaml"))


def test_corpus_is_complete() -> None:
    assert sorted(p.name[:2] for p in corpus_files()) == sorted(EXPECTED)


@pytest.mark.parametrize("number", sorted(EXPECTED))
def test_real_k3os_configs(number: str) -> None:
    path = next(p for p in corpus_files() if p.name.startswith(number))
    expected = EXPECTED[number]
    if isinstance(expected, str):
        with pytest.raises(BasaltError) as exc:
            load_config(str(path))
        assert exc.value.problems[0].render().splitlines()[0] == f"{path}:{expected}"
        return
    assert rendered(load_config(str(path))) == [f"{path}:{e}" for e in expected or []]


def rendered(loaded: LoadedConfig) -> list[str]:
    """Each problem's and warning's first line, by line (a warning after a problem on its line)."""
    return [p.render().splitlines()[0] for p in sorted((*loaded.problems, *loaded.warnings),
                                                        key=lambda p: (p.line or 0, p.warning))]


def test_hints_explain_the_fix() -> None:
    hints = {p.path: p.hint for p in load_config(str(next(CORPUS.glob("08-*")))).problems} if CORPUS.is_dir() \
        else pytest.skip("corpus missing")
    assert hints["write_files[0].enconding"] == "did you mean 'encoding'?"
    eleven = load_config(str(next(CORPUS.glob("11-*")))).problems[0]
    assert eleven.hint == "'hostname' is a top-level key: move it out of 'k3os:'"
    two = load_config(str(next(CORPUS.glob("02-*")))).problems[0]
    assert two.hint == "render the template first"
    with pytest.raises(BasaltError) as exc:
        load_config(str(next(CORPUS.glob("24-*"))))
    assert "unrendered template" in str(exc.value.problems[0].hint)


def test_every_k3os_key_form_validates_unchanged() -> None:
    loaded = load_config(str(DATA / "k3os-key-forms.yaml"))
    assert loaded.problems == ()
    s = section(loaded.value)
    assert s["sysctl"]["kernel.printk"] == "4 4 1 7"
    assert loaded.value["write_files"][2] == {"content": "f0VMRgIBAQAAAAAAAAAAAAIAPgABAAAA", "path": "/opt/bin/blob",
                                              "permissions": "0555", "encoding": "b64"}  # !!binary


@pytest.mark.parametrize(("text", "expected"), [
    # camelCase and singular/plural spellings k3OS accepted
    ("sshAuthorizedKeys: [github:a]", {"ssh_authorized_keys": ["github:a"]}),
    ("k3os: {datasource: hetzner}", {"k3os": {"data_sources": ["hetzner"]}}),
    ("k3os: {dataSources: [aws]}", {"k3os": {"data_sources": ["aws"]}}),
    ("k3os: {dns_nameserver: 1.1.1.1}", {"k3os": {"dns_nameservers": ["1.1.1.1"]}}),
    ("k3os: {label: {a: b}}", {"k3os": {"labels": {"a": "b"}}}),
    ("k3os: {taint: 'k=v:NoSchedule'}", {"k3os": {"taints": ["k=v:NoSchedule"]}}),
    ("k3os: {module: kvm}", {"k3os": {"modules": ["kvm"]}}),
    ("k3os: {sysctls: {vm.swappiness: 10}}", {"k3os": {"sysctl": {"vm.swappiness": "10"}}}),
    ("k3os: {k3sArgs: server}", {"k3os": {"k3s_args": ["server"]}}),
    ("k3os: {serverUrl: 'https://s:6443', token: K10x}", {"k3os": {"server_url": "https://s:6443", "token": "K10x"}}),
    # wifi's pass/password mean passphrase
    ("k3os: {wifi: [{name: n, pass: p4ssphrase}]}", {"k3os": {"wifi": [{"name": "n", "passphrase": "p4ssphrase"}]}}),
    ("k3os: {wifi: {name: n, password: p4ssphrase}}", {"k3os": {"wifi": [{"name": "n", "passphrase": "p4ssphrase"}]}}),
    # "true" strings become booleans; scalars become strings where strings are expected
    ("k3os: {install: {silent: 'true', power_off: 'false'}}",
     {"k3os": {"install": {"silent": True, "power_off": False}}}),
    ("k3os: {labels: {upgrade: true}, token: 12345}", {"k3os": {"labels": {"upgrade": "true"}, "token": "12345"}}),
    # null is "not set", as in k3OS
    ("hostname: h\nrun_cmd:\nk3os: {labels: , taints: }", {"hostname": "h", "k3os": {}}),
    ("basalt: {password: x}", {"basalt": {"password": "x"}}),
])
def test_name_forgiveness(text: str, expected: dict[str, object]) -> None:
    loaded = check_text(text)
    assert loaded.problems == ()
    assert loaded.value == expected


def test_basalt_section_wins_over_k3os() -> None:
    loaded = check_text("k3os: {password: old, token: t}\nbasalt: {password: new}\n")
    assert section(loaded.value) == {"password": "new", "token": "t"}


def test_errors_keep_the_users_spelling_and_line() -> None:
    loaded = check_text("# site\nk3os:\n  dataSources: [floppy]\n  taints: ['bad']\n", "site.yaml")
    assert [p.render().splitlines()[0] for p in loaded.problems] == [
        "site.yaml:3: k3os.dataSources[0]: 'floppy' is not one of ['aws', 'cdrom', 'digitalocean', 'gcp', 'hetzner', "
        "'openstack', 'packet', 'scaleway', 'vultr', 'nocloud']",
        "site.yaml:4: k3os.taints[0]: 'bad' is not valid here"]


def test_key_at_wrong_level_says_where_it_belongs() -> None:
    problem = check_text("password: x\n").problems[0]
    assert problem.render() == "<config>:1: password: unknown key 'password'\n" \
                               "hint: 'password' belongs under 'basalt:' (or 'k3os:')"


def test_empty_and_non_mapping_documents() -> None:
    assert check_text("").value == {} and check_text("").problems == ()
    assert check_text("- a\n").problems[0].message == "config.yaml must be a mapping of keys"


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
keys = st.sampled_from(["hostname", "k3os", "basalt", "write_files", "ssh_authorized_keys", "run_cmd", "users",
                        "network", "k3s", "timezone", "sshAuthorizedKeys", "bogus"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, yaml_values, max_size=6))
def test_fuzz_structured_input_never_crashes(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc)
    loaded = check_text(text)
    for p in loaded.problems:  # every problem is located and renderable
        assert p.render().startswith("<config>:")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_gives_a_clean_error_or_a_result(text: str) -> None:
    try:
        loaded = check_text(text)
    except BasaltError as exc:
        assert exc.problems and exc.render()
        return
    assert isinstance(loaded.value, dict)


LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{x}: &{x} [{', '.join([f'*{p}'] * 10)}]\n" for p, x in zip("abcdefgh", "bcdefghi", strict=True))  # 10^9 values

# Bombs and the unbounded: (the text, the refusal). Each answered in under a second and 100 MB.
BOMBS = [
    (LAUGHS, "the document expands to more than 20000 values or 100 levels (aliases used over and over?)"),
    ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested more than 100 levels deep"),
    ("a: " + "{b: " * 20_000 + "1" + "}" * 20_000 + "\n", "nested more than 100 levels deep"),
    ("".join(f"{'  ' * i}k{i}:\n" for i in range(300)) + "  " * 300 + "v\n",
     "the document expands to more than 20000 values or 100 levels"),
    ("hostname: " + "a" * (1 << 20) + "\n", "characters: larger than 1024 KiB, more than any config or definition"),
    ("write_files:\n- path: /x\n  encoding: gz+b64\n  content: "
     + __import__("base64").b64encode(__import__("gzip").compress(bytes(64 << 20), mtime=0)).decode() + "\n",
     "content does not decode as gz+b64: it decompresses to more than 16 MiB"),
]


@pytest.mark.parametrize(("text", "message"), BOMBS, ids=["aliases", "flow lists", "flow maps", "block maps",
                                                          "a large file", "gzip"])
def test_a_bomb_is_refused_within_a_second_and_100_mb(text: str, message: str) -> None:
    import time
    import tracemalloc
    started = time.process_time()  # CPU time: the work itself, whatever else the machine runs
    try:
        found = [p.render() for p in check_text(text, "c.yaml").problems]
    except BasaltError as exc:
        found = [exc.render()]
    assert time.process_time() - started < 1.0
    assert any(message in f for f in found), found
    tracemalloc.start()
    try:
        check_text(text, "c.yaml")
    except BasaltError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 << 20, peak


PEAK = ("import sys\nfrom builder.cli import main\nsys.argv[0] = 'builder'\ncode = main(sys.argv[1:])\n"
        "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')))\nsys.exit(code)\n")


def test_inv_validate_answers_every_bomb_within_a_second_and_100_mb(tmp_path: Path) -> None:
    """The command itself (``inv validate FILE`` runs ``python -m builder validate FILE``), interpreter
    start included: a refusal with its message, a failing exit (1: problems found, 2: not read at
    all), no traceback, under a second of CPU and
    100 MB resident, for each bomb (its CPU time from wait4, its peak from its own VmHWM)."""
    import os
    import subprocess
    import sys
    import threading
    root = Path(__file__).resolve().parents[4]
    for n, (text, message) in enumerate(BOMBS):
        path, said = tmp_path / f"bomb{n}.yaml", tmp_path / f"bomb{n}.out"
        path.write_text(text)
        with open(said, "w") as out:  # builder/__main__.py, and then its own peak (the child's ru_maxrss
            # would count the pytest worker it was spawned from: Linux keeps the pre-exec peak)
            proc = subprocess.Popen([sys.executable, "-c", PEAK, "validate", str(path)], cwd=root,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(60, proc.kill)  # bounded; reaped here by wait4, not by Popen
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits for it again
        text_out = said.read_text()
        assert proc.returncode in (1, 2), (n, proc.returncode, text_out[-500:])
        assert message in text_out and "Traceback" not in text_out, (n, text_out[-500:])
        assert usage.ru_utime + usage.ru_stime < 1.0, (n, usage.ru_utime, usage.ru_stime)
        peak_kib = int(text_out.rsplit("VmHWM:", 1)[1].split()[0])
        assert peak_kib < 100 << 10, (n, peak_kib)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 14), st.integers(2, 12), st.sampled_from(["flow", "block"]), st.integers(0, 28))
def test_fuzz_alias_and_gzip_bombs_are_answered_within_a_second(width: int, depth: int, style: str,
                                                                zeros_log2: int) -> None:
    """Alias documents of any width and depth (width**depth values), and gzip payloads of 1 B to
    256 MiB of zeros: each answered (a result or a refusal) in under a second."""
    import base64
    import gzip
    import time
    levels = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    for d in range(1, depth):
        refs = ", ".join([f"*l{d - 1}"] * width)
        levels.append(f"l{d}: &l{d} [{refs}]" if style == "flow" else
                      f"l{d}: &l{d}\n" + "".join(f"  - *l{d - 1}\n" for _ in range(width)).rstrip("\n"))
    payload = base64.b64encode(gzip.compress(bytes(1 << zeros_log2), mtime=0)).decode()
    import gc
    check_text("unknown_key: 1\n", "warm.yaml")  # what a first refusal imports (difflib) is not the work
    for text in ("\n".join(levels) + "\n",
                 f"write_files:\n- path: /x\n  encoding: gz+b64\n  content: {payload}\n"):
        # CPU time: the work itself, whatever else the machine runs; the objects earlier tests left
        # in this worker are frozen out of the collector, so a full collection of them is not charged
        gc.collect()
        gc.freeze()
        started = time.process_time()
        try:
            check_text(text, "c.yaml")
        except BasaltError as exc:
            assert exc.render().startswith("c.yaml")
        finally:
            used = time.process_time() - started
            gc.unfreeze()
        assert used < 1.0, (width, depth, style, zeros_log2)


def test_a_merge_key_may_be_overridden_and_a_repeated_key_is_still_a_duplicate() -> None:
    text = ("users:\n- &bob {name: bob, shell: /bin/sh, groups: [users]}\n- <<: *bob\n  name: alice\n"
            "  shell: /bin/bash\n")
    loaded = check_text(text, "c.yaml")
    assert loaded.problems == ()
    assert loaded.value["users"][1] == {"name": "alice", "shell": "/bin/bash", "groups": ["users"]}
    again = check_text("users:\n- &bob {name: bob}\n- <<: *bob\n  name: alice\n  name: carol\n", "c.yaml")
    assert [p.render().splitlines()[0] for p in again.problems] == ["c.yaml:5: users[1].name: duplicate key 'name'"]


def test_docs_name_every_config_key() -> None:
    """docs/config.md documents every key the schema accepts."""
    import json
    schema = json.loads((ROOT / "config/config.schema.json").read_text())
    docs = (ROOT / "docs/config.md").read_text()

    missing = [f for f in schema_fields(schema) if f"`{f}`" not in docs]
    assert missing == [], missing


def schema_fields(schema: dict) -> list[str]:  # type: ignore[type-arg]
    """Every documented key path: section keys bare, list items as `[]`, map values as `*`."""
    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].split("/")[-1]]
        return node

    def fields(node: dict, prefix: str = "") -> list[str]:
        node = resolve(node)
        out = []
        for key, sub in node.get("properties", {}).items():
            out.append(prefix + key)
            sub = resolve(sub)
            if key in ("k3os", "basalt"):
                out += fields(sub, "")
            elif sub.get("type") == "object" and "properties" in sub:
                out += fields(sub, prefix + key + ".")
            elif sub.get("type") == "array" and isinstance(sub.get("items"), dict) and \
                    "properties" in resolve(sub["items"]):
                out += fields(sub["items"], prefix + key + "[].")
            elif sub.get("type") == "object" and isinstance(sub.get("additionalProperties"), dict) and \
                    "properties" in sub["additionalProperties"]:
                out += fields(sub["additionalProperties"], prefix + key + ".*.")
        return out
    return fields(schema)


def test_every_key_example_validates_and_names_every_key() -> None:
    from agent.config.validate import load_config, load_schema
    loaded = load_config(str(ROOT / "config/examples/every-key.yaml"))
    assert loaded.problems == ()
    value = loaded.value
    sections = {**value.get("k3os", {}), **value.get("basalt", {})}

    def present(node: object, parts: list[str]) -> bool:
        if not parts:
            return True
        head, rest = parts[0], parts[1:]
        if head == "*" and isinstance(node, dict):
            return any(present(v, rest) for v in node.values())
        if head.endswith("[]"):
            items = node.get(head[:-2]) if isinstance(node, dict) else None
            return isinstance(items, list) and any(present(i, rest) for i in items)
        return isinstance(node, dict) and head in node and present(node[head], rest)
    top = set(load_schema()["properties"])
    missing = [f for f in schema_fields(load_schema())
               if not present(value if f.split(".")[0].split("[")[0] in top else sections,
                              f.replace("[].", "[] ").replace(".", " ").split())]
    assert missing == [], missing


def test_every_rule_is_in_the_one_list_and_runs_after_the_schema() -> None:
    import inspect

    from agent.config import checks
    takes_checked = {name for name, fn in vars(checks).items() if inspect.isfunction(fn)
                     and fn.__module__ == checks.__name__ and not name.startswith("_")
                     and list(inspect.signature(fn).parameters) == ["c"]}
    assert takes_checked == {rule.check.__name__ for rule in checks.RULES}
    assert len({rule.name for rule in checks.RULES}) == len(checks.RULES)
    # one run shows everything: an unknown key, a placeholder and the missing token (a cross-key rule)
    # all at once, problems hidden behind no other problem
    loaded = check_text("hostname: ${HOST}\nbogus: 1\nk3os:\n  server_url: https://a:6443\n")
    assert [(p.path, p.message.split(":")[0]) for p in loaded.problems] == [
        ("hostname", "'${HOST}' looks like an unfilled template placeholder"), ("bogus", "unknown key 'bogus'"),
        ("k3os.server_url", "an agent joining a server needs a token")]
    # a value of the wrong type is the schema's to report; the rules neither crash on it nor repeat it
    loaded = check_text("k3os:\n  k3s_args: 7\n  server_url: [x]\napps: [{name: 7}]\nwrite_files: [{path: 5}]\n")
    assert loaded.problems and all("Traceback" not in p.render() for p in loaded.problems)
    assert len({(p.line, p.path, p.message) for p in loaded.problems}) == len(loaded.problems)
    loaded = check_text("hostname: edge\nk3os:\n  server_url: https://a:6443\n")
    assert [p.path for p in loaded.problems] == ["k3os.server_url"]
