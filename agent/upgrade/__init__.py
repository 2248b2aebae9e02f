"""A/B upgrades: slots, the boot selection, signed bundles, ``basalt upgrade``, the health gate."""
