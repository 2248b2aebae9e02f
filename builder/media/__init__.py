"""What the stages assemble: GRUB, disk images and their partitions, the A/B disk's plan, the
Raspberry Pi's boot files, the boot medium's files, cpio and OCI archives, the apps controller's
image, the system-upgrade-controller's manifests."""
