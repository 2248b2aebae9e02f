"""The on-device layout contract: labels, partition names and the paths that the builder, the
initramfs and the agent share. Named once, here; the builder imports it, the initramfs gets it as
``/etc/layout.sh`` (written by the initramfs stage from ``shell()``), the agent imports it.

Standard library only, and nothing imported: it is read on every boot.
"""

from __future__ import annotations

# Labels and partition names.
LIVE_LABEL = "BASALT"  # the ISO's volume label (an image definition's outputs[].volume_id may change it)
ESP_LABEL = "BASALT_EFI"  # the FAT image of an ISO's EFI boot entry
BOOT_LABEL = "BASALT_BOOT"  # a disk's boot partition (the ESP, FAT): its GPT name and its filesystem label
SLOTS = ("a", "b")
SLOT_LABELS = {"a": "BASALT_A", "b": "BASALT_B"}  # GPT partition names (a squashfs has no label)
SLOT_NUMBERS = {"a": 2, "b": 3}  # on an MBR disk (no names): the slot's partition number on the boot disk
STATE_NUMBER = 4  # on an MBR disk: the state partition's number
BIOS_LABEL = "BIOS_BOOT"  # GPT: GRUB's core image for BIOS
STATE_LABEL = "BASALT_STATE"  # ext4: /var, /home, /root, /opt, persistent config, k3s data, logs

# On the boot medium (the ISO, or a slot): the kernel, initramfs and root image, and the baked config.
MEDIUM_DIR = "/basalt"
MEDIUM_KERNEL = MEDIUM_DIR + "/vmlinuz"
MEDIUM_INITRD = MEDIUM_DIR + "/initrd.img"
MEDIUM_ROOT = MEDIUM_DIR + "/rootfs.squashfs"
MEDIUM_VERSION = MEDIUM_DIR + "/version"
MEDIUM_CONFIG = MEDIUM_DIR + "/config.yaml"
MEDIUM_CONFIG_BIN = MEDIUM_DIR + "/config.bin"  # the baked config, precompiled (agent/config/sources.py)
# Dropped at the root of a disk's boot partition (FAT) from any laptop: config sources too.
MEDIUM_SITE_CONFIG = "/basalt-config.yaml"
MEDIUM_NOCLOUD = ("/user-data", "/meta-data")  # NoCloud-style, as on a cidata seed
# Stamped by ``inv configure`` / ``inv fleet build`` onto a built artifact (builder/fleet/stamp.py): the
# site's config, or one per device chosen at boot by MAC address or serial (agent/config/site.py). On an
# ISO the file is reserved at build time, SITE_RESERVE bytes of NULs, and overwritten in place.
MEDIUM_SITE = MEDIUM_DIR + "/site.json"
SITE_RESERVE = 1 << 20
# On an ISO, what ``basalt install`` writes to a disk (builder/media/abdisk.py, agent/disk/install.py).
MEDIUM_INSTALL = MEDIUM_DIR + "/install"
INSTALL_PLAN = MEDIUM_INSTALL + "/plan.json"
# On a disk's boot partition, each slot's kernel and initramfs (GRUB 2.06 cannot read a zstd squashfs).
def slot_dir(slot: str) -> str:
    return f"{MEDIUM_DIR}/{slot}"


GRUB_ENV = "/boot/grub/grubenv"  # on the boot partition: the boot selection (basalt_slot=a|b)

# Written by the initramfs for the agent, under /run (a tmpfs).
RUN = "/run/basalt"
RUN_MODE = RUN + "/mode"  # live | installed
RUN_MEDIUM = RUN + "/medium"  # the boot medium, mounted read-only
RUN_MEDIUM_DEVICE = RUN + "/medium-device"
RUN_STATE = RUN + "/state"  # the state partition's mount point
RUN_STATE_DEVICE = RUN + "/state-device"
RUN_RW = RUN + "/rw"  # tmpfs upper layers of the writable overlays
RUN_SLOT = RUN + "/slot"  # the slot booted (a, b), or "live" from the ISO
RUN_TIMELINE = RUN + "/boot-timeline"  # the initramfs's steps: NAME=SECONDS (since the kernel started) ...
# Written by the agent.
RUN_STATUS = RUN + "/status.json"
RUN_REQUEST = RUN + "/request.json"  # from "basalt config apply|confirm", with SIGHUP
RUN_RESULT = RUN + "/result-{}.json"
RUN_LOG = RUN + "/log"
RUN_AGENT_LOG = RUN + "/agent.log"
RUN_NETWORK_UP = RUN + "/network-up"  # touched by the DHCP hook on a lease
RUN_MODULES_LOADED = RUN + "/modules-loaded"  # what coldplug loaded; "# ready" ends the part before ready
RUN_DATASOURCE = RUN + "/datasource"
RUN_NOCLOUD = RUN_DATASOURCE + "/nocloud"
RUN_CIDATA = RUN + "/cidata"  # where a NoCloud seed is mounted while it is copied
RUN_UPGRADE = RUN + "/upgrade"  # basalt upgrade's scratch (the manifest being verified), and its lock
RUN_SITE = RUN + "/site"  # the stamped config chosen for this node (mode 0600) and why
RUN_SITE_CONFIG = RUN_SITE + "/config.yaml"
RUN_SITE_MATCH = RUN_SITE + "/match.json"
RUN_INSTALL = RUN + "/install"  # basalt install's mount points (and its lock, beside it)

# In the read-only image, written by the builder.
AGENT = "/usr/sbin/basalt"  # the on-device command (and PID 1, as "basalt init")
BUSYBOX = "/usr/bin/busybox"
K3S_BINARY = "/usr/bin/k3s"
LIB = "/usr/lib/basalt"
LIB_VERSION = LIB + "/version"
LIB_SCHEMA = LIB + "/config.schema.json"
LIB_AGENT_DIGEST = LIB + "/agent.sha256"  # of the agent's code: a config validated by other code is checked again
LIB_SERVICES = LIB + "/services.d"  # {"argv": [...], "env": {...}} per file
LIB_K3S = LIB + "/k3s"  # k3s's read-only parts: version, images/, charts/
LIB_K3S_VERSION = LIB_K3S + "/version"
LIB_UPGRADE_CONTROLLER = LIB_K3S + "/system-upgrade-controller.yaml"  # with upgrade.kubernetes
LIB_UPGRADE_KEY = LIB + "/upgrade.pub"  # the minisign public key upgrade bundles are checked with
LIB_READAHEAD = LIB + "/readahead"  # what the boot reads first, read ahead by the initramfs (readahead.py)

# On the state partition (or the live tmpfs).
VAR_LIB = "/var/lib/basalt"
STATE_CONFIG = VAR_LIB + "/config.yaml"
STATE_CONFIG_D = VAR_LIB + "/config.d"
KNOWN_GOOD = VAR_LIB + "/last-known-good.json"
CONFIG_CACHE = VAR_LIB + "/validated-config.bin"  # sources validated at an earlier boot (config/sources.py)
REJECTED = VAR_LIB + "/rejected.json"  # a config trial that was not confirmed
SSH_STATE = VAR_LIB + "/ssh"  # the SSH host keys
SSH_HOST_KEY = SSH_STATE + "/dropbear_ed25519_host_key"
HTTP_DATASOURCE = VAR_LIB + "/datasource/http"
PERSISTENT_LOG = "/var/log/basalt"  # RUN_LOG links here when /var is the state partition
UPGRADE_STATE = VAR_LIB + "/upgrade.json"  # slots' versions, failed versions, the last upgrade's result
UPGRADE_DOWNLOADS = VAR_LIB + "/downloads"  # bundles being fetched (resumed from here)
STATE_DIRS = ("var", "home", "root", "opt")  # bound from the state partition, seeded from the image

# What the initramfs needs, as shell assignments (``shell()`` writes them).
INITRAMFS = {"live_label": LIVE_LABEL, "state_label": STATE_LABEL, "root_image": MEDIUM_ROOT, "run": RUN,
             "run_mode": RUN_MODE, "run_medium": RUN_MEDIUM, "run_medium_device": RUN_MEDIUM_DEVICE,
             "run_state": RUN_STATE, "run_state_device": RUN_STATE_DEVICE, "run_rw": RUN_RW, "run_slot": RUN_SLOT,
             "run_timeline": RUN_TIMELINE, "readahead": LIB_READAHEAD,
             "state_dirs": " ".join(STATE_DIRS), "slot_a": SLOT_LABELS["a"], "slot_b": SLOT_LABELS["b"],
             "slot_a_number": str(SLOT_NUMBERS["a"]), "slot_b_number": str(SLOT_NUMBERS["b"]),
             "state_number": str(STATE_NUMBER)}


def shell() -> str:
    """The contract for the initramfs's /init, which sources it: ``name='value'`` lines."""
    for value in INITRAMFS.values():
        if "'" in value:
            raise ValueError(f"layout value {value!r} cannot be quoted for the shell")
    return "".join(f"{name}='{value}'\n" for name, value in INITRAMFS.items())
