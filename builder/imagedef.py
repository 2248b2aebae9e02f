"""Image definitions (``images/<name>.yaml``): load, validate, and type."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import layout
from agent.config.yamlsource import Located, load
from agent.errors import BasaltError, Problem
from builder.arch import Architecture
from builder.validate import load_schema, validate

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"  # what builds publish: out/<image>/, out/sites/<site>/, reports
IMAGES = ROOT / "images"
OVERLAYS = ROOT / "overlays"

DEFAULT_PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale")
DEFAULT_INITRAMFS_MODULES = ("loop", "squashfs", "isofs", "overlay", "sr_mod")


@dataclass(frozen=True)
class Output:
    format: str
    firmware: tuple[str, ...]
    volume_id: str
    slot_mib: int = 1024  # raw: each slot partition
    boot_mib: int = 128  # raw: the ESP
    state_mib: int = 64  # raw: the state partition as built (grown on first boot)
    qcow2: bool = False
    board: str | None = None  # raw: "rpi" (a Raspberry Pi SD card: MBR, the Pi firmware and U-Boot)


@dataclass(frozen=True)
class ImageDefinition:
    name: str
    arch: Architecture
    source: Path
    description: str
    version: str
    suite: str
    mirror: str | None
    components: tuple[str, ...]
    keyring: str | None
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    backend: str
    prune: tuple[str, ...]
    unused_libraries: tuple[str, ...]  # rootfs.unused_libraries: removed when nothing in the root loads them
    overlays: tuple[str, ...]
    kernel_package: str
    kernel_deb: Path | None  # a local kernel package used instead of kernel_package's
    cmdline: str
    modules_exclude: tuple[str, ...]
    modules_keep: tuple[str, ...]
    modules_profile: str  # a hardware class (builder/media/hardware.py): which modules the image keeps
    initramfs_modules: tuple[str, ...]
    initramfs_compression: str
    initramfs_readahead: bool
    k3s: dict[str, Any]
    squashfs: dict[str, Any]
    outputs: tuple[Output, ...]
    memory_mb: int
    cpus: int
    signing_key: Path | None = None  # upgrade.signing_key: the minisign secret key bundles are signed with
    upgrade_kubernetes: bool = False  # upgrade.kubernetes: ship the system-upgrade-controller
    controller_images: Path | None = None  # upgrade.controller_images: its images, for the air-gap set

    def artifact(self, suffix: str, out: Path | None = None) -> Path:
        """Where a build publishes its ``suffix`` artifact: out/<name>/<name>-<version>.<suffix>."""
        return (out or OUT) / self.name / f"{self.name}-{self.version}.{suffix}"

    def medium(self) -> tuple[str, Path]:
        """The built medium to boot: ("iso", the ISO) or ("disk", the raw disk image), by the first
        output; a clear error when it is not built."""
        kind, suffix = ("disk", "img") if self.outputs[0].format == "raw" else ("iso", "iso")
        path = self.artifact(suffix)
        if not path.is_file():
            raise BasaltError(Problem(f"{path} does not exist", hint=f"build it first: inv build --image {self.name}"))
        return kind, path


def project_version() -> str:
    import tomllib
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def find(name_or_path: str) -> Path:
    """``x86_64-iso`` -> ``images/x86_64-iso.yaml``; a path is taken as is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        return path
    candidate = IMAGES / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in IMAGES.glob("*.yaml"))
        raise BasaltError(Problem(f"no image definition named '{name_or_path}'",
                                  hint=f"available: {', '.join(known)} (or pass a path to a .yaml file)"))
    return candidate


def load_image(name_or_path: str) -> ImageDefinition:
    doc = load_document(find(name_or_path))
    problems = validate(doc, load_schema("image"))
    if problems:
        raise BasaltError(problems)
    problems = [p for check in CHECKS for p in check(doc)]
    if problems:
        raise BasaltError(problems)
    return _typed(doc)


def load_document(path: Path, seen: tuple[Path, ...] = ()) -> Located:
    """The definition at ``path`` with its ``extends`` chain merged in: mappings merge key by
    key, a list written as ``{append: [...], remove: [...]}`` edits the base's list, anything else
    (a list written out included) the extending file replaces. A base is checked on its own
    first, so problems left are in the extending file, and carry its line numbers."""
    doc = load(path)
    if not isinstance(doc.value, dict):
        raise BasaltError(doc.problem([], "an image definition must be a mapping",
                                      hint="start from images/x86_64-iso.yaml"))
    base_name = doc.value.get("extends")
    if base_name is None:
        return doc
    if not isinstance(base_name, str) or not (IMAGES / f"{base_name}.yaml").is_file():
        known = sorted(p.stem for p in IMAGES.glob("*.yaml"))
        raise BasaltError(doc.problem(["extends"], f"no image definition named '{base_name}' to extend",
                                      f"available: {', '.join(known)}"))
    base_path = (IMAGES / f"{base_name}.yaml").resolve()
    if base_path in seen or base_path == path.resolve():
        raise BasaltError(doc.problem(["extends"], f"'{base_name}' extends itself (a cycle)",
                                      "an image may extend one that does not lead back to it"))
    base = load_document(base_path, (*seen, path.resolve()))
    problems = validate(base, load_schema("image")) + [p for check in CHECKS for p in check(base)]
    if problems:
        raise BasaltError(problems)
    lines = dict(doc.lines)
    problems = []
    value = _merge(base.value, {k: v for k, v in doc.value.items() if k != "extends"}, (), doc, base_name,
                   lines, problems)
    if problems:
        raise BasaltError(problems)
    return Located(value, doc.source, lines)


LIST_EDITS = ("append", "remove")


def _merge(base: Any, over: Any, path: tuple[str | int, ...], doc: Located, base_name: str,
           lines: dict[tuple[str | int, ...], int], problems: list[Problem]) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v, (*path, k), doc, base_name, lines, problems)
                           for k, v in over.items()}}
    if isinstance(base, list) and isinstance(over, dict):
        return _edit_list(base, over, path, doc, base_name, lines, problems)
    if isinstance(over, dict) and over and over.keys() <= set(LIST_EDITS):
        problems.append(doc.problem(path, f"{base_name} has no list here to edit",
                                    "write the whole list instead of append:/remove:"))
    return over


def _edit_list(base: list[Any], edit: dict[str, Any], path: tuple[str | int, ...], doc: Located, base_name: str,
               lines: dict[tuple[str | int, ...], int], problems: list[Problem]) -> list[Any]:
    """The base's list less ``edit['remove']``, then ``edit['append']``; each appended item's
    lines are moved to its place in the merged list, so a problem in it points at its own line."""
    found = len(problems)
    for key in edit:
        if key not in LIST_EDITS:
            problems.append(doc.problem((*path, key), f"'{key}' is not a list edit",
                                        "the base's list is edited with append: and remove:, or replaced by a list"))
    for key in LIST_EDITS:
        if key in edit and not isinstance(edit[key], list):
            problems.append(doc.problem((*path, key), "must be a list",
                                        f"e.g. {key}: [item, ...]"))
    if len(problems) > found:
        return base
    removed = edit.get("remove", [])
    in_base = {_key(item) for item in base}
    for i, item in enumerate(removed):
        if _key(item) not in in_base:
            problems.append(doc.problem((*path, "remove", i), f"'{item}' is not in {base_name}'s list",
                                        "remove only what the base has (a typo?)"))
    gone = {_key(item) for item in removed}
    kept = [item for item in base if _key(item) not in gone]
    in_kept = {_key(item) for item in kept}
    appended = edit.get("append", [])
    for i, item in enumerate(appended):
        if _key(item) in in_kept:
            problems.append(doc.problem((*path, "append", i), f"'{item}' is already in {base_name}'s list",
                                        "drop it here: the base's list has it"))
    at = (*path, "append")  # one pass over the line map, however long the lists (a definition is bounded)
    for where, line in doc.lines.items():
        if where[:len(at)] == at and len(where) > len(at) and isinstance(where[len(at)], int):
            lines[(*path, len(kept) + int(where[len(at)]), *where[len(at) + 1:])] = line
    return kept + list(appended)


def _key(item: Any) -> str:
    """An item's identity for list edits, hashable whatever it is (a mapping in ``outputs``)."""
    import json
    return json.dumps(item, sort_keys=True, default=str)


def _typed(doc: Located) -> ImageDefinition:
    v = doc.value
    arch = Architecture(v["arch"])
    deb = v["debian"]
    kernel = v["kernel"]
    outputs = tuple(Output(o["format"], tuple(o.get("firmware", default_firmware(arch))),
                           o.get("volume_id", layout.LIVE_LABEL if o["format"] == "iso" else layout.BOOT_LABEL),
                           **{k: o[k] for k in ("slot_mib", "boot_mib", "state_mib", "qcow2", "board") if k in o})
                    for o in v["outputs"])
    return ImageDefinition(
        name=v["name"], arch=arch, source=Path(doc.source), description=v.get("description", ""),
        version=v.get("version") or project_version(), suite=deb["suite"], mirror=deb.get("mirror"),
        components=tuple(deb.get("components", ["main"])), keyring=deb.get("keyring"),
        packages=tuple(v["packages"]), exclude=tuple(v.get("exclude", [])),
        backend=v.get("rootfs", {}).get("backend", "mmdebstrap"),
        prune=tuple(v.get("rootfs", {}).get("prune", DEFAULT_PRUNE)),
        unused_libraries=tuple(v.get("rootfs", {}).get("unused_libraries", [])),
        overlays=tuple(v.get("overlays", ["base"])), kernel_package=kernel["package"],
        kernel_deb=(Path(doc.source).parent / kernel["deb"]).resolve() if "deb" in kernel else None,
        cmdline=kernel.get("cmdline", ""),
        modules_exclude=tuple(kernel.get("modules", {}).get("exclude", [])),
        modules_keep=tuple(kernel.get("modules", {}).get("keep", [])),
        modules_profile=kernel.get("modules", {}).get("profile", "all"),
        initramfs_modules=tuple(kernel.get("initramfs", {}).get("modules", DEFAULT_INITRAMFS_MODULES)),
        initramfs_compression=kernel.get("initramfs", {}).get("compression", "lz4"),
        initramfs_readahead=kernel.get("initramfs", {}).get("readahead", True),
        k3s=dict(v.get("k3s", {"enabled": False})), squashfs=dict(v.get("squashfs", {})),
        signing_key=(Path(doc.source).parent / Path(v["upgrade"]["signing_key"]).expanduser()).resolve()
        if v.get("upgrade", {}).get("signing_key") else None,
        upgrade_kubernetes=bool(v.get("upgrade", {}).get("kubernetes", False)),
        controller_images=(Path(doc.source).parent / v["upgrade"]["controller_images"]).resolve()
        if v.get("upgrade", {}).get("controller_images") else None,
        outputs=outputs, memory_mb=v.get("qemu", {}).get("memory_mb", 512),
        cpus=v.get("qemu", {}).get("cpus", 2),
    )


def default_firmware(arch: Architecture) -> list[str]:
    return ["bios", "uefi"] if arch.to_grub_bios() else ["uefi"]


# --- semantic checks: each explains the fix -----------------------------------

def check_overlays_exist(doc: Located) -> list[Problem]:
    out = []
    for i, name in enumerate(doc.value.get("overlays", [])):
        if not (OVERLAYS / name / "overlay.yaml").is_file():
            known = sorted(p.name for p in OVERLAYS.iterdir() if (p / "overlay.yaml").is_file())
            out.append(doc.problem(["overlays", i], f"overlay '{name}' does not exist",
                                   f"available overlays: {', '.join(known)}"))
    return out


def check_firmware_fits_arch(doc: Located) -> list[Problem]:
    arch = Architecture(doc.value["arch"])
    out = []
    for i, o in enumerate(doc.value.get("outputs", [])):
        for j, fw in enumerate(o.get("firmware", [])):
            if fw == "bios" and arch.to_grub_bios() is None:
                out.append(doc.problem(["outputs", i, "firmware", j], f"'bios' firmware does not exist on {arch}",
                                       "use firmware: [uefi]"))
    return out


def check_upgrade_kubernetes(doc: Located) -> list[Problem]:
    upgrade = doc.value.get("upgrade", {})
    if upgrade.get("kubernetes") and not doc.value.get("k3s", {}).get("enabled"):
        return [doc.problem(["upgrade", "kubernetes"], "the system-upgrade-controller runs on k3s, which this image "
                            "does not enable", "set k3s.enabled: true (or extend x86_64-k3s)")]
    if upgrade.get("controller_images") and not upgrade.get("kubernetes"):
        return [doc.problem(["upgrade", "controller_images"], "controller images without upgrade.kubernetes",
                            "set upgrade.kubernetes: true, or remove controller_images")]
    return []


def check_k3s_pinned_for_arch(doc: Located) -> list[Problem]:
    k3s = doc.value.get("k3s", {})
    if k3s.get("enabled") and "sha256" in k3s and doc.value["arch"] not in k3s["sha256"]:
        return [doc.problem(["k3s", "sha256"], f"no pinned sha256 for arch '{doc.value['arch']}'",
                            "add the value from the release's sha256sum file")]
    return []


def check_kernel_console(doc: Located) -> list[Problem]:
    cmdline = doc.value.get("kernel", {}).get("cmdline", "")
    if "root=" in cmdline:
        return [doc.problem(["kernel", "cmdline"], "root= is set by the boot loader, not the image definition",
                            "remove root=...; the initramfs finds the root by label")]
    return []


def check_disk_label(doc: Located) -> list[Problem]:
    out = []
    for i, o in enumerate(doc.value.get("outputs", [])):
        if o.get("format") == "raw" and len(o.get("volume_id", "")) > 11:
            out.append(doc.problem(["outputs", i, "volume_id"], "a disk's boot partition label (FAT) has at most "
                                   "11 characters", f"the default is {layout.BOOT_LABEL}"))
    return out


def check_kernel_deb(doc: Located) -> list[Problem]:
    deb = doc.value.get("kernel", {}).get("deb")
    if deb is not None and not (Path(doc.source).parent / deb).is_file():
        return [doc.problem(["kernel", "deb"], f"no such file: {deb} (looked in {Path(doc.source).parent})",
                            "kernel.deb is a path to a .deb, relative to the image definition")]
    return []


def check_board(doc: Located) -> list[Problem]:
    """A Raspberry Pi card is a raw arm64 disk booted through U-Boot's UEFI (builder/media/rpi.py)."""
    out = []
    for i, o in enumerate(doc.value.get("outputs", [])):
        if "board" not in o:
            continue
        if o.get("format") != "raw":
            out.append(doc.problem(["outputs", i, "board"], "board: only a raw disk image is made for a board",
                                   "use format: raw"))
        elif doc.value["arch"] != "arm64":
            out.append(doc.problem(["outputs", i, "board"], f"board '{o['board']}' needs arch: arm64",
                                   "the Raspberry Pi card boots Debian's arm64 kernel"))
        elif o.get("firmware", ["uefi"]) != ["uefi"]:
            out.append(doc.problem(["outputs", i, "firmware"], f"board '{o['board']}' boots GRUB through "
                                   "U-Boot's UEFI", "use firmware: [uefi]"))
    return out


CHECKS = (check_upgrade_kubernetes, check_overlays_exist, check_firmware_fits_arch, check_k3s_pinned_for_arch,
          check_kernel_console, check_disk_label, check_board, check_kernel_deb)
