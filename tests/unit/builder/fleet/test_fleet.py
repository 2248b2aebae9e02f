"""The fleet inventory (builder/fleet/render.py): every site rendered from the template and validated,
each problem at its inventory line (and the template's); secrets never in what is printed or
written; ``fleet diff`` per site."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.fleet import render

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[3] / "data" / "fleet"
TOKEN = "K10-unit-token-90ab"
PSK = "correct-horse-battery"


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLEET_TEST_TOKEN", TOKEN)
    shutil.copytree(DATA, tmp_path / "inv")
    return tmp_path / "inv" / "sites.yaml"


def cli(*args: str, env_token: bool = True) -> subprocess.CompletedProcess[str]:
    import os
    env = {**os.environ, **({"FLEET_TEST_TOKEN": TOKEN} if env_token else {})}
    if not env_token:
        env.pop("FLEET_TEST_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "builder", "fleet", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parents[4])


def test_every_site_renders_with_its_defaults_and_secrets(inventory: Path) -> None:
    rendered = {r.site.name: r for r in render.render_all(inventory)}
    assert sorted(rendered) == ["default", "depot-1", "depot-2"]
    two = rendered["depot-2"]
    assert f"token: {TOKEN}" in two.text and f"passphrase: {PSK}" in two.text and "role: server" in two.text
    assert TOKEN not in two.shown and PSK not in two.shown
    assert "token: <secret:k3s_token>" in two.shown and "passphrase: <secret:wifi_psk>" in two.shown
    assert rendered["depot-1"].site.macs == ["52:54:00:00:0a:01"] and "role: agent" in rendered["depot-1"].text
    assert two.site.serials == ["10000000abcdef01"] and rendered["default"].text.startswith("hostname: unknown-node")


def test_render_writes_redacted_configs(inventory: Path, tmp_path: Path) -> None:
    proc = cli("render", str(inventory), "-o", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{inventory}: 3 site(s) rendered and valid, written to {tmp_path / 'r'}\n"
    written = {p.name: p.read_text() for p in (tmp_path / "r").iterdir()}
    assert sorted(written) == ["default.yaml", "depot-1.yaml", "depot-2.yaml"]
    assert not any(TOKEN in t or PSK in t for t in written.values())


def edit(inventory: Path, old: str, new: str) -> None:
    inventory.write_text(inventory.read_text().replace(old, new))


@pytest.mark.parametrize(("change", "expected"), [
    (("hostname: depot-2", "hostname: depot_2!"),
     ["{inv}:14: site 'depot-2': hostname: 'depot_2!' is not valid here (rendered line 1)",
      "hint: a host name or FQDN: dot-separated labels of letters, digits and '-', at most 64 characters"]),
    (("  hostname: depot-1\n", ""),
     ["{inv}:11: site 'depot-1': site.yaml.j2:1: 'hostname' is undefined",
      "hint: set the variable in the site or in defaults:, or fix the template"]),
    (("- name: depot-2", "- name: depot-1"),
     ["{inv}:14: sites.1.name: site 'depot-1' is listed twice (first on line 11)"]),
    (('macs: ["52:54:00:00:0a:01"]', 'macs: ["52:54:00:0a:01"]'),
     ["{inv}:13: sites.0.macs: site 'depot-1': macs is a list of MAC addresses",
      'hint: e.g. ["dc:a6:32:01:02:03"]']),
    (("wifi_psk: {file: wifi.txt}", "wifi_psk: hunter2"),
     ["{inv}:4: secrets.wifi_psk: a secret is {{env: VARIABLE}} or {{file: PATH}}", "hint: never the value itself"]),
    (("template: site.yaml.j2", "template: nope.j2"),
     ["{inv}:1: template: no such file: {dir}/nope.j2", "hint: the path is relative to the inventory"]),
])
def test_problems_are_reported_at_their_lines(inventory: Path, change: tuple[str, str], expected: list[str]) -> None:
    edit(inventory, *change)
    proc = cli("render", str(inventory))
    assert proc.returncode == 2 and proc.stdout == ""
    lines = [x.format(inv=inventory, dir=inventory.parent) for x in expected]
    body = proc.stderr.removeprefix("error: ").splitlines()
    assert body == lines, proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_site_is_checked_and_a_bad_secret_value_is_not_printed(inventory: Path) -> None:
    (inventory.parent / "wifi.txt").write_text("short\n")  # a WPA passphrase is 8 to 63 characters
    edit(inventory, "hostname: depot-1", "hostname: depot_1!")
    proc = cli("render", str(inventory))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: 2 problems:\n")
    assert f"{inventory}:11: site 'depot-1': hostname: 'depot_1!' is not valid here" in proc.stderr
    assert f"{inventory}:14: site 'depot-2': k3os.wifi[0].passphrase: a value made from a secret is not valid " \
        "here (the message is withheld" in proc.stderr
    assert "short" not in proc.stderr.replace("shorter", "") and TOKEN not in proc.stderr


def test_an_unset_secret_is_an_error_at_its_line(inventory: Path) -> None:
    proc = cli("render", str(inventory), env_token=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {inventory}:3: secrets.k3s_token: the environment variable FLEET_TEST_TOKEN is not set",
        "hint: export FLEET_TEST_TOKEN=... before the run"]


def test_diff_names_the_changed_sites_with_secrets_redacted(inventory: Path, tmp_path: Path) -> None:
    new = inventory.with_name("sites-new.yaml")
    new.write_text(inventory.read_text().replace("role: server", "role: agent").replace(
        "- name: depot-1\n  hostname: depot-1\n  macs: [\"52:54:00:00:0a:01\"]\n", ""))
    proc = cli("diff", str(inventory), str(new))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("removed: depot-1\nchanged: depot-2\n")
    assert "-    role: server\n+    role: agent\n" in out and "default" not in out
    assert TOKEN not in out and PSK not in out
    assert cli("diff", str(inventory), str(inventory)).stdout == "no site changed\n"


# Hostile templates: each must be refused as a template error at its line, and run nothing.
ESCAPES = [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "access to attribute '__class__' of 'str' object is unsafe"),
    ("{{ cycler.__init__.__globals__.os.system('touch PWNED') }}",
     "access to attribute '__init__' of 'type' object is unsafe"),
    ("{{ lipsum.__globals__['os'].system('touch PWNED') }}",
     "access to attribute '__globals__' of 'function' object is unsafe"),
    ("{{ secret.__globals__['__builtins__']['__import__']('os').system('touch PWNED') }}",
     "access to attribute '__globals__' of 'function' object is unsafe"),
    ("{{ self._TemplateReference__context.environment }}", "access to attribute"),
    ("{% set x = [] %}{{ x.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
]


@pytest.mark.parametrize(("line", "message"), ESCAPES)
def test_a_template_cannot_run_code(inventory: Path, line: str, message: str) -> None:
    template = inventory.with_name("site.yaml.j2")
    template.write_text(template.read_text() + line + "\n")
    proc = cli("render", str(inventory))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "site 'depot-1': site.yaml.j2:12: " in proc.stderr and message in proc.stderr, proc.stderr
    assert "hint: a template reads its variables and nothing else (it runs sandboxed)" in proc.stderr
    assert not (inventory.parent / "PWNED").exists()
    assert not (Path(__file__).resolve().parents[4] / "PWNED").exists()  # the CLI's working directory


# Hostile site variables: (the variable's YAML in the inventory, what the config must not get).
INJECTIONS = [
    ('"depot-1\\nrun_cmd: [touch /tmp/pwned]"', "run_cmd"),
    ('"depot-1\\nssh_authorized_keys: [ssh-ed25519 AAAA attacker]"', "ssh_authorized_keys"),
    ('"depot-1 # comment"', None),
    ("'x\", run_cmd: [\"id\"], y: \"'", "run_cmd"),
    ('"[a, b]"', None),
    ('{run_cmd: [id]}', "run_cmd"),
    ('"&anchor x"', None),
    ('"- item"', None),
]


@pytest.mark.parametrize(("value", "key"), INJECTIONS)
def test_a_site_variable_is_a_value_never_yaml(inventory: Path, value: str, key: str | None) -> None:
    edit(inventory, "  hostname: depot-1\n", f"  hostname: {value}\n")
    inv = render.load(inventory)
    rendered, problems = render.render(inv)
    import yaml
    got = yaml.safe_load(next((r.text for r in rendered if r.site.name == "depot-1"), "{}")) or {}
    assert key is None or key not in got
    one = [p.render() for p in problems if "site 'depot-1'" in p.message]
    # the value arrives whole, as the hostname, and is refused there (no host name has these characters)
    assert one and all(": hostname: " in p for p in one), one
    assert all("run_cmd" not in p.split("hostname: ")[0] for p in one)


def test_values_that_need_no_quotes_are_written_as_they_are() -> None:
    for value, written in (("depot-7", "depot-7"), ("https://10.0.0.1:6443", "https://10.0.0.1:6443"),
                           ("a b", '"a b"'), ("x\ny", '"x\\ny"'), (7, "7"), (True, "true"), (None, "null"),
                           (["a", "b: c"], '["a", "b: c"]'), ("#x", '"#x"'), ("-x", '"-x"'),
                           (render.Raw("<secret:t>"), "<secret:t>"),
                           # strings YAML would read as something else stay strings
                           ("yes", '"yes"'), ("0644", '"0644"'), ("1.5", '"1.5"'), ("null", '"null"'), ("~", '"~"')):
        assert render.yaml_value(value) == written, value


def test_one_site_that_renders_to_broken_yaml_is_its_problem_and_the_rest_are_checked(inventory: Path) -> None:
    template = inventory.with_name("site.yaml.j2")
    template.write_text(template.read_text() + "{% if name == 'depot-1' %}\nbad: [unclosed\n{% endif %}\n")
    (inventory.parent / "wifi.txt").write_text("short\n")
    proc = cli("render", str(inventory))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[:3] == [
        "error: 2 problems:",
        f"{inventory}:11: site 'depot-1': YAML syntax error: expected ',' or ']', but got '<stream end>' "
        "(rendered line 11)",
        "hint: while parsing a flow sequence started on line 9; is it closed?"]
    assert f"{inventory}:14: site 'depot-2': k3os.wifi[0].passphrase: " in proc.stderr



# A secret that reaches a message in a form the raw value is not: each message is withheld, never shown.
DISGUISES = [
    ("hostname: {{ secret('wifi_psk')|upper }}\n", "hostname"),  # upper-cased into a host name (invalid: '_')
    ("hostname: \"{{ secret('wifi_psk') }}\\\\n\"\n", "hostname"),  # escaped by repr() in the message
    ("basalt: {labels: {x: '{{ secret(\"wifi_psk\")|reverse }} !'}}\n", "basalt.labels.x"),
]


@pytest.mark.parametrize(("line", "path"), DISGUISES)
def test_a_secret_in_disguise_never_reaches_a_message(inventory: Path, line: str, path: str) -> None:
    (inventory.parent / "wifi.txt").write_text("Se_cret.Psk-Value\n")
    template = inventory.with_name("site.yaml.j2")
    template.write_text(template.read_text().replace("hostname: {{ hostname }}\n", "") + line)
    proc = cli("render", str(inventory))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    text = proc.stderr.lower()
    for form in ("se_cret.psk-value", "se_cret.psk-value"[::-1], "se_cret"):
        assert form not in text, proc.stderr
    assert f"{path}: a value made from a secret is not valid here (the message is withheld" in proc.stderr or \
        f"{path}: '<secret:wifi_psk>" in proc.stderr, proc.stderr  # withheld, or in the placeholder's words
