"""Boot images in QEMU: TCG by default, user networking restricted to host
forwards, serial console captured, always bounded in time and killed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import BasaltError, Problem
from builder.arch import Architecture
from builder.imagedef import ImageDefinition
from builder.vm import bootfiles
from builder.vm.bootfiles import disk_format, qemu_img

# Each ends at the first non-digit after its last number: the console is read while it is being
# written, and a line cut mid-number ("errors=1" of "errors=12") must not match.
READY = re.compile(r"basalt: ready version=(\S+) boot_ms=(\d+) mem_used_kb=(\d+) errors=(\d+)(?=\D)")
IDLE = re.compile(r"basalt: idle mem_used_kb=(\d+) rss_kb=(\d+)(?=\D)")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# UEFI firmware per architecture: (code, variables template, Debian package)
UEFI = {Architecture.X86_64: (OVMF_CODE, OVMF_VARS, "ovmf"),
        Architecture.ARM64: (Path("/usr/share/AAVMF/AAVMF_CODE.fd"), Path("/usr/share/AAVMF/AAVMF_VARS.fd"),
                             "qemu-efi-aarch64")}
TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "qemu-system-aarch64": "qemu-system-arm"}
# Accelerators by the name users give them. TCG is single-threaded by default: under
# multi-threaded TCG (one host thread per vCPU) on a 2-core host, guests locked up (soft
# lockups in runc, silent hangs before the initramfs); builder/bench/trials.py measured both
# (docs/architecture.md, "QEMU"). ``mttcg`` and ``kvm`` are there for those who want them.
ACCELS = {"tcg": "tcg,thread=single", "mttcg": "tcg,thread=multi", "kvm": "kvm"}
SSH_OPTIONS = ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null")  # a fresh guest's host key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RELAY = Path(__file__).resolve().parent / "relay.py"


def power_of_two(n: int) -> int:
    """The smallest power of two not below ``n``."""
    return 1 << max(n - 1, 0).bit_length()


@dataclass
class Guest:
    """One QEMU guest. Use as a context manager: it is always killed on exit."""

    iso: Path | None  # the medium to boot: an ISO (a CD) or, with boot_disk, None
    arch: Architecture = Architecture.X86_64
    # bios, uefi, or direct: QEMU loads the medium's own kernel and initramfs with the command line
    # its GRUB would give (bootfiles.boot_files), for what is not about the firmware or the boot loader.
    firmware: str = "bios"
    accel: str = "tcg"
    memory_mb: int = 512
    cpus: int = 2
    ssh_port: int = 0
    guestfwd: list[tuple[str, int]] = field(default_factory=list)  # (guest ip:port, host port on 127.0.0.1)
    extra_cdroms: list[Path] = field(default_factory=list)  # e.g. a NoCloud seed
    disks: list[Path] = field(default_factory=list)  # raw virtio disks, e.g. a state disk
    # A disk image to boot from, through a qcow2 overlay in the work directory (the image is never
    # written), of this virtual size in MiB (0: the image's own size).
    boot_disk: Path | None = None
    boot_disk_mib: int = 0
    boot_disk_in_place: bool = False  # write the boot disk itself (raw, or a .qcow2 file), e.g. across power cuts
    # Direct kernel boot (skips the firmware's boot loader): (vmlinuz, initrd, kernel command line).
    direct: tuple[Path, Path, str] | None = None
    machine: str = ""  # default: the architecture's (q35, virt)
    mac: str = ""  # the NIC's MAC address (default: QEMU's 52:54:00:12:34:56)
    serial: str = ""  # x86: the machine's serial number (SMBIOS type 1: DMI product_serial)
    # x86: QEMU's i6300esb watchdog card; without it the only watchdog is q35's chipset TCO timer
    # (iTCO_wdt, behind lpc_ich), as on an Intel board, whose reboot strap it then has (QEMU's q35
    # straps it off: a TCO timer that expires does not reset the machine)
    i6300esb: bool = True
    # A board's card (boot_disk) booted the board's way: "rpi" runs QEMU's raspi3b with U-Boot and
    # the device tree taken from the card's boot partition, the card as its SD card (padded to a
    # power of two in the overlay), networking by USB (usb-net), the console on the second UART.
    board: str | None = None
    # Snapshots of the running guest (snapshot()/restore(), QEMU's savevm/loadvm): they are kept in
    # the qcow2 boot disk (an overlay, or a .qcow2 booted in place), or for a guest with none in a
    # qcow2 image beside the console log that the guest does not see. ``loadvm``: start from that
    # snapshot of the .qcow2 boot disk instead of from power-on.
    snapshots: bool = False
    loadvm: str = ""
    append: str = ""  # with firmware="direct": more kernel command line
    _serial: socket.socket | None = None
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None

    @property
    def console_log(self) -> Path:
        assert self.workdir
        return self.workdir / "console.log"

    def argv(self) -> list[str]:
        assert self.workdir
        if self.board == "rpi":
            return self._rpi_argv()
        binary = f"qemu-system-{self.arch.to_qemu()}"
        if shutil.which(binary) is None:
            raise BasaltError(Problem(f"{binary} not found", hint=f"apt-get install {TOOLS[binary]}"))
        net = self._netdev()
        x86 = self.arch == Architecture.X86_64
        cpu = self.arch.to_qemu_cpu()
        argv = [binary, "-machine", self.machine or self.arch.to_qemu_machine(), "-accel", ACCELS[self.accel],
                *(["-cpu", cpu] if cpu else []), "-m", str(self.memory_mb),
                "-smp", str(self.cpus), "-display", "none", "-no-user-config", "-nodefaults",
                "-chardev", f"socket,id=ser0,path={self.workdir / 'serial.sock'},server=on,wait=off,"
                            f"logfile={self.console_log}",
                "-serial", "chardev:ser0", *(["-vga", "std"] if x86 else []),
                "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
                "-netdev", net, "-device", "virtio-net-pci,netdev=n0" + (f",mac={self.mac}" if self.mac else ""),
                # x86: a hardware watchdog the node arms (agent/pid1/watchdog.py); its expiry resets the machine
                *(["-device", "i6300esb"] if x86 and self.i6300esb else []),
                *(["-global", "ICH9-LPC.noreboot=false"] if x86 and not self.i6300esb else []),
                *(["-action", "watchdog=reset"] if x86 else []),
                *(["-smbios", f"type=1,serial={self.serial}"] if self.serial and x86 else []),
                *self.arch.qemu_devices()]
        cdroms = [*([self.iso] if self.iso is not None else []), *self.extra_cdroms]
        if cdroms and not x86:  # no IDE on virt: CDs on virtio-scsi
            argv += ["-device", "virtio-scsi-pci,id=scsi0"]
        if self.boot_disk is not None:
            drive = f"file={self.boot_disk},format={disk_format(self.boot_disk)}" if self.boot_disk_in_place else \
                f"file={self.overlay()},format=qcow2"
            loaded = self.firmware == "direct" or self.direct  # a kernel QEMU loads (-kernel) takes boot index 0
            argv += ["-drive", f"{drive},if=none,id=boot0",
                     "-device", "virtio-blk-pci,drive=boot0" + ("" if loaded else ",bootindex=0")]
        if self.iso is not None:
            argv += self._cdrom(self.iso, 0, boot=self.boot_disk is None)
        if self.firmware == "direct" and not self.direct:
            medium = self.iso or self.boot_disk
            assert medium, "firmware='direct' boots a medium"
            kernel, initrd, cmdline = bootfiles.boot_files(medium, self.workdir)
            self.direct = (kernel, initrd, f"{cmdline} {self.append}".strip())
        if self.direct:
            argv += ["-kernel", str(self.direct[0]), "-initrd", str(self.direct[1]), "-append", self.direct[2]]
        for i, cd in enumerate(self.extra_cdroms, start=1):
            argv += self._cdrom(cd, i)
        for i, disk in enumerate(self.disks):
            argv += ["-drive", f"file={disk},format={disk_format(disk)},if=none,id=disk{i}",
                     "-device", f"virtio-blk-pci,drive=disk{i}"]
        if self.snapshots and self.boot_disk is None:  # somewhere for savevm to keep the machine's state
            vmstate = self.workdir / "vmstate.qcow2"
            if not vmstate.exists():
                qemu_img("create", "-q", "-f", "qcow2", str(vmstate), "4G")
            argv += ["-blockdev", f"driver=qcow2,node-name=vmstate,file.driver=file,file.filename={vmstate}"]
        if self.loadvm:
            argv += ["-loadvm", self.loadvm]
        if self.firmware == "uefi":
            code, variables, package = UEFI[self.arch]
            if not code.is_file():
                raise BasaltError(Problem(f"{code} not found", hint=f"apt-get install {package}"))
            vars_copy = self.workdir / variables.name
            shutil.copyfile(variables, vars_copy)
            argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                     "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
        return argv

    def _netdev(self) -> str:
        if not self.ssh_port:
            self.ssh_port = free_port()
        net = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22"
        for guest, host_port in self.guestfwd:  # a relay per connection, to 127.0.0.1 only
            relay = f"{sys.executable} {RELAY} {int(host_port)}"
            if "," in relay:
                raise BasaltError(Problem(f"{relay}: a comma cannot be passed in QEMU's -netdev option",
                                          hint="run from a directory whose path has no comma"))
            net += f",guestfwd=tcp:{guest}-cmd:{relay}"
        return net

    def _rpi_argv(self) -> list[str]:
        """raspi3b: 4 Cortex-A53s and 1 GiB, fixed by the machine. The first UART (PL011, ttyAMA0)
        goes to a file; the second (the mini-UART, ttyS1: the Pi's header console) is the console."""
        assert self.workdir and self.boot_disk
        binary = "qemu-system-aarch64"
        if shutil.which(binary) is None:
            raise BasaltError(Problem(f"{binary} not found", hint=f"apt-get install {TOOLS[binary]}"))
        uboot, dtb = bootfiles.rpi_boot_files(self.boot_disk, self.workdir)
        return [binary, "-machine", "raspi3b", "-accel", ACCELS[self.accel], "-m", "1024",
                "-display", "none", "-no-user-config", "-nodefaults", "-no-reboot",
                "-kernel", str(uboot), "-dtb", str(dtb),
                "-drive", f"file={self.boot_disk},format=raw,if=sd" if self.boot_disk_in_place else
                f"file={self.overlay()},format=qcow2,if=sd",
                "-serial", f"file:{self.workdir / 'uart0.log'}",
                "-chardev", f"socket,id=ser0,path={self.workdir / 'serial.sock'},server=on,wait=off,"
                            f"logfile={self.console_log}",
                "-serial", "chardev:ser0",
                "-qmp", f"unix:{self.workdir / 'qmp.sock'},server=on,wait=off",
                "-netdev", self._netdev(), "-device", "usb-net,netdev=n0"]

    def _cdrom(self, path: Path, index: int, boot: bool = False) -> list[str]:
        if self.arch == Architecture.X86_64:
            return ["-drive", f"file={path},media=cdrom,readonly=on,if=ide,index={index}",
                    *(["-boot", "order=d"] if boot else [])]
        return ["-drive", f"file={path},media=cdrom,readonly=on,if=none,id=cd{index}",
                "-device", f"scsi-cd,drive=cd{index}" + (",bootindex=0" if boot else "")]

    def overlay(self) -> Path:
        """A copy-on-write overlay over the boot disk (made once per guest)."""
        assert self.workdir and self.boot_disk
        path = self.workdir / "boot-overlay.qcow2"
        if not path.exists():
            size = f"{self.boot_disk_mib}M" if self.boot_disk_mib else str(self.boot_disk.stat().st_size)
            if self.board == "rpi":  # QEMU takes an SD card only of a power-of-two size
                size = str(power_of_two(max(self.boot_disk_mib << 20, self.boot_disk.stat().st_size)))
            qemu_img("create", "-q", "-f", "qcow2", "-b", str(self.boot_disk.resolve()),
                     "-F", disk_format(self.boot_disk), str(path), size)
        return path

    def snapshot(self, name: str, timeout: float = 120) -> None:
        """Save the running machine, memory and disks, as ``name`` (QEMU's savevm)."""
        self.close_ssh()  # no connection in the saved state that the host side no longer has
        self._hmp(f"savevm {name}", timeout)

    def restore(self, name: str, timeout: float = 120) -> int:
        """Go back to snapshot ``name`` (loadvm): the machine, its memory and its disks as they were
        then, running; returns the console offset from which what follows was printed."""
        mark = len(self.console())
        self.close_ssh()
        self._hmp(f"loadvm {name}", timeout)
        return mark

    def _hmp(self, command: str, timeout: float) -> None:
        reply = self.qmp("human-monitor-command", {"command-line": command}, timeout=timeout)
        said = str(reply.get("return", reply.get("error", ""))).strip()
        if "error" in reply or said:  # HMP prints nothing when it worked
            raise RuntimeError(f"QEMU {command}: {said}")

    def __enter__(self) -> Guest:
        self.workdir = Path(tempfile.mkdtemp(prefix="basalt-qemu-"))
        self._launch()
        return self

    def _launch(self) -> None:
        assert self.workdir
        self.console_log.write_bytes(b"")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "qemu.err", "wb"))
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self.workdir and not os.environ.get("BASALT_KEEP_QEMU_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float, start: int = 0) -> re.Match[str]:
        """Wait until the serial console shows ``pattern`` (after offset ``start``); raise
        TimeoutError with the console's tail."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = regex.search(self.console(), start)
            if m:
                return m
            if self.proc and self.proc.poll() is not None:
                err = (self.workdir / "qemu.err").read_text(errors="replace") if self.workdir else ""
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}) before {regex.pattern!r}: "
                                   f"{err.strip()}\nconsole tail:\n{self.tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"no {regex.pattern!r} on the console after {timeout:.0f}s; console tail:\n{self.tail()}"
                           f"\n{self.cpu_state()}")

    def cpu_state(self) -> str:
        """Where the vCPUs are (for a guest that went silent, e.g. in firmware): RIP and CR
        registers from QMP, or why they could not be read."""
        try:
            reply = self.qmp("human-monitor-command", {"command-line": "info registers -a"})
        except (OSError, ValueError) as exc:
            return f"cpu state: unavailable ({exc})"
        text = str(reply.get("return", reply.get("error", "")))
        heads = ("CPU#", "RIP=", "EIP=", "CS =", "CR0=", "EFER=")
        keep = [line for line in text.splitlines() if line.startswith(heads)]
        return "cpu state (QMP info registers):\n" + "\n".join(keep)

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console."""
        assert self.workdir
        if self._serial is None:
            self._serial = socket.socket(socket.AF_UNIX)
            self._serial.connect(str(self.workdir / "serial.sock"))
            # QEMU logs only what the socket accepted: keep reading so output never stalls.
            threading.Thread(target=self._drain, args=(self._serial,), daemon=True).start()
        for ch in text:  # a character at a time: the guest UART has a 16-byte FIFO
            self._serial.sendall(ch.encode())
            time.sleep(0.005)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def settle(self, quiet: float = 1.5, timeout: float = 30.0) -> None:
        """Wait until the console has printed nothing for ``quiet`` seconds. busybox's line
        editor asks the terminal for the cursor position after each prompt and swallows
        what is typed before it gives up waiting for the answer."""
        deadline = time.monotonic() + timeout
        size, since = len(self.console()), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now_size = len(self.console())
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run a shell command on the console shell and return its output."""
        self.settle()
        n = time.monotonic_ns()
        begin, end = f"__begin_{n}__", f"__done_{n}__"
        start = len(self.console())
        # Typed with '' inside, so the echoed command line (which may wrap anywhere) never
        # matches the markers the shell prints.
        self.send(f"echo {begin[:6]}''{begin[6:]}; {command}; echo {end[:6]}''{end[6:]} $?\n")
        m = self.wait_for(re.compile(re.escape(end) + r" (\d+)(?=\D)"), timeout, start)
        text = self.console()[start:m.start()]
        b = re.search(r"(?m)^" + re.escape(begin) + r"\r?$", text)
        return (text[b.end():] if b else text).replace("\r", "").strip()

    def ssh(self, command: str, key: Path, user: str = "root", timeout: float = 60.0, check: bool = True,
            options: tuple[str, ...] = SSH_OPTIONS, stdin: Path | None = None, shared: bool = True) -> str:
        """Run ``command`` over SSH through the host forward; its stdout (stderr too when it fails).
        ``stdin``: a file fed to the command (e.g. ``cat > /path`` copies it in).

        With the default options, the commands of one user and key share one connection (OpenSSH's
        ControlMaster): a key exchange under emulation costs about 0.2 s, a session on a kept
        connection 0.04 s. The shared connection is closed before a snapshot is saved or restored and
        when the guest is killed; a reboot or a power cut ends it by itself. Any other options (a
        known-hosts check, say) get a connection of their own, never a shared one; so does
        ``shared=False`` (a test that a new connection is refused or cut off)."""
        argv = ["ssh", "-i", str(key), "-p", str(self.ssh_port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes"]
        for option in options:
            argv += ["-o", option]
        if shared and options == SSH_OPTIONS and self.workdir is not None:
            tag = hashlib.sha256(f"{user}\0{key.resolve()}".encode()).hexdigest()[:12]
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.workdir / f'ssh-{tag}.mux'}",
                     "-o", "ControlPersist=30"]
        with open(stdin or os.devnull, "rb") as source:
            result = subprocess.run([*argv, f"{user}@127.0.0.1", command], capture_output=True, timeout=timeout,
                                    stdin=source)
        out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
        if check and result.returncode != 0:
            raise RuntimeError(f"ssh {user}: {command!r} exited {result.returncode}: {err.strip()}")
        return out.rstrip("\n") if result.returncode == 0 else out + err

    def close_ssh(self) -> None:
        """End the shared SSH connections (their masters exit; bounded)."""
        if self.workdir is None:
            return
        for sock in self.workdir.glob("ssh-*.mux"):
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "guest"], capture_output=True,
                               timeout=10)
            sock.unlink(missing_ok=True)

    def wait_ssh(self, key: Path, user: str = "root", timeout: float = 120.0, **kw: object) -> None:
        """Until an SSH login as ``user`` works (the server starts just before the ready line)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.ssh("true", key, user, timeout=40, **kw)  # type: ignore[arg-type]
                return
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no SSH login as {user} within {timeout:.0f}s: {exc}") from None
                time.sleep(0.5)  # polling for the server to come up, not retrying a failure

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def qmp(self, command: str, arguments: dict[str, object] | None = None, timeout: float = 10) -> dict[str, object]:
        assert self.workdir
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.workdir / "qmp.sock"))
            f = s.makefile("rw")
            f.readline()
            for cmd, args in (("qmp_capabilities", None), (command, arguments)):
                f.write(json.dumps({"execute": cmd, **({"arguments": args} if args else {})}) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply  # type: ignore[no-any-return]

    def powerdown(self, timeout: float = 60.0) -> bool:
        """ACPI power button; True if the guest powered itself off in time."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc is not None
        with contextlib.suppress(OSError):
            self.qmp("system_powerdown")
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def wait_exit(self, timeout: float) -> int | None:
        assert self.proc
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        self.close_ssh()
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


INSTALLED = re.compile(r"basalt install: installed to (\S+) in ([0-9.]+) s")


def install_unattended(iso: Path, target: Path, user_data: Path, timeout: float = 600,
                       firmware: str = "bios") -> dict[str, Any]:
    """Boot ``iso`` with a NoCloud seed of ``user_data`` (an ``install:`` section with silent and
    power_off) and ``target`` as the first virtio disk, until the installer powers the VM off.
    Returns the console and timings: the installer's own, and QEMU start to power off."""
    from builder.vm import seed
    seed_iso = seed.make_seed(target.with_name(target.name + ".seed.iso"), user_data, instance_id="install")
    with Guest(iso, firmware=firmware, extra_cdroms=[seed_iso], disks=[target]) as guest:
        ready = guest.wait_for(READY, min(timeout, 300))
        done = guest.wait_for(INSTALLED, timeout)
        code = guest.wait_exit(120)
        if code is None:
            raise BasaltError(Problem("the installer did not power the VM off", hint=guest.tail()))
        return {"console": guest.console(), "device": done.group(1), "install_s": float(done.group(2)),
                "boot_ms": int(ready.group(2)), "wall_s": round(time.monotonic() - guest.started, 1),
                "started": "basalt: unattended install: starting" in guest.console()}


def boot_command(img: ImageDefinition, medium: Path, firmware: str, accel: str, check: bool, timeout: float,
                 ssh_port: int, seed: Path | None = None, state: Path | None = None, cpus: int | None = None,
                 disk_mib: int = 0) -> int:
    """Boot an ISO, or a disk image (``.img``) through a copy-on-write overlay of ``disk_mib``."""
    media: dict[str, object] = {"extra_cdroms": [seed] if seed else [], "disks": [state] if state else []}
    iso: Path | None = medium
    if medium.suffix == ".img":
        iso, media["boot_disk"], media["boot_disk_mib"] = None, medium, disk_mib
        media["board"] = img.outputs[0].board
    if not check:
        return interactive(img, iso, firmware, accel, ssh_port, media, cpus or img.cpus)
    with Guest(iso, img.arch, firmware, accel, img.memory_mb, cpus or img.cpus, ssh_port, **media) as guest:  # type: ignore[arg-type]
        print(f"booting {medium.name} ({firmware}, {accel}); waiting up to {timeout:.0f}s for the ready line",
              file=sys.stderr)
        try:
            m = guest.wait_for(READY, timeout)
        except (TimeoutError, RuntimeError) as exc:
            print(f"error: boot check failed: {exc}", file=sys.stderr)
            return 1
        wall = time.monotonic() - guest.started
        print(f"ready: version={m.group(1)} boot_ms={m.group(2)} mem_used_kb={m.group(3)} "
              f"(wall {wall:.1f}s from QEMU start)")
        if guest.board:  # no ACPI power button on a board's machine (raspi3b)
            print(f"{guest.board}: QEMU's board has no power button; stopped (the guest powers off with "
                  "`poweroff`, through its watchdog)")
            return 0
        off = guest.powerdown(60)
        print("powered off cleanly" if off else "error: guest did not power off within 60s; killed")
        return 0 if off else 1


def interactive(img: ImageDefinition, iso: Path | None, firmware: str, accel: str, ssh_port: int,
                media: dict[str, object], cpus: int) -> int:
    """Serial console on this terminal (Ctrl-A X quits QEMU)."""
    guest = Guest(iso, img.arch, firmware, accel, img.memory_mb, cpus, ssh_port or free_port(), **media)  # type: ignore[arg-type]
    guest.workdir = Path(tempfile.mkdtemp(prefix="basalt-qemu-"))
    argv = guest.argv()
    i = argv.index("chardev:ser0")
    argv[i] = "mon:stdio"
    del argv[i - 3:i - 1]  # the socket chardev
    print(f"SSH: ssh -p {guest.ssh_port} root@127.0.0.1   (quit QEMU: Ctrl-A X)", file=sys.stderr)
    try:
        return subprocess.call(argv)
    finally:
        shutil.rmtree(guest.workdir, ignore_errors=True)
