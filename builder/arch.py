"""The one place that knows how each architecture is spelled by each tool."""

from __future__ import annotations

import enum
import platform


class Architecture(enum.StrEnum):
    X86_64 = "x86_64"
    ARM64 = "arm64"

    @classmethod
    def host(cls) -> Architecture:
        machine = platform.machine()
        return cls.ARM64 if machine in ("aarch64", "arm64") else cls.X86_64

    def to_debian(self) -> str:
        return {Architecture.X86_64: "amd64", Architecture.ARM64: "arm64"}[self]

    def to_qemu(self) -> str:
        return {Architecture.X86_64: "x86_64", Architecture.ARM64: "aarch64"}[self]

    def to_qemu_machine(self) -> str:
        return {Architecture.X86_64: "q35", Architecture.ARM64: "virt"}[self]

    def to_qemu_cpu(self) -> str | None:
        """-cpu for TCG. x86: QEMU's qemu64 with RDRAND, which every x86 machine since 2012 has; without
        it the kernel's random pool waits for jitter entropy (1 s more under TCG, and Python's start
        waits with it: docs/architecture.md, "Boot time"). arm64: cortex-a57 (plain max is 2-3x slower
        under TCG; reference/arm-boot.md), with a virtio RNG beside it (``qemu_devices``)."""
        return {Architecture.X86_64: "qemu64,+rdrand", Architecture.ARM64: "cortex-a57"}[self]

    def qemu_devices(self) -> list[str]:
        """Devices a machine of this architecture has besides its disks and NIC: arm64 servers and
        cloud VMs have a hardware RNG (here virtio's; the image's initramfs loads its driver)."""
        return {Architecture.X86_64: [], Architecture.ARM64: ["-device", "virtio-rng-pci"]}[self]

    def grub_serial(self) -> bool:
        """GRUB drives the serial port itself (the PC's 16550, com0); elsewhere (arm64 EFI) the
        firmware's console is already the serial port and GRUB has no serial driver for it."""
        return self == Architecture.X86_64

    def to_efi(self) -> str:
        """Suffix of the removable-media EFI loader name (BOOTX64.EFI)."""
        return {Architecture.X86_64: "X64", Architecture.ARM64: "AA64"}[self]

    def to_grub_efi(self) -> str:
        return {Architecture.X86_64: "x86_64-efi", Architecture.ARM64: "arm64-efi"}[self]

    def to_grub_bios(self) -> str | None:
        return {Architecture.X86_64: "i386-pc", Architecture.ARM64: None}[self]

    def to_oci(self) -> str:
        return self.to_debian()

    def to_k3s_asset(self) -> str:
        """The release's binary name."""
        return {Architecture.X86_64: "k3s", Architecture.ARM64: "k3s-arm64"}[self]

    def to_k3s(self) -> str:
        """The release's arch suffix: sha256sum-<it>.txt, k3s-airgap-images-<it>.tar.zst."""
        return {Architecture.X86_64: "amd64", Architecture.ARM64: "arm64"}[self]
