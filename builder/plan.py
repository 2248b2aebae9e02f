"""Compile an image definition (and an optional site config) into a stage plan.

The plan is plain data: an ordered list of stages with fully resolved
options. ``inv plan`` prints it; ``build(plan)`` runs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from agent.config.validate import load_config
from agent.errors import BasaltError, Problem
from builder import debian, signing
from builder.download import sha256_file
from builder.imagedef import OVERLAYS, ROOT, ImageDefinition, Output, load_image
from builder.media import hardware, rpi
from builder.stages import BUILD, schema_for

AGENT_DIR = ROOT / "agent"
INITRAMFS_INIT = Path(__file__).parent / "initramfs" / "init"
DEFAULT_EPOCH = 1735689600  # 2025-01-01: stable timestamps when SOURCE_DATE_EPOCH is unset


@dataclass(frozen=True)
class PlannedStage:
    name: str  # unique in the plan: the module's name, or e.g. "iso-2" for a second ISO output
    options: dict[str, Any]
    module_name: str = ""  # the stage module (builder/stages/<module>.py); defaults to name

    @property
    def kind(self) -> str:
        return self.module_name or self.name


@dataclass(frozen=True)
class Plan:
    image: ImageDefinition
    stages: tuple[PlannedStage, ...]
    source_date_epoch: int = DEFAULT_EPOCH

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image.name, "source": str(self.image.source), "arch": str(self.image.arch),
                "version": self.image.version,
                "stages": [{"name": s.name, "module": s.kind, "options": s.options} for s in self.stages]}

    def describe(self) -> str:
        lines = [f"image {self.image.name} ({self.image.arch}, version {self.image.version}) "
                 f"from {self.image.source}"]
        for i, s in enumerate(self.stages, 1):
            lines.append(f"{i}. {s.name}" + (f" ({s.kind})" if s.kind != s.name else ""))
            for key, value in s.options.items():
                text = json.dumps(value) if not isinstance(value, str) else value
                if len(text) > 100:
                    text = text[:97] + "..."
                lines.append(f"     {key}: {text}")
        return "\n".join(lines)


def tree_digest(root: Path) -> str:
    """Hash of a source tree's file names, modes and contents (for cache keys)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if "__pycache__" not in p.parts):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest.update(f"L {rel} {os.readlink(path)}\n".encode())
        elif path.is_file():
            digest.update(f"F {rel} {path.stat().st_mode & 0o111:o} ".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        elif path.is_dir():
            digest.update(f"D {rel}\n".encode())
    return digest.hexdigest()


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else DEFAULT_EPOCH


def load_site_config(path: str | None, k3s_version: str | None = None) -> str | None:
    """Read and syntax-check a site config; its text is baked onto the boot medium."""
    if not path:
        return None
    loaded = load_config(path, k3s_version)  # the device's own loader: same normalisation, same verdicts
    if loaded.problems:
        raise BasaltError(loaded.problems)
    for warning in loaded.warnings:  # the config is valid: the build goes on
        print(warning.render(), file=sys.stderr)
    from builder import manifests
    problems = manifests.check(loaded.located, k3s_version)  # what the node cannot check: Kubernetes schemas
    if problems:
        raise BasaltError(problems)
    return Path(path).read_text()


def plan(image_name: str, config_path: str | None = None, etc_apt: Path = debian.APT_SOURCES,
         k3s_binary: str | None = None, k3s_artifacts: str | None = None) -> Plan:
    img = load_image(image_name)
    config_text = load_site_config(config_path, img.k3s.get("version"))
    return compile_plan(img, config_text, etc_apt, k3s_binary, k3s_artifacts)


def k3s_options(img: ImageDefinition, binary: str | None, artifacts: str | None) -> dict[str, Any]:
    from builder.stages.k3s import DEFAULT_URL
    k3s = img.k3s
    return {"enabled": bool(k3s.get("enabled")), "version": k3s.get("version"),
            "asset": img.arch.to_k3s_asset(), "arch": img.arch.to_k3s(),
            "sha256": k3s.get("sha256", {}).get(str(img.arch)), "url": k3s.get("url", DEFAULT_URL),
            "binary": str(Path(binary).resolve()) if binary else None,
            "artifacts": str(Path(artifacts).resolve()) if artifacts else None,
            "airgap_images": bool(k3s.get("airgap_images", False))}


def chart_files(img: ImageDefinition) -> list[dict[str, str]]:
    """Helm charts bundled into the image (``k3s.charts``), by path and content digest."""
    out = []
    for rel in img.k3s.get("charts", []) if img.k3s.get("enabled") else []:
        path = (img.source.parent / rel).resolve()
        if not path.is_file():
            raise BasaltError(Problem(f"k3s.charts: {rel}: no such file (looked in {img.source.parent})",
                                      str(img.source), path="k3s.charts",
                                      hint="chart paths are relative to the image definition's directory"))
        out.append({"name": path.name, "path": str(path), "digest": sha256_file(path)})
    return out


def controller_images(img: ImageDefinition) -> dict[str, str] | None:
    """``upgrade.controller_images``: the system-upgrade-controller's images, for the air-gap set."""
    path = img.controller_images
    if path is None:
        return None
    if not path.is_file():
        raise BasaltError(Problem(f"upgrade.controller_images: {path}: no such file", str(img.source),
                                  path="upgrade.controller_images",
                                  hint="an image archive (docker save or OCI) of the controller's images"))
    return {"path": str(path), "digest": sha256_file(path)}


def compile_plan(img: ImageDefinition, config_text: str | None = None, etc_apt: Path = debian.APT_SOURCES,
                 k3s_binary: str | None = None, k3s_artifacts: str | None = None) -> Plan:
    epoch = source_date_epoch()
    key = signing.resolve(img.signing_key, str(img.source))
    sources = debian.sources_for(img.suite, img.mirror, etc_apt, img.components)
    firmware = sorted({fw for o in img.outputs for fw in o.firmware})
    boot_packages = []
    if "bios" in firmware:
        boot_packages.append("grub-pc-bin")
    if "uefi" in firmware:
        boot_packages.append(f"grub-efi-{img.arch.to_debian()}-bin")
    if any(o.board == "rpi" for o in img.outputs):
        boot_packages += rpi.PACKAGES
    source_list = [{"uri": s.uri, "suites": list(s.suites), "components": list(s.components)} for s in sources]
    stages = [
        PlannedStage("fetch", {
            "arch": img.arch.to_debian(),
            "sources": source_list,
            "keyring": str(debian.keyring_path(img.keyring)),
            "packages": list(img.packages), "exclude": list(img.exclude),
            "kernel": img.kernel_package, "boot_packages": boot_packages,
            "kernel_deb": {"path": str(img.kernel_deb), "sha256": sha256_file(img.kernel_deb)}
            if img.kernel_deb else None,
        }),
        PlannedStage("k3s", k3s_options(img, k3s_binary, k3s_artifacts)),
        PlannedStage("rootfs", {
            "backend": img.backend, "arch": str(img.arch), "suite": img.suite, "sources": source_list,
            "prune": list(img.prune), "unused_libraries": list(img.unused_libraries),
            "overlays": [{"name": n, "digest": tree_digest(OVERLAYS / n)} for n in img.overlays],
            "agent_digest": tree_digest(AGENT_DIR) + hashlib.sha256((ROOT / "config/config.schema.json").read_bytes())
            .hexdigest()[:16], "version": img.version,
            "modules_exclude": list(img.modules_exclude), "modules_keep": list(img.modules_keep),
            "modules_profile": hardware.load(img.modules_profile), "initramfs_modules": list(img.initramfs_modules),
            "source_date_epoch": epoch, "k3s_charts": chart_files(img), "upgrade_key": key.public_text(),
            "upgrade_controller": img.upgrade_kubernetes, "controller_images": controller_images(img),
        }),
        PlannedStage("squashfs", {
            "compression": img.squashfs.get("compression", "zstd"),
            "level": img.squashfs.get("level", 15),
            "block_size_kb": img.squashfs.get("block_size_kb", 128),
            "source_date_epoch": epoch,
        }),
        PlannedStage("initramfs", {
            "modules": list(img.initramfs_modules), "compression": img.initramfs_compression,
            "readahead": img.initramfs_readahead,
            "init_digest": hashlib.sha256(INITRAMFS_INIT.read_bytes()).hexdigest(),
            "source_date_epoch": epoch,
        }),
        PlannedStage("bundle", {
            "arch": str(img.arch), "name": img.name, "version": img.version, "source_date_epoch": epoch,
            "signing_key": str(key.secret), "public_key": key.public_text(),
        }),
    ]
    assert tuple(s.name for s in stages) == BUILD
    formats = [o.format for o in img.outputs]
    for i, output in enumerate(img.outputs):
        name = output.format if formats.count(output.format) == 1 else f"{output.format}-{i + 1}"
        options = OUTPUT_OPTIONS[output.format](img, output, config_text, epoch)
        if output.format == "iso":  # its install plan is signed as the bundles are
            options.update(signing_key=str(key.secret), public_key=key.public_text())
        stages.append(PlannedStage(name, options, output.format))
    for s in stages:
        check_options(s)
    return Plan(img, tuple(stages), epoch)


def iso_options(img: ImageDefinition, output: Output, config_text: str | None, epoch: int) -> dict[str, Any]:
    return {"arch": str(img.arch), "firmware": list(output.firmware), "volume_id": output.volume_id,
            "cmdline": img.cmdline, "version": img.version, "name": img.name,
            "config": config_text, "source_date_epoch": epoch,
            "slot_mib": output.slot_mib, "boot_mib": output.boot_mib, "state_mib": output.state_mib}


def raw_options(img: ImageDefinition, output: Output, config_text: str | None, epoch: int) -> dict[str, Any]:
    return {"arch": str(img.arch), "firmware": list(output.firmware), "label": output.volume_id,
            "cmdline": img.cmdline, "version": img.version, "name": img.name, "config": config_text,
            "source_date_epoch": epoch, "slot_mib": output.slot_mib, "boot_mib": output.boot_mib,
            "state_mib": output.state_mib, "qcow2": output.qcow2, "board": output.board}


# One entry per output format (builder.stages.OUTPUTS): its stage options from the definition.
OUTPUT_OPTIONS = {"iso": iso_options, "raw": raw_options}


def check_options(stage: PlannedStage) -> None:
    """A plan that does not fit a stage's schema is a bug in plan(), not a user error."""
    try:
        jsonschema.validate(stage.options, schema_for(stage.kind))
    except jsonschema.ValidationError as exc:
        raise BasaltError(Problem(f"internal: stage {stage.name} options invalid: {exc.message}",
                                  path=".".join(map(str, exc.absolute_path)))) from None
