"""Booting artifacts in QEMU: the guest (``qemu``), its loopback relay, NoCloud seeds, and the
boot files read from a medium for a direct kernel boot."""
