"""Upgrade bundles, the boot selection and ``basalt upgrade``'s checks, against files: real
minisign keys and signatures, a real tar bundle, a slot that is a regular file, a boot partition
that is a directory. (The QEMU tests do the same on a booted node, through GRUB.)"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from agent.errors import BasaltError
from agent.upgrade import bootsel, bundle, health, slots, upgrade
from builder import signing
from builder.stages import bundle as bundle_stage

IMAGE, ARCH = "x86_64-raw", upgrade.node_arch()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, signing.SigningKey]:
    d = tmp_path_factory.mktemp("keys")
    return {name: signing.generate(d / f"{name}.key", name) for name in ("site", "other")}


def make_bundle(tmp: Path, key: signing.SigningKey, version: str = "2", arch: str = ARCH, image: str = IMAGE,
                root_size: int = 300_000) -> Path:
    parts = {}
    for name, size in ((bundle.KERNEL, 5000), (bundle.INITRD, 7000), (bundle.ROOT, root_size)):
        parts[name] = tmp / f"{version}-{arch}-{image}-{name}"
        parts[name].write_bytes(hashlib.sha256(f"{name}{version}".encode()).digest() * (size // 32 + 1))
    dest = tmp / f"{image}-{version}-{arch}.bundle"
    work = tmp / f"work-{version}-{arch}-{image}"
    work.mkdir()
    bundle_stage.write(dest, parts, image, version, arch, 1735689600, key, work)
    return dest


@pytest.fixture()
def node(tmp_path: Path, keys: dict[str, signing.SigningKey]) -> upgrade.Node:
    medium = tmp_path / "medium"
    (medium / "basalt/a").mkdir(parents=True)
    (medium / "basalt/a/build.json").write_text(json.dumps({"image": IMAGE, "version": "1", "built": "x"}))
    (medium / "boot/grub").mkdir(parents=True)
    (medium / "boot/grub/grubenv").write_bytes(bootsel.format_block({"basalt_slot": "a"}))
    devices = {}
    for slot in ("a", "b"):
        devices[slot] = str(tmp_path / f"slot-{slot}")
        Path(devices[slot]).write_bytes(b"\x5a" * (1 << 20))
    return upgrade.Node(medium=str(medium), key=str(keys["site"].public), work=str(tmp_path / "work"),
                        state=str(tmp_path / "state/upgrade.json"), booted="a", devices=devices, remount=False)


def snapshot(node: upgrade.Node) -> dict[str, str]:
    """Every byte of both slots and the boot partition."""
    files = [Path(p) for p in node.devices.values()] + sorted(p for p in Path(node.medium).rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --- the boot selection --------------------------------------------------------------------------

def test_environment_block_round_trip_and_transitions(tmp_path: Path) -> None:
    env = tmp_path / "grubenv"
    env.write_bytes(bootsel.format_block({"basalt_slot": "a", "other_var": "kept"}))
    inode = env.stat().st_ino
    grub = bootsel.GrubEnv(str(env))
    assert grub.read() == bootsel.Selection("a")
    grub.arm("b", 1)
    assert grub.read() == bootsel.Selection("a", "b", 1) and grub.read().next_boot() == "b"
    block = env.read_bytes()
    assert len(block) == 1024 and env.stat().st_ino == inode  # rewritten in place: GRUB's save_env still works
    assert block.startswith(b"# GRUB Environment Block\nother_var=kept\nbasalt_slot=a\nbasalt_try=b\nbasalt_tries=1\n#")
    assert block[512:] == b"#" * 512  # everything it says is in its first sector
    grub.write(bootsel.Selection("a", "b", 0))  # what GRUB's countdown leaves after booting the trial
    assert grub.read().next_boot() == "a"
    grub.commit("b")
    assert grub.read() == bootsel.Selection("b") and bootsel.parse(env.read_bytes())["other_var"] == "kept"
    grub.arm("a", 1)
    grub.disarm()
    assert grub.read() == bootsel.Selection("b")


def test_environment_block_refusals(tmp_path: Path) -> None:
    with pytest.raises(bootsel.BootSelectionError, match="its header is missing"):
        bootsel.parse(b"basalt_slot=a\n")
    with pytest.raises(bootsel.BootSelectionError, match="does not fit one sector"):
        bootsel.format_block({"x": "y" * 600})
    with pytest.raises(bootsel.BootSelectionError, match="cannot store"):
        bootsel.format_block({"x": "a\nb"})
    garbage = tmp_path / "grubenv"
    garbage.write_bytes(bootsel.format_block({"basalt_slot": "c", "basalt_try": "z", "basalt_tries": "x"}))
    assert bootsel.GrubEnv(str(garbage)).read() == bootsel.Selection("a")  # unknown values: slot a, no trial


# --- bundles ------------------------------------------------------------------------------------

def test_a_bundle_installs_into_the_inactive_slot_and_arms_its_trial(
        tmp_path: Path, keys: dict[str, signing.SigningKey], node: upgrade.Node) -> None:
    path = make_bundle(tmp_path, keys["site"])
    before = hashlib.sha256(Path(node.devices["a"]).read_bytes()).hexdigest()
    event = upgrade.install_bundle(node, str(path), "v2.bundle")
    assert event["result"] == "armed" and event["slot"] == "b" and event["version"] == "2" and event["from"] == "1"
    root = (tmp_path / f"2-{ARCH}-{IMAGE}-{bundle.ROOT}").read_bytes()
    assert Path(node.devices["b"]).read_bytes()[:len(root)] == root
    assert hashlib.sha256(Path(node.devices["a"]).read_bytes()).hexdigest() == before  # the booted slot: untouched
    medium = Path(node.medium)
    assert (medium / "basalt/b/vmlinuz").read_bytes() == (tmp_path / f"2-{ARCH}-{IMAGE}-{bundle.KERNEL}").read_bytes()
    assert json.loads((medium / "basalt/b/build.json").read_text()) == {"image": IMAGE, "version": "2",
                                                                       "built": "2025-01-01T00:00:00Z"}
    assert node.boot().read() == bootsel.Selection("a", "b", 1)
    assert slots.load_state(node.state)["last"]["result"] == "armed"


def rewrite(path: Path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert data.count(old) >= 1 and len(old) == len(new)
    bad = path.with_name("bad-" + path.name)
    bad.write_bytes(data.replace(old, new, 1))
    return bad


@pytest.mark.parametrize(("case", "message"), [
    ("bad signature", "v.bundle: refused: bad signature"),
    ("another key", "v.bundle: refused: it is signed with another key (Signature key id in "),
    ("bad hash", "v.bundle: refused: bad hash: rootfs.squashfs has sha256 "),
    ("wrong arch", f"v.bundle: refused: it is for arm64, this node is {ARCH}"),
    ("another image", f"v.bundle: refused: it is for image rpi, this node runs {IMAGE}"),
    ("failed before", "v.bundle: refused: version 2 failed on this node before (health gate failed after 10s: x)"),
    ("larger than the slot", "v.bundle: refused: its root filesystem (2 MiB) is larger than slot b (1 MiB)"),
    ("trial not committed", "this boot is a trial of slot a, not yet committed (the committed slot is b)"),
    ("live node", "upgrades need an installed disk: this node runs live from its medium"),
    ("not a bundle", "v.bundle: refused: not a bundle"),
    ("older", "v.bundle: refused: version 0.9 is older than 1, which this node runs"),
    ("older pre-release", "v.bundle: refused: version 1~rc1 is older than 1, which this node runs"),
])
def test_refused_before_any_write(case: str, message: str, tmp_path: Path, keys: dict[str, signing.SigningKey],
                                  node: upgrade.Node) -> None:
    path = make_bundle(tmp_path, keys["site"])
    if case == "bad signature":
        path = rewrite(path, b'"version": "2"', b'"version": "3"')
    elif case == "another key":
        node.key = str(keys["other"].public)
    elif case == "bad hash":
        root = (tmp_path / f"2-{ARCH}-{IMAGE}-{bundle.ROOT}").read_bytes()
        path = rewrite(path, root[1000:1032], bytes(32))
    elif case == "wrong arch":
        path = make_bundle(tmp_path, keys["site"], arch="arm64")
    elif case == "another image":
        path = make_bundle(tmp_path, keys["site"], image="rpi")
    elif case == "failed before":
        slots.record({"result": "failed", "version": "2", "image": IMAGE, "slot": "b"},
                     "health gate failed after 10s: x", path=node.state)
    elif case == "larger than the slot":
        path = make_bundle(tmp_path, keys["site"], version="9", root_size=2 << 20)
        message = message.replace("version 2", "version 9")
    elif case == "trial not committed":
        node.boot().write(bootsel.Selection("b"))
    elif case == "live node":
        node.booted = "live"
    elif case in ("older", "older pre-release"):
        path = make_bundle(tmp_path, keys["site"], version="0.9" if case == "older" else "1~rc1")
    elif case == "not a bundle":
        path = tmp_path / "v.bundle"
        path.write_bytes(b"not a tar at all" * 100)
    before = snapshot(node)
    with pytest.raises(BasaltError) as err:
        upgrade.install_bundle(node, str(path), "v.bundle")
    assert err.value.render().startswith(message)
    assert "\nhint: " in err.value.render()
    assert snapshot(node) == before  # both slots and the boot partition, byte for byte


def test_the_running_version_is_not_written_again(tmp_path: Path, keys: dict[str, signing.SigningKey],
                                                  node: upgrade.Node) -> None:
    """A Kubernetes upgrade job runs again after the reboot it caused: it must find nothing to do."""
    before = snapshot(node)
    assert upgrade.install_bundle(node, str(make_bundle(tmp_path, keys["site"], version="1")), "v") == \
        {"result": "current", "version": "1", "slot": "a"}
    assert snapshot(node) == before


def test_a_failed_version_goes_in_with_force(tmp_path: Path, keys: dict[str, signing.SigningKey],
                                            node: upgrade.Node) -> None:
    slots.record({"result": "failed", "version": "2", "image": IMAGE, "slot": "b"}, "x", path=node.state)
    assert upgrade.install_bundle(node, str(make_bundle(tmp_path, keys["site"])), "v", force=True)["result"] == "armed"


def test_an_older_version_goes_in_only_with_force(tmp_path: Path, keys: dict[str, signing.SigningKey],
                                                node: upgrade.Node) -> None:
    older = make_bundle(tmp_path, keys["site"], version="0.9")
    with pytest.raises(BasaltError, match="older than 1"):
        upgrade.install_bundle(node, str(older), "v")
    assert upgrade.install_bundle(node, str(older), "v", force=True)["result"] == "armed"


@pytest.mark.parametrize(("older", "newer"), [
    ("1", "2"), ("0.1.0", "2"), ("1.9", "1.10"), ("1.0", "1.0.1"), ("1.0~rc1", "1.0"), ("1.0~rc1", "1.0~rc2"),
    ("1.0", "1.0a"), ("1.0a", "1.0+b1"), ("2024.12.1", "2025.1.0"), ("1.0-1", "1.0-2"), ("v1", "v2"), ("", "0.1"),
])
def test_versions_are_ordered_as_debian_orders_them(older: str, newer: str) -> None:
    assert bundle.compare_versions(older, newer) == -1
    assert bundle.compare_versions(newer, older) == 1
    assert bundle.compare_versions(newer, newer) == 0


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    import tarfile
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data + m.size) for m in tar.getmembers()}


@pytest.mark.parametrize("where", ["first header", "manifest", "signature", "kernel", "root header", "root data",
                                   "root's last byte"])
def test_a_truncated_bundle_is_refused_as_incomplete(where: str, tmp_path: Path,
                                                     keys: dict[str, signing.SigningKey], node: upgrade.Node) -> None:
    """The common partial download: cut anywhere, refused with a message (no traceback), nothing written."""
    path = make_bundle(tmp_path, keys["site"])
    at = member_offsets(path)
    cut = {"first header": 100, "manifest": at[bundle.MANIFEST][0] + 600,
           "signature": at[bundle.SIGNATURE][0] + 520, "kernel": at[bundle.KERNEL][1] - 10,
           "root header": at[bundle.ROOT][0] + 200, "root data": at[bundle.ROOT][1] - 4096,
           "root's last byte": at[bundle.ROOT][1] - 1}[where]
    short = tmp_path / "short.bundle"
    short.write_bytes(path.read_bytes()[:cut])
    before = snapshot(node)
    with pytest.raises(BasaltError) as err:
        upgrade.install_bundle(node, str(short), "v.bundle")
    text = err.value.render()
    assert text.startswith("v.bundle: refused: ") and "\nhint: " in text, text
    assert any(why in text for why in ("incomplete", "not a bundle", "cut short")), text
    assert snapshot(node) == before


# A manifest signed by the right key but not as a build writes it: (field, value, the refusal).
MANIFESTS = [
    ("version", None, "version is None, not a name"),
    ("version", 7, "version is 7, not a name"),
    ("version", "2\nrun", "version is '2\\nrun', not a name"),
    ("version", "", "version is '', not a name"),
    ("image", ["x86_64-raw"], "image is ['x86_64-raw'], not a name"),
    ("arch", {"x": 1}, "arch is {'x': 1}, not a name"),
    ("size", "abc", "parts.rootfs.squashfs.size is 'abc', not a size in bytes"),
    ("size", -1, "parts.rootfs.squashfs.size is -1, not a size in bytes"),
    ("size", True, "parts.rootfs.squashfs.size is True, not a size in bytes"),
    ("size", 1e9, "parts.rootfs.squashfs.size is 1000000000.0, not a size in bytes"),
    ("sha256", "abc", "parts.rootfs.squashfs.sha256 is 'abc', not a sha256"),
    ("sha256", None, "parts.rootfs.squashfs.sha256 is 'None', not a sha256"),
    ("part", ["size", "sha256"], "parts.rootfs.squashfs is ['size', 'sha256'], not {size, sha256}"),
]


@pytest.mark.parametrize(("field", "value", "message"), MANIFESTS)
def test_a_signed_manifest_with_a_wrong_field_is_refused(field: str, value: object, message: str, tmp_path: Path,
                                                         keys: dict[str, signing.SigningKey], node: upgrade.Node,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever holds the key can sign anything: the node still refuses what no build writes."""
    real = bundle.manifest

    def hostile(*args: object) -> dict[str, object]:
        man = real(*args)  # type: ignore[arg-type]
        if field in ("size", "sha256"):
            man["parts"][bundle.ROOT][field] = value
        elif field == "part":
            man["parts"][bundle.ROOT] = value
        elif value is None:
            del man[field]
        else:
            man[field] = value
        return man
    monkeypatch.setattr(bundle, "manifest", hostile)
    path = make_bundle(tmp_path, keys["site"])
    monkeypatch.undo()
    before = snapshot(node)
    with pytest.raises(BasaltError) as err:
        upgrade.install_bundle(node, str(path), "v.bundle")
    assert err.value.render().startswith("v.bundle: refused: "), err.value.render()
    assert message in err.value.render(), err.value.render()
    assert snapshot(node) == before


# --- the health gate ------------------------------------------------------------------------------

def test_gate_passes_only_when_everything_passes_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status.json"
    monkeypatch.setattr(health.layout, "RUN_STATUS", str(status))
    status.write_text(json.dumps({"ready_ms": 900, "hostname": "n",
                                  "services": {"dhcp-eth0": {"state": "running", "failures": 0}}}))
    flag = tmp_path / "flag"
    checks = [{"name": "flag-present", "run": f"test -e {flag}", "timeout": 5}]
    clock = iter(range(0, 1000, 5))
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        if len(slept) == 3:
            flag.touch()

    assert health.gate({"basalt": {"upgrade": {"health_timeout": 60, "health_checks": checks}}},
                       lambda: next(clock), sleep) is None
    assert len(slept) == 3
    flag.unlink()
    status.write_text(json.dumps({"ready_ms": 900, "services": {"sshd": {"state": "backoff", "failures": 4}}}))
    reason = health.gate({"k3os": {"upgrade": {"health_timeout": 10, "health_checks": checks}}},
                         lambda: next(clock), lambda s: None)
    assert reason == ("health gate failed after 10s: service sshd is backoff (4 failures); "
                      "health check flag-present exited 1")


def test_a_hanging_check_is_a_failure_with_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    status = tmp_path / "status.json"
    monkeypatch.setattr(health.layout, "RUN_STATUS", str(status))
    status.write_text(json.dumps({"ready_ms": 1, "services": {}}))
    assert health.problems([{"name": "slow", "run": "sleep 30", "timeout": 1}]) == \
        ["health check slow did not finish in 1s"]


def test_settle_records_a_trial_that_never_committed(tmp_path: Path, node: upgrade.Node,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    medium = Path(node.medium)
    (medium / "basalt/b").mkdir()
    (medium / "basalt/b/build.json").write_text(json.dumps({"image": IMAGE, "version": "3"}))
    monkeypatch.setattr(slots.layout, "RUN_MEDIUM", node.medium)
    monkeypatch.setattr(slots.layout, "UPGRADE_STATE", node.state)
    monkeypatch.setattr(health.slots, "writable_boot", lambda: __import__("contextlib").nullcontext())
    grub = node.boot()
    grub.write(bootsel.Selection("a", "b", 0))  # GRUB booted the trial once; now slot a is back
    assert health.settle("a", grub, grub.read()) == 1
    state = json.loads(Path(node.state).read_text())
    assert state["failed"]["3"]["reason"] == health.NEVER_COMMITTED and state["last"]["result"] == "failed"
    assert grub.read() == bootsel.Selection("a")
    assert health.settle("a", grub, grub.read()) == 0
    assert json.loads(Path(node.state).read_text())["committed"] == {"a": "1"}


def test_public_key_files_from_keygen_are_what_minisign_reads(keys: dict[str, signing.SigningKey]) -> None:
    key = keys["site"]
    assert oct(os.stat(key.secret).st_mode & 0o777) == "0o600"
    assert key.public_text().startswith("untrusted comment: minisign public key ")
    # minisign names a key by its id, the 8 bytes after the algorithm in the public key, read as a
    # little-endian number and printed in hex without leading zeros (so 15 digits one time in 16)
    import base64
    raw = base64.b64decode(key.public_text().splitlines()[1])
    assert key.key_id() == f"{int.from_bytes(raw[2:10], 'little'):X}"


def test_a_named_signing_key_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BasaltError) as err:
        signing.resolve(tmp_path / "site.key", "images/site.yaml")
    assert err.value.render() == (f"images/site.yaml: upgrade.signing_key: secret key {tmp_path}/site.key does not "
                                  "exist\nhint: make a key pair with ./inv keygen --out PATH (PATH.key and PATH.pub)")


def test_without_a_key_the_build_makes_a_development_key_once_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BASALT_CACHE", str(tmp_path))
    first = signing.resolve(None)
    assert first.secret == tmp_path / "keys/dev-signing.key" and first.public.is_file()
    assert "warning: signing upgrade bundles with the development key" in capsys.readouterr().err
    assert signing.resolve(None).public_text() == first.public_text()  # made once, then reused


def test_keygen_writes_a_pair_and_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from builder import cli
    assert cli.main(["keygen", "--out", str(tmp_path / "site.key")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}/site.pub (public; key id " in out and "signing_key: " in out
    assert cli.main(["keygen", "--out", str(tmp_path / "site.key")]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}/site.key exists: not overwriting a signing key\n"
                                       "hint: choose another path, or remove it if it is really unused\n")


def test_labels_are_set_through_the_api_with_the_roles_credentials() -> None:
    from agent.modules import k3s
    server = k3s.relabel_argv({}, "edge-1", "2", "b")
    assert server == ["/usr/bin/k3s", "kubectl", "--kubeconfig", "/etc/rancher/k3s/k3s.yaml", "label", "node",
                      "edge-1", "--overwrite", "basalt.io/version=2", "basalt.io/slot=b"]
    agent = k3s.node_ready_argv({"basalt": {"server_url": "https://10.0.0.1:6443", "token": "t"}}, "edge-2")
    assert agent[:4] == ["/usr/bin/k3s", "kubectl", "--kubeconfig", "/var/lib/rancher/k3s/agent/kubelet.kubeconfig"]
    assert agent[4:] == ["get", "node", "edge-2", "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}']


# --- refused from a bundle's first bytes -----------------------------------------------------------
def test_a_bundle_is_judged_from_its_first_bytes(tmp_path: Path, keys: dict[str, signing.SigningKey],
                                                 node: upgrade.Node) -> None:
    """The manifest and signature come first: a URL's bundle is refused from its first 64 KiB."""
    path = make_bundle(tmp_path, keys["site"], root_size=900_000)  # the slot is 1 MiB
    head = path.read_bytes()[:bundle.HEAD_BYTES]
    assert set(bundle.head_members(head)) == {bundle.MANIFEST, bundle.SIGNATURE, bundle.KERNEL, bundle.INITRD}
    man = bundle.open_head(head, node.key, node.work, "v.bundle")
    assert (man["version"], man["image"]) == ("2", IMAGE)
    assert upgrade.preflight(node, man, "v.bundle", False) == "b"
    with pytest.raises(BasaltError, match="refused: bad signature"):
        bundle.open_head(rewrite(path, b'"version": "2"', b'"version": "3"').read_bytes()[:bundle.HEAD_BYTES],
                         node.key, node.work, "v.bundle")
    with pytest.raises(BasaltError, match="refused: it is signed with another key"):
        bundle.open_head(head, str(keys["other"].public), node.work, "v.bundle")
    with pytest.raises(BasaltError, match=r"refused: not a bundle \(no manifest.json, manifest.json.minisig"):
        bundle.open_head(b"not a tar" * 1000, node.key, node.work, "v.bundle")
    arm = make_bundle(tmp_path, keys["site"], arch="arm64").read_bytes()[:bundle.HEAD_BYTES]
    with pytest.raises(BasaltError, match="refused: it is for arm64"):
        upgrade.preflight(node, bundle.open_head(arm, node.key, node.work, "v.bundle"), "v.bundle", False)
    current = make_bundle(tmp_path, keys["site"], version="1").read_bytes()[:bundle.HEAD_BYTES]
    assert upgrade.preflight(node, bundle.open_head(current, node.key, node.work, "v"), "v", False) is None


def test_the_head_is_a_range_request(tmp_path: Path, keys: dict[str, signing.SigningKey], http_server) -> None:  # type: ignore[no-untyped-def]
    path = make_bundle(tmp_path, keys["site"], root_size=1 << 20)
    (http_server.root / "v.bundle").write_bytes(path.read_bytes())
    head = upgrade.download_head(f"{http_server.url}/v.bundle")
    assert head == path.read_bytes()[:bundle.HEAD_BYTES]
    assert http_server.requests == [("/v.bundle", f"bytes=0-{bundle.HEAD_BYTES - 1}")]
    with pytest.raises(BasaltError, match="cannot download the bundle: HTTP Error 404"):
        upgrade.download_head(f"{http_server.url}/absent.bundle", attempts=1)


def test_a_download_stops_at_the_size_its_signed_manifest_gives(tmp_path: Path,
                                                                keys: dict[str, signing.SigningKey],
                                                                http_server) -> None:  # type: ignore[no-untyped-def]
    """A server that sends more than the bundle can be (any amount, once) is cut off at that size."""
    path = make_bundle(tmp_path, keys["site"], root_size=1 << 20)
    man = bundle.open_head(path.read_bytes()[:bundle.HEAD_BYTES], str(keys["site"].public), str(tmp_path / "w"), "v")
    limit = upgrade.expected_size(man)
    assert path.stat().st_size <= limit < path.stat().st_size + (100 << 10)
    (http_server.root / "v.bundle").write_bytes(path.read_bytes())
    got = upgrade.download(f"{http_server.url}/v.bundle", str(tmp_path / "dl"), attempts=1, limit=limit)
    assert Path(got).read_bytes() == path.read_bytes()
    (http_server.root / "big.bundle").write_bytes(path.read_bytes() + bytes(4 << 20))
    with pytest.raises(BasaltError, match=f"cannot download the bundle: .*more than the {limit} "):
        upgrade.download(f"{http_server.url}/big.bundle", str(tmp_path / "dl"), attempts=1, limit=limit)
    assert not any(p.stat().st_size > limit for p in (tmp_path / "dl").iterdir())
    # what must fit is what is still to come: a partial copy counts (and is resumed)
    free = __import__("os").statvfs(tmp_path)
    room = free.f_bavail * free.f_frsize
    with pytest.raises(BasaltError, match=r"the bundle \(\d+ MiB\) does not fit in "):
        upgrade.download(f"{http_server.url}/v.bundle", str(tmp_path / "dl2"), attempts=1, limit=room + (1 << 30))
    assert not (tmp_path / "dl2").exists() or list((tmp_path / "dl2").iterdir()) == []


def test_a_slot_without_an_image_name_takes_a_bundle_only_with_force(tmp_path: Path,
                                                                    keys: dict[str, signing.SigningKey],
                                                                    node: upgrade.Node) -> None:
    """It failed open: a bundle for any image went in."""
    (Path(node.medium) / "basalt/a/build.json").write_text(json.dumps({"version": "1", "built": "x"}))
    path = make_bundle(tmp_path, keys["site"], image="rpi")
    before = snapshot(node)
    with pytest.raises(BasaltError, match="this node's slot records no image name, so a bundle for rpi cannot be "
                                          "told apart"):
        upgrade.install_bundle(node, str(path), "v.bundle")
    assert snapshot(node) == before
    assert upgrade.install_bundle(node, str(path), "v.bundle", force=True)["result"] == "armed"


def test_upgrade_reboots_only_into_an_armed_trial(tmp_path: Path, keys: dict[str, signing.SigningKey],
                                                  node: upgrade.Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kubernetes job runs again after the reboot it caused: finding its version running, it must
    not reboot the node again (a loop)."""
    reboots: list[int] = []
    monkeypatch.setattr(upgrade, "Node", lambda: node)
    monkeypatch.setattr(upgrade, "lock", lambda: os.open(os.devnull, os.O_RDONLY))
    monkeypatch.setattr(upgrade, "request_reboot", lambda: reboots.append(1))
    assert upgrade.upgrade(str(make_bundle(tmp_path, keys["site"], version="1"))) == 0 and reboots == []
    assert upgrade.upgrade(str(make_bundle(tmp_path, keys["site"], version="2"))) == 0 and reboots == [1]
