"""Image definition schema: a good/bad table with the exact messages users see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.errors import BasaltError
from builder.imagedef import ROOT, load_image

GOOD = (ROOT / "images" / "x86_64-iso.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "img.yaml"
    path.write_text(text)
    return path


def replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_default_image_loads() -> None:
    img = load_image("x86_64-iso")
    assert img.name == "x86_64-iso"
    assert img.arch.to_debian() == "amd64"
    assert img.outputs[0].firmware == ("bios", "uefi")
    assert img.k3s == {"enabled": False}
    assert "python3-minimal" in img.packages


# the line in images/x86_64-iso.yaml the bad definitions replace
CMDLINE_LINE = "  cmdline: console=tty0 console=ttyS0,115200 transparent_hugepage=never quiet"

CMDLINE_HINT = ("kernel arguments, one space between: letters, digits and _.,:=/+@%- (a quote, #, $, ;, { or a line "
                "break would be GRUB script in grub.cfg)")
BAD = [
    # (edit, needle on the reported line, expected "path: message", expected hint or None)
    (("  - format: iso", "  - format: sdimg"), "format: sdimg",
     "outputs[0].format: 'sdimg' is not one of ['iso', 'raw']", None),
    (("arch: x86_64", "arch: riscv"), "arch: riscv",
     "arch: 'riscv' is not one of ['x86_64', 'arm64']", None),
    (("  suite: bookworm", "  suite: bookworm\n  mirorr: http://x"), "mirorr",
     "debian.mirorr: unknown key 'mirorr'", "did you mean 'mirror'?"),
    (("  memory_mb: 512", "  memory_mb: lots"), "memory_mb: lots",
     "qemu.memory_mb: expected integer, got string", None),
    (("  enabled: false", "  enabled: true"), "k3s:",  # a mapping's problem is at its key's line
     "k3s: 'version' is required", None),
    (("name: x86_64-iso", "name: Bad Name"), "name: Bad Name",
     "name: 'Bad Name' is not valid here", "must match the pattern ^[a-z0-9][a-z0-9._-]*$"),
    (("  - base", "  - nosuch"), "- nosuch",
     "overlays[0]: overlay 'nosuch' does not exist", "available overlays: base, containerd, containers"),
    (("    firmware: [bios, uefi]", "    firmware: [bios, bios]"), "firmware: [bios, bios]",
     "outputs[0].firmware: has duplicate items", "list each item once"),
    (("  cmdline: console=tty0", "  cmdline: root=/dev/sda console=tty0"), "cmdline:",
     "kernel.cmdline: root= is set by the boot loader, not the image definition",
     "remove root=...; the initramfs finds the root by label"),
    # GRUB script through the command line: a new menu entry, a comment cutting the boot line, a variable
    ((CMDLINE_LINE,
      "  cmdline: \"quiet\\n}\\nmenuentry evil {\\nlinux /x init=/bin/sh\\n}\\n#\""),
     "cmdline:", "kernel.cmdline: 'quiet\\n}\\nmenuentry evil {\\nlinux /x init=/bin/sh\\n}\\n#' is not valid here",
     CMDLINE_HINT),
    ((CMDLINE_LINE, "  cmdline: 'quiet # basalt.label'"), "cmdline:",
     "kernel.cmdline: 'quiet # basalt.label' is not valid here", CMDLINE_HINT),
    ((CMDLINE_LINE, "  cmdline: 'quiet init=$evil'"), "cmdline:",
     "kernel.cmdline: 'quiet init=$evil' is not valid here", CMDLINE_HINT),
    ((CMDLINE_LINE, "  cmdline: 'quiet; reboot'"), "cmdline:",
     "kernel.cmdline: 'quiet; reboot' is not valid here", CMDLINE_HINT),
]


@pytest.mark.parametrize(("edit", "needle", "message", "hint"), BAD, ids=[b[2].split(":")[0] for b in BAD])
def test_bad_definitions(tmp_path: Path, edit: tuple[str, str], needle: str, message: str, hint: str | None) -> None:
    text = replace(*edit)
    path = write(tmp_path, text)
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    problem = exc.value.problems[0]
    assert problem.render().splitlines()[0] == f"{path}:{line_of(text, needle)}: {message}"
    assert problem.hint == hint


def test_arm64_bios_is_rejected(tmp_path: Path) -> None:
    text = replace("arch: x86_64", "arch: arm64").replace("linux-image-amd64", "linux-image-arm64")
    path = write(tmp_path, text)
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    assert exc.value.problems[0].render() == (
        f"{path}:{line_of(text, 'firmware:')}: outputs[0].firmware[0]: 'bios' firmware does not exist on arm64\n"
        "hint: use firmware: [uefi]")


def test_every_problem_is_reported(tmp_path: Path) -> None:
    text = replace("arch: x86_64", "arch: sparc").replace("  memory_mb: 512", "  memory_mb: -1")
    with pytest.raises(BasaltError) as exc:
        load_image(str(write(tmp_path, text)))
    assert [p.path for p in exc.value.problems] == ["arch", "qemu.memory_mb"]


def test_duplicate_key_points_at_second(tmp_path: Path) -> None:
    text = replace("arch: x86_64", "arch: x86_64\narch: arm64")
    path = write(tmp_path, text)
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    first = line_of(text, "arch: x86_64")
    assert exc.value.render() == (f"{path}:{first + 1}: arch: duplicate key 'arch'\n"
                                  f"hint: 'arch' is already set on line {first}: keep one")


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    text = replace("packages:\n", "packages:\n  - [unclosed\n")
    path = write(tmp_path, text)
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    assert exc.value.problems[0].file == str(path)
    problem = exc.value.problems[0]
    assert problem.line == line_of(text, "- python3-minimal")  # where the parser gave up
    assert problem.message == "YAML syntax error: expected ',' or ']', but got '-'"
    assert problem.hint == f"while parsing a flow sequence started on line {line_of(text, '[unclosed')}; is it closed?"


def test_unknown_image_name_lists_choices() -> None:
    with pytest.raises(BasaltError) as exc:
        load_image("no-such-image")
    assert exc.value.render() == ("no image definition named 'no-such-image'\n"
                                  "hint: available: arm64-efi, rpi, x86_64-containerd, x86_64-iso, x86_64-k3s, "
                                  "x86_64-raw (or pass a path to a .yaml file)")


def test_cli_reports_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, replace("  - format: iso", "  - format: sdimg"))
    proc = subprocess.run([sys.executable, "-m", "builder", "validate", str(path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path}:")
    assert "outputs[0].format: 'sdimg' is not one of ['iso', 'raw']" in proc.stderr


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, replace("  - format: iso", "  - format: sdimg"))
    proc = subprocess.run([sys.executable, "-m", "builder", "--debug", "validate", str(path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_schema_documents_every_field() -> None:
    """docs/image-definition.md names every field the schema accepts."""
    import json
    schema = json.loads((ROOT / "builder/schemas/image.schema.json").read_text())
    docs = (ROOT / "docs/image-definition.md").read_text()

    def fields(node: dict, prefix: str = "") -> list[str]:
        out = []
        for key, sub in node.get("properties", {}).items():
            out.append(prefix + key)
            if sub.get("type") == "object":
                out += fields(sub, prefix + key + ".")
            if sub.get("type") == "array" and isinstance(sub.get("items"), dict):
                out += fields(sub["items"], prefix + key + "[].")
        return out
    missing = [f for f in fields(schema) if f"`{f}`" not in docs]
    assert missing == []


def test_example_definition_is_valid_yaml_mapping() -> None:
    assert isinstance(yaml.safe_load(GOOD), dict)


def test_site_config_is_validated_before_building(tmp_path: Path) -> None:
    from builder.plan import load_site_config
    path = tmp_path / "config.yaml"
    path.write_text("# site\nhostname: bad_name!\n")
    with pytest.raises(BasaltError) as exc:
        load_site_config(str(path))
    assert exc.value.render().splitlines()[0] == f"{path}:2: hostname: 'bad_name!' is not valid here"
    path.write_text("- a list\n")
    with pytest.raises(BasaltError) as exc:
        load_site_config(str(path))
    assert exc.value.render() == (f"{path}:1: config.yaml must be a mapping of keys\n"
                                  "hint: see docs/config.md for the keys")
    path.write_text("hostname: edge-1\nk3os: {password: x}\n")
    assert load_site_config(str(path)) == "hostname: edge-1\nk3os: {password: x}\n"


def test_example_site_configs_are_valid() -> None:
    from builder.plan import load_site_config
    for example in sorted((ROOT / "config" / "examples").glob("*.yaml")):
        assert load_site_config(str(example))


def test_extends_merges_mappings_and_edits_lists() -> None:
    base, img = load_image("x86_64-iso"), load_image("x86_64-containerd")
    assert img.packages == (*base.packages, "containerd", "runc")
    k3s_image = load_image("x86_64-k3s")
    assert k3s_image.exclude == tuple(e for e in base.exclude if e != "openssl")  # remove:
    assert k3s_image.packages == (*base.packages, "openssl", "python3-zeroconf")
    rpi = load_image("rpi")  # through arm64-efi: the edits apply to the chain's merged list
    assert rpi.prune[:len(base.prune)] == base.prune and rpi.unused_libraries == base.unused_libraries
    assert rpi.prune[len(base.prune)] == "usr/lib/firmware/brcm/bcm43xx*"
    assert "usr/lib/*-linux-gnu/gconv" in rpi.prune
    assert rpi.packages == (*base.packages, "wpasupplicant", "firmware-brcm80211")
    assert img.overlays == ("base", "containers", "containerd")
    assert (img.kernel_package, img.cmdline, img.modules_exclude) == \
        (base.kernel_package, base.cmdline, base.modules_exclude)  # inherited mappings
    k3s = load_image("x86_64-k3s")
    assert k3s.k3s["enabled"] is True and k3s.memory_mb == 2048 and k3s.cpus == base.cpus  # qemu: merged key by key


def test_extends_problems_point_into_the_extending_file(tmp_path: Path) -> None:
    path = tmp_path / "variant.yaml"
    path.write_text("extends: x86_64-iso\nname: variant\nk3s:\n  enabled: true\n  sha256: {x86_64: nothex}\n")
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    rendered = [p.render().splitlines()[0] for p in exc.value.problems]
    assert f"{path}:3: k3s: 'version' is required" in rendered
    assert f"{path}:5: k3s.sha256.x86_64: 'nothex' is not valid here" in rendered


@pytest.mark.parametrize(("extends", "message"), [
    ("nosuch", "no image definition named 'nosuch' to extend"),
    ("self-loop", "'self-loop' extends itself (a cycle)"),
])
def test_extends_unknown_or_cyclic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extends: str, message: str) -> None:
    from builder import imagedef
    monkeypatch.setattr(imagedef, "IMAGES", tmp_path)
    path = tmp_path / "self-loop.yaml"
    path.write_text(f"extends: {extends}\nname: self-loop\n")
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    assert exc.value.problems[0].render().splitlines()[0] == f"{path}:1: extends: {message}"


LIST_EDITS = [  # (the extending file's body, its line with the problem, the rendered first line)
    ("packages:\n  append: tzdata\n", 4, "packages.append: must be a list"),
    ("packages:\n  add: [curl]\n", 4, "packages.add: 'add' is not a list edit"),
    ("packages:\n  remove: [busybox-static, nosuch]\n", 4, "packages.remove[1]: 'nosuch' is not in x86_64-iso's list"),
    ("packages:\n  append:\n    - curl\n    - tzdata\n", 6,
     "packages.append[1]: 'tzdata' is already in x86_64-iso's list"),
    ("kernel:\n  modules:\n    keep: {append: [kernel/fs/xfs]}\n", 5,
     "kernel.modules.keep: x86_64-iso has no list here to edit"),
    ("description: {remove: [x]}\n", 3, "description: x86_64-iso has no list here to edit"),
    # an appended item's own problem points at its own line, not the list's
    ("packages:\n  append:\n    - curl\n    - Not A Package\n", 6, "packages[10]: 'Not A Package' is not valid here"),
]


@pytest.mark.parametrize(("body", "line", "message"), LIST_EDITS)
def test_list_edit_problems(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = write(tmp_path, "extends: x86_64-iso\nname: variant\n" + body)
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    rendered = [p.render().splitlines()[0] for p in exc.value.problems]
    assert rendered == [f"{path}:{line}: {message}"], rendered


def test_list_edit_without_extends_is_a_schema_problem(tmp_path: Path) -> None:
    path = write(tmp_path, replace("packages:\n", "packages:\n  append: [curl]\nunused:\n"))
    with pytest.raises(BasaltError) as exc:
        load_image(str(path))
    first = exc.value.problems[0].render().splitlines()[0]
    assert first.startswith(f"{path}:{line_of(GOOD, 'packages:')}: packages:"), first


def test_list_edits_on_mappings_and_long_lists(tmp_path: Path) -> None:
    """Items that are mappings (outputs) are compared whole; a long edit is one pass (the loader
    bounds a document to 20,000 values: a quadratic edit of that would take minutes)."""
    many = "".join(f"    - usr/share/extra{i}\n" for i in range(9000))
    path = write(tmp_path, "extends: x86_64-iso\nname: variant\noutputs:\n  append:\n"
                           "    - {format: raw, firmware: [bios]}\nrootfs:\n  prune:\n    append:\n" + many)
    from builder.imagedef import load_document
    doc = load_document(path)
    base = load_image("x86_64-iso")
    assert doc.value["outputs"][-1] == {"format": "raw", "firmware": ["bios"]}
    assert len(doc.value["rootfs"]["prune"]) == len(base.prune) + 9000
    last = ("rootfs", "prune", len(base.prune) + 8999)
    assert doc.value["rootfs"]["prune"][last[2]] == "usr/share/extra8999" and doc.line_of(last) == 9 + 8999
    again = write(tmp_path, "extends: x86_64-iso\nname: variant\noutputs:\n  append:\n"
                            "    - {format: iso, firmware: [bios, uefi]}\n")
    with pytest.raises(BasaltError) as exc:
        load_image(str(again))
    item = "{'format': 'iso', 'firmware': ['bios', 'uefi']}"
    assert exc.value.problems[0].render().splitlines()[0] == \
        f"{again}:5: outputs.append[0]: '{item}' is already in x86_64-iso's list"
