"""Disks: partition tables, which disks may be erased, ``basalt install``, growing the state
partition at first boot."""
