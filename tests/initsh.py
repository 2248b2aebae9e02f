"""The initramfs's shell functions (builder/initramfs/init), cut out to run alone in busybox sh: in
the unit tests against a made-up device list, in the boot tests against a guest's real sysfs."""

from __future__ import annotations

from builder.stages import initramfs


def init_functions(*names: str) -> str:
    """These shell functions, as builder/initramfs/init defines them (each ends at a lone ``}``)."""
    text = initramfs.INIT.read_text()
    out = []
    for name in names:
        start = text.index(f"\n{name}() {{") + 1
        out.append(text[start:text.index("\n}\n", start) + 3])
    return "".join(out)
