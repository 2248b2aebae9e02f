"""PID 1: the boot sequence (named phases), the main loop and its parts — services, devices,
provisioning, requests, the watchdog, power."""
