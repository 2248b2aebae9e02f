"""The stamped site index (agent/config/site.py): which config a node takes, by MAC, serial or default; the
chosen config written owner-only; its place in the merge order; secrets redacted in config show."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent import layout
from agent.config import site, sources
from builder.fleet import stamp

pytestmark = pytest.mark.unit

INDEX = json.loads(stamp.index(
    [{"name": "edge-a", "macs": ["52:54:00:00:0A:01"], "serials": [], "config": "hostname: edge-a\n"},
     {"name": "edge-b", "macs": [], "serials": ["10000000ABCDEF01"], "config": "hostname: edge-b\n"}],
    {"name": "fallback", "config": "hostname: fallback\n"}))


def fake_sys(tmp_path: Path, macs: dict[str, str], serial: str | None = None) -> tuple[str, tuple[str, ...]]:
    net = tmp_path / "net"
    for iface, mac in macs.items():
        (net / iface).mkdir(parents=True)
        (net / iface / "address").write_text(mac + "\n")
    serial_file = tmp_path / "serial-number"
    if serial is not None:
        serial_file.write_bytes(serial.encode() + b"\0")
    return str(net), (str(serial_file),)


@pytest.mark.parametrize(("macs", "serial", "site_name", "by"), [
    ({"lo": "00:00:00:00:00:00", "eth0": "52:54:00:00:0a:01"}, None, "edge-a", "mac"),
    ({"eth0": "52:54:00:99:99:99", "eth1": "52-54-00-00-0A-01"}, None, "edge-a", "mac"),
    ({"eth0": "52:54:00:99:99:99"}, "10000000abcdef01", "edge-b", "serial"),
    ({"eth0": "52:54:00:99:99:99"}, None, "fallback", "default"),
])
def test_a_device_is_chosen_by_mac_then_serial_else_the_default(
        tmp_path: Path, macs: dict[str, str], serial: str | None, site_name: str, by: str) -> None:
    net, serials = fake_sys(tmp_path, macs, serial)
    out = tmp_path / "run"
    match = site.select(INDEX, str(out), net, serials)
    assert match is not None and (match["site"], match["by"]) == (site_name, by)
    config = out / "config.yaml"
    assert config.read_text() == f"hostname: {site_name}\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads((out / "match.json").read_text()) == match


def test_describe_says_how_the_site_was_chosen(tmp_path: Path) -> None:
    net, serials = fake_sys(tmp_path, {"eth0": "52:54:00:00:0a:01"})
    assert site.describe(site.select(INDEX, str(tmp_path / "r1"), net, serials)) == \
        "edge-a (MAC 52:54:00:00:0a:01 on eth0)"
    net2, _ = fake_sys(tmp_path / "x", {"eth0": "52:54:00:99:99:99"})
    assert site.describe(site.select(INDEX, str(tmp_path / "r2"), net2, serials)) == \
        "fallback (the default: no device matched MACs 52:54:00:99:99:99)"
    no_default = {**INDEX, "default": None}
    assert site.describe(site.select(no_default, str(tmp_path / "r3"), net2, serials)) == \
        "none (no device matched and there is no default; MACs 52:54:00:99:99:99)"
    assert not (tmp_path / "r3" / "config.yaml").exists()
    assert site.describe(None) == "none stamped"


def test_an_unstamped_reservation_is_no_site_and_a_stale_choice_is_removed(tmp_path: Path) -> None:
    medium = tmp_path / "medium"
    (medium / "basalt").mkdir(parents=True)
    (medium / "basalt" / "site.json").write_bytes(bytes(layout.SITE_RESERVE))
    assert site.load(str(medium)) is None
    (medium / "basalt" / "site.json").write_bytes(stamp.index([], {"name": "one", "config": "hostname: one\n"})
                                                  + bytes(4096))
    index = site.load(str(medium))
    assert index is not None and index["default"]["name"] == "one" and not site.needs_identity(index)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("hostname: stale\n")
    assert site.select(None, str(out)) is None and not (out / "config.yaml").exists()
    # Read up to the padding only, in 64 KiB pieces: an index longer than one, or ending on a
    # piece's edge, comes back whole.
    big = stamp.index([], {"name": "big", "config": "hostname: big\n# " + "x" * 100000 + "\n"})
    for pad in (bytes(4096), bytes((1 << 17) - len(big)), b""):
        (medium / "basalt" / "site.json").write_bytes(big + pad)
        loaded = site.load(str(medium))
        assert loaded is not None and loaded["default"]["config"].startswith("hostname: big\n# xxx")
    (medium / "basalt" / "site.json").write_bytes(b'{"format": 99}')
    with pytest.raises(ValueError, match="not a format-1 site index: restamp it"):
        site.load(str(medium))


def test_the_site_config_merges_after_the_baked_one_and_before_the_state_partitions(tmp_path: Path) -> None:
    baked, site_file, state = tmp_path / "baked.yaml", tmp_path / "site.yaml", tmp_path / "state.yaml"
    baked.write_text("hostname: baked\nk3os:\n  labels:\n    from: baked\n")
    site_file.write_text("hostname: from-site\nk3os:\n  token: s3cret-join\n  server_url: https://10.0.0.1:6443\n")
    state.write_text("k3os:\n  labels:\n    from: state\n")
    merged = sources.gather("", str(baked), str(state), str(tmp_path / "none"), datasource_dirs=(),
                            known_good=str(tmp_path / "kg"), rejected=str(tmp_path / "rj"),
                            dropped=str(tmp_path / "none.yaml"), site=str(site_file))
    assert merged.sources == [str(baked), str(site_file), str(state)]
    assert merged.value["hostname"] == "from-site" and merged.value["k3os"]["labels"]["from"] == "state"
    shown = sources.show(merged)
    assert "s3cret-join" not in shown
    assert f"k3os.token = '<redacted>'    # {site_file}" in shown.splitlines()
    assert f"k3os.server_url = 'https://10.0.0.1:6443'    # {site_file}" in shown.splitlines()


@pytest.mark.parametrize(("path", "value", "shown"), [
    (("k3os", "token"), "abc", "<redacted>"),
    (("k3os", "wifi", 0, "passphrase"), "correct horse", "<redacted>"),
    (("k3os", "password"), "", ""),
    (("k3os", "k3s_args"), ["--token=abc", "--node-label", "x=y"], ["--token=<redacted>", "--node-label", "x=y"]),
    (("k3os", "k3s_args"), ["--token", "abc"], ["--token", "<redacted>"]),
    (("hostname",), "edge", "edge"),
    # each was printed by basalt config show
    (("k3s", "config", "agent-token"), "K10agent", "<redacted>"),
    (("k3s", "config", "datastore-endpoint"), "mysql://u:pw@tcp(db)/k3s", "<redacted>"),
    (("k3s", "config", "etcd-s3-secret-key"), "s3cr3t", "<redacted>"),
    (("k3os", "environment", "K3S_TOKEN"), "K10env", "<redacted>"),
    (("k3os", "environment", "AWS_SECRET_ACCESS_KEY"), "abc", "<redacted>"),
    (("k3s", "registries", "configs", "r.example", "auth", "username"), "bob", "<redacted>"),
    (("k3os", "k3s_args"), ["--etcd-s3-secret-key=x", "--agent-token", "y"],
     ["--etcd-s3-secret-key=<redacted>", "--agent-token", "<redacted>"]),
    (("k3os", "environment", "HTTP_PROXY"), "http://proxy:3128", "http://proxy:3128"),
])
def test_config_show_redacts_secrets(path: tuple[str | int, ...], value: object, shown: object) -> None:
    from agent.config import secrets
    assert secrets.redacted(path, value) == shown


def test_the_site_index_file_name_is_the_layouts() -> None:
    assert os.path.basename(layout.MEDIUM_SITE) == "site.json" and layout.RUN_SITE_CONFIG == sources.SITE


def test_a_stamped_config_comes_precompiled_and_a_bad_or_foreign_one_is_parsed(tmp_path: Path) -> None:
    """Each stamped entry carries its config precompiled (the stamp validated it): the node writes
    it beside the chosen config.yaml and the merge takes it without the YAML parser. One whose
    key does not match (another schema, a config edited after stamping) or that is not base64
    is ignored, and the YAML is parsed and checked as usual."""
    text = "hostname: from-stamp\nwrite_files:\n  - path: /etc/x\n    content: '1'\n"
    index = json.loads(stamp.index([], {"name": "one", "config": text}))
    net, serials = fake_sys(tmp_path, {"eth0": "52:54:00:00:0a:01"})
    out = tmp_path / "run"
    site.select(index, str(out), net, serials)
    sidecar = out / "config.bin"
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600
    raw = sources.schema_bytes()
    assert sources.precompiled(str(out / "config.yaml"), text.encode(), raw) == \
        {"hostname": "from-stamp", "write_files": [{"path": "/etc/x", "content": "1"}]}

    def merged_hostname() -> str:
        merged = sources.gather("", str(tmp_path / "none.yaml"), str(tmp_path / "none.yaml"), str(tmp_path / "none"),
                                datasource_dirs=(), known_good=str(tmp_path / "kg"), rejected=str(tmp_path / "rj"),
                                dropped=str(tmp_path / "none.yaml"), site=str(out / "config.yaml"))
        assert not merged.problems
        return str(merged.value["hostname"])
    # The sidecar is what the merge used: one saying otherwise (same key) wins over the YAML.
    sidecar.write_bytes(sources.precompile(text.encode(), {"hostname": "from-sidecar"}, raw))
    assert merged_hostname() == "from-sidecar"
    for hostile in ("not base64 at all!", "", json.dumps({"x": 1})):
        site.select({**index, "default": {**index["default"], "compiled": hostile}}, str(out), net, serials)
        assert merged_hostname() == "from-stamp"
    # a sidecar for other text (the config edited after stamping) is ignored
    other = json.loads(stamp.index([], {"name": "one", "config": "hostname: stamped-before\n"}))["default"]["compiled"]
    site.select({**index, "default": {**index["default"], "compiled": other}}, str(out), net, serials)
    assert sidecar.is_file() and merged_hostname() == "from-stamp"
    # an index from before precompiling (no "compiled") still works, and leaves no stale sidecar
    site.select({**index, "default": {"name": "one", "config": text}}, str(out), net, serials)
    assert not sidecar.exists() and merged_hostname() == "from-stamp"
