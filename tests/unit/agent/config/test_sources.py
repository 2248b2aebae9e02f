"""Config sources and merge order: kernel command line parsing, later-wins merging with
provenance, invalid sources left out whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import bootargs, sources
from tests.conftest import ROOT

TOP = {"hostname", "ssh_authorized_keys", "write_files", "run_cmd"}


@pytest.mark.parametrize(("cmdline", "expected"), [
    ("quiet basalt.label=BASALT basalt.mode=live basalt.debug", {}),
    ("basalt.hostname=n1", {"hostname": "n1"}),
    ("k3os.password=x basalt.token=t", {"k3os": {"password": "x"}, "basalt": {"token": "t"}}),
    ("k3os.install.silent k3os.install.device=/dev/vda",
     {"k3os": {"install": {"silent": "true", "device": "/dev/vda"}}}),
    ("k3os.ssh_authorized_keys=github:a k3os.ssh_authorized_keys=github:b",
     {"ssh_authorized_keys": ["github:a", "github:b"]}),
    ("k3os.labels.zone=a k3os.labels.rack=7", {"k3os": {"labels": {"zone": "a", "rack": "7"}}}),
    ("basalt. basalt.=x k3os..a=1 other.hostname=x", {}),
])
def test_cmdline_config(cmdline: str, expected: dict[str, object]) -> None:
    assert sources.cmdline_config(cmdline, TOP) == expected


@pytest.mark.parametrize(("cmdline", "baked", "expected"), [
    ("basalt.label=X basalt.mode=live", False, False),
    ("basalt.hostname=a", False, True),
    ("k3os.password=x", False, True),
    ("quiet", True, True),
])
def test_has_config(tmp_path: Path, cmdline: str, baked: bool, expected: bool) -> None:
    path = tmp_path / "config.yaml"
    if baked:
        path.write_text("hostname: a\n")
    assert bootargs.has_config(cmdline, str(path)) is expected


def test_merge_maps_deeply_lists_replace_and_remember_sources() -> None:
    merged = sources.Merged()
    merged.add("baked", {"hostname": "a", "k3os": {"labels": {"x": "1", "y": "2"}, "ntp_servers": ["n1", "n2"]}})
    merged.add("cmdline", {"k3os": {"labels": {"y": "3"}, "ntp_servers": ["n3"]}})
    merged.add("state", {"hostname": "b"})
    assert merged.value == {"hostname": "b", "k3os": {"labels": {"x": "1", "y": "3"}, "ntp_servers": ["n3"]}}
    assert merged.origin == {("hostname",): "state", ("k3os", "labels", "x"): "baked",
                             ("k3os", "labels", "y"): "cmdline", ("k3os", "ntp_servers"): "cmdline"}
    assert sources.show(merged).splitlines() == [
        "hostname = 'b'    # state", "k3os.labels.x = '1'    # baked", "k3os.labels.y = '3'    # cmdline",
        "k3os.ntp_servers = ['n3']    # cmdline"]


def test_gather_order_and_invalid_sources_left_out(tmp_path: Path) -> None:
    baked = tmp_path / "baked.yaml"
    baked.write_text("hostname: baked\nk3os: {password: p, token: t}\n")
    state = tmp_path / "state.yaml"
    state.write_text("k3os: {token: from-state}\n")
    confd = tmp_path / "config.d"
    confd.mkdir()
    (confd / "10-good.yaml").write_text("k3os: {labels: {zone: a}}\n")
    (confd / "20-bad.yaml").write_text("k3os:\n  taints: [nope]\n  labels: {zone: b}\n")
    (confd / "30-broken.yaml").write_text("k3os: [unclosed\n")
    merged = sources.gather("quiet basalt.hostname=cmd k3os.password=cmdpw", str(baked), str(state), str(confd))
    assert merged.value == {"hostname": "cmd", "k3os": {"password": "cmdpw", "token": "from-state",
                                                        "labels": {"zone": "a"}}}
    assert merged.sources == [str(baked), "kernel command line", str(state), str(confd / "10-good.yaml")]
    rendered = [p.render().splitlines()[0] for p in merged.problems]
    assert rendered[0] == f"{confd / '20-bad.yaml'}:2: k3os.taints[0]: 'nope' is not valid here"
    assert rendered[1].startswith(f"{confd / '30-broken.yaml'}:")
    assert len(rendered) == 2


def test_invalid_command_line_is_left_out_and_reported(tmp_path: Path) -> None:
    baked = tmp_path / "baked.yaml"
    baked.write_text("hostname: good\n")
    merged = sources.gather("basalt.hostname=bad_name!", str(baked), str(tmp_path / "none"), str(tmp_path))
    assert merged.value == {"hostname": "good"}
    assert merged.problems[0].render().splitlines()[0] == \
        "kernel command line: hostname: 'bad_name!' is not valid here"


def test_every_boot_control_argument_the_boot_chain_writes_is_not_read_as_config() -> None:
    """A basalt.* argument that the boot menus or the initramfs set (basalt.trial=1 on a trial
    boot, basalt.slot=...) is boot control: read as a config key it would be refused as unknown,
    and the node would fall back to its last known-good config."""
    import re
    written = set()
    for path in [*(ROOT / "builder/templates").glob("*.j2"), *(ROOT / "builder/initramfs").rglob("*"),
                 *(ROOT / "agent").rglob("*.py"), *(ROOT / "builder").rglob("*.py")]:
        if path.is_file():
            written |= set(re.findall(r"basalt\.([a-z_]+)=", path.read_text(errors="replace")))
    config_keys = {"hostname", "datasource"}  # the documented config arguments of the examples
    assert written - config_keys <= bootargs.CONTROL, written - config_keys - bootargs.CONTROL
    assert "trial" in written
    assert not bootargs.has_config_args("quiet basalt.slot=b basalt.trial=1 panic=10")
    assert bootargs.has_config_args("basalt.hostname=x")


KNOWN_GOOD = '{"config": {"hostname": "good", "users": [{"name": "ops"}]}, "origin": [], "sources": ["baked"]}'


@pytest.mark.parametrize("encoding", ["[b64]", "{a: 1}", "[gz, b64]", "7", "true"])
def test_an_encoding_that_is_not_a_name_is_a_problem_and_the_node_keeps_its_known_good(
        tmp_path: Path, encoding: str) -> None:
    """It crashed the validator (a traceback), and at boot left the node with no config at all."""
    (tmp_path / "known-good.json").write_text(KNOWN_GOOD)
    for content in ("aGVsbG8=", "!!binary aGVsbG8="):
        (tmp_path / "state.yaml").write_text(f"write_files:\n- path: /x\n  content: {content}\n"
                                             f"  encoding: {encoding}\n")
        merged = sources.gather("", str(tmp_path / "none"), str(tmp_path / "state.yaml"), str(tmp_path / "d"),
                                datasource_dirs=(), known_good=str(tmp_path / "known-good.json"))
        (problem,) = merged.problems
        assert problem.render().startswith(f"{tmp_path / 'state.yaml'}:4: write_files[0].encoding: "), problem
        assert merged.value == {"hostname": "good", "users": [{"name": "ops"}]}
        assert merged.fallback == "a source has problems"


def test_a_fault_in_the_validator_costs_the_source_not_the_config(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection (a validator bug cannot be written on purpose): the source is reported, the
    last known-good config is used."""
    from agent.config import validate

    def broken(*args: object) -> None:
        raise TypeError("unhashable type: 'list'")
    monkeypatch.setattr(validate, "check", broken)
    (tmp_path / "known-good.json").write_text(KNOWN_GOOD)
    (tmp_path / "state.yaml").write_text("hostname: new\n")
    merged = sources.gather("", str(tmp_path / "none"), str(tmp_path / "state.yaml"), str(tmp_path / "d"),
                            datasource_dirs=(), known_good=str(tmp_path / "known-good.json"))
    assert [p.render() for p in merged.problems] == [
        f"{tmp_path / 'state.yaml'}: the validator failed on this source (TypeError: unhashable type: 'list')\n"
        "hint: this is a Basalt bug: report it with the source; the node keeps its last known-good config"]
    assert merged.value["hostname"] == "good"


@pytest.mark.parametrize(("mode", "data_sources", "allowed", "why"), [
    ("live", None, True, "a live node reads a seed unless data_sources says otherwise"),
    ("installed", None, False, "an installed node reads a seed only when its config's data_sources names nocloud"),
    ("installed", ["nocloud"], True, "data_sources names nocloud"),
    ("installed", ["aws", "cdrom"], True, "data_sources names cdrom"),
    ("installed", ["aws"], False, "the config's data_sources does not name nocloud"),
    ("live", [], False, "the config's data_sources does not name nocloud"),
    ("installed", "nocloud", False, "the config's data_sources does not name nocloud"),  # not a list: no
])
def test_a_nocloud_seed_is_read_only_where_the_node_says(mode: str, data_sources: object, allowed: bool,
                                                         why: str) -> None:
    """Any disk labelled CIDATA was applied at every boot, installed nodes too (a USB stick and a power
    cycle gave root): now data_sources decides, and an installed node reads none by default."""
    from agent.config import datasources
    assert datasources.seed_allowed(mode, data_sources) == (allowed, why)
