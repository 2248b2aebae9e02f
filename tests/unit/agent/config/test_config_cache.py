"""A node's cache of the config sources it validated at an earlier boot (sources.Cache): used only
for the same bytes, schema and agent code; never for a source with a problem or a warning; and
ignored, whole, when it is anything but what the node wrote."""

from __future__ import annotations

import marshal
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent import files
from agent.config import sources, validate


def gather(tmp_path: Path, code: bytes = b"code-1") -> sources.Merged:
    return sources.gather("", str(tmp_path / "none.yaml"), str(tmp_path / "state.yaml"), str(tmp_path / "config.d"),
                          datasource_dirs=(), known_good=str(tmp_path / "lkg.json"),
                          rejected=str(tmp_path / "rejected.json"), dropped=str(tmp_path / "dropped.yaml"),
                          site=str(tmp_path / "site.yaml"), cache=str(tmp_path / "cache.bin"), code=code)


def no_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any source parsed and checked again fails loudly (the cache must answer instead)."""
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("validated again")
    monkeypatch.setattr(validate, "check", refuse)


def entries(tmp_path: Path) -> dict[str, Any]:
    data = (tmp_path / "cache.bin").read_bytes()
    assert files.sha256(data[32:]).digest() == data[:32]
    loaded: dict[str, Any] = marshal.loads(data[32:])
    return loaded


def test_a_validated_source_is_not_parsed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state.yaml").write_text("hostname: edge-1\nk3os: {password: s3cret}\n")
    (tmp_path / "dropped.yaml").write_text("k3os: {labels: {zone: a}}\n")
    first = gather(tmp_path)
    assert first.problems == [] and first.value["hostname"] == "edge-1"
    assert stat.S_IMODE((tmp_path / "cache.bin").stat().st_mode) == 0o600  # it holds the password
    assert sorted(entries(tmp_path)) == [str(tmp_path / "dropped.yaml"), str(tmp_path / "state.yaml")]
    written = (tmp_path / "cache.bin").stat().st_mtime_ns
    no_validator(monkeypatch)
    again = gather(tmp_path)
    assert (again.value, again.sources, again.origin, again.digest) == \
        (first.value, first.sources, first.origin, first.digest)
    assert (tmp_path / "cache.bin").stat().st_mtime_ns == written  # unchanged: not written again


def test_a_changed_source_schema_or_agent_is_checked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    gather(tmp_path)
    (tmp_path / "state.yaml").write_text("hostname: edge-2\n")
    assert gather(tmp_path).value == {"hostname": "edge-2"}
    assert gather(tmp_path, code=b"code-2").value == {"hostname": "edge-2"}  # an upgrade's validator
    real = sources.schema_bytes()
    monkeypatch.setattr(sources, "schema_bytes", lambda: real + b" ")
    calls = []
    check = validate.check
    monkeypatch.setattr(validate, "check", lambda *a, **kw: calls.append(1) or check(*a, **kw))
    assert gather(tmp_path, code=b"code-2").value == {"hostname": "edge-2"} and calls == [1]


@pytest.mark.parametrize("text", [
    "hostname: [not, a, name]\n",  # a problem: reported at every boot, never cached
    "write_files:\n  - path: relative/file\n    content: x\n",  # a warning: shown at every boot
])
def test_a_source_with_a_problem_or_a_warning_is_not_cached(tmp_path: Path, text: str) -> None:
    (tmp_path / "state.yaml").write_text(text)
    merged = gather(tmp_path)
    assert merged.problems or merged.warnings
    assert not (tmp_path / "cache.bin").exists()
    again = gather(tmp_path)
    shown = [p.render() for p in merged.problems + merged.warnings]
    assert [p.render() for p in again.problems + again.warnings] == shown


def test_a_source_gone_is_forgotten(tmp_path: Path) -> None:
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    (tmp_path / "dropped.yaml").write_text("hostname: edge-9\n")
    gather(tmp_path)
    (tmp_path / "dropped.yaml").unlink()
    assert gather(tmp_path).value == {"hostname": "edge-1"}
    assert list(entries(tmp_path)) == [str(tmp_path / "state.yaml")]


def test_no_agent_identity_no_cache(tmp_path: Path) -> None:
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    gather(tmp_path, code=b"")
    assert not (tmp_path / "cache.bin").exists()


def forged(value: object) -> bytes:
    payload = marshal.dumps(value, 4)
    return files.sha256(payload).digest() + payload


@pytest.mark.parametrize(("name", "content"), [
    ("empty", b""),
    ("short", b"\x00" * 5),
    ("bad checksum", b"\x00" * 32 + marshal.dumps({}, 4)),
    ("a bit flipped", bytes([forged({"x": 1})[0] ^ 1]) + forged({"x": 1})[1:]),
    ("not marshal", files.sha256(b"\xff\xfe").digest() + b"\xff\xfe"),
    ("a list", forged([1, 2])),
    ("entry not a mapping", forged({"STATE": "value"})),
    ("value not a mapping", forged({"STATE": {"key": "KEY", "value": ["hostname"]}})),
    ("wrong key", forged({"STATE": {"key": "0" * 64, "value": {"hostname": "forged"}}})),
    ("too large", b"\x00" * (sources.CACHE_MAX + 1)),
])
def test_a_hostile_or_damaged_cache_is_ignored(tmp_path: Path, name: str, content: bytes) -> None:
    state = tmp_path / "state.yaml"
    state.write_text("hostname: edge-1\n")
    (tmp_path / "cache.bin").write_bytes(content.replace(b"STATE", str(state).encode()))
    merged = gather(tmp_path)
    assert merged.value == {"hostname": "edge-1"} and merged.problems == []
    assert list(entries(tmp_path)) == [str(state)]  # rewritten whole, from the real source


def test_the_cache_is_replaced_never_written_through_a_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep")
    (tmp_path / "cache.bin").symlink_to(elsewhere)
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    gather(tmp_path)
    assert elsewhere.read_bytes() == b"keep" and not (tmp_path / "cache.bin").is_symlink()


def test_the_known_good_config_is_for_root_only(tmp_path: Path) -> None:
    (tmp_path / "state.yaml").write_text("hostname: edge-1\nk3os: {password: s3cret}\n")
    merged = gather(tmp_path)
    sources.save_known_good(merged, str(tmp_path / "lkg.json"))
    assert stat.S_IMODE((tmp_path / "lkg.json").stat().st_mode) == 0o600
    os.chmod(tmp_path / "lkg.json", 0o644)  # as an older version wrote it
    sources.save_known_good(merged, str(tmp_path / "lkg.json"))  # unchanged: not rewritten, but mended
    assert stat.S_IMODE((tmp_path / "lkg.json").stat().st_mode) == 0o600


def test_a_cache_damaged_after_it_was_written_is_not_believed(tmp_path: Path) -> None:
    """A flipped bit on the card (or an edit) inside a well-formed entry: only the checksum sees it."""
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    gather(tmp_path)
    data = (tmp_path / "cache.bin").read_bytes()
    assert data.count(b"edge-1") == 1
    (tmp_path / "cache.bin").write_bytes(data.replace(b"edge-1", b"edge-X"))
    assert gather(tmp_path).value == {"hostname": "edge-1"}


def test_a_cache_that_cannot_be_written_costs_nothing_but_time(tmp_path: Path) -> None:
    """A state partition gone read-only, or `basalt config show` run by a user: the config is
    still gathered, whole."""
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    merged = sources.gather("", str(tmp_path / "none.yaml"), str(tmp_path / "state.yaml"), str(tmp_path / "d"),
                            datasource_dirs=(), known_good=str(tmp_path / "lkg.json"),
                            rejected=str(tmp_path / "rejected.json"), dropped=str(tmp_path / "dropped.yaml"),
                            site=str(tmp_path / "site.yaml"), cache=str(tmp_path / "state.yaml" / "cache.bin"),
                            code=b"code-1")  # its directory is a file: every write fails
    assert merged.value == {"hostname": "edge-1"} and merged.problems == []


def test_an_unchanged_known_good_on_a_read_only_partition_is_left_alone(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "state.yaml").write_text("hostname: edge-1\n")
    merged = gather(tmp_path)
    sources.save_known_good(merged, str(tmp_path / "lkg.json"))

    def read_only(*args: object, **kw: object) -> None:
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(os, "chmod", read_only)
    monkeypatch.setattr(files, "write_atomic", read_only)
    sources.save_known_good(merged, str(tmp_path / "lkg.json"))  # unchanged: no write, no error
