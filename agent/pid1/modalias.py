"""Which driver each device wants, answered from an index the build makes of ``modules.alias``.

busybox modprobe reads all of ``modules.alias`` (15,000 patterns) and matches every device's
modalias against every pattern: 0.3 s under TCG at each coldplug pass. The build indexes the
patterns once (``build``: by the literal head of each pattern — a PCI vendor and device, a USB
vendor and product, or the bus), so the agent matches each device against a handful, then asks
modprobe for module names only.

It also says which drivers the boot does not need before the ready line (``LATE``, by where the
module lives in the kernel tree): a PC speaker, a PS/2 mouse, SMBus, sensors, PWM outputs, CPU crypto
helpers. Those load right after ready; everything else (storage, network, USB, watchdogs,
hardware RNGs, and what a board's devices hang from) loads before, as it always did.

Standard library C modules only: it is on the boot path.
"""

from __future__ import annotations

import marshal
import zlib

INDEX = "modules.basalt-alias"  # beside modules.alias in /usr/lib/modules/RELEASE
FORMAT = 4
MAGIC = b"basalt-modalias\0"

# Kernel tree directories whose drivers ready does not need. Anything not listed loads before
# ready (a driver nobody classified keeps today's behaviour).
LATE = ("arch/", "crypto/", "sound/", "drivers/input/", "drivers/i2c/", "drivers/hwmon/", "drivers/gpu/",
        "drivers/video/", "drivers/media/", "drivers/hid/", "drivers/edac/", "drivers/cpufreq/",
        "drivers/thermal/", "drivers/platform/", "drivers/leds/", "drivers/iio/", "drivers/misc/",
        "drivers/staging/", "drivers/bluetooth/", "drivers/parport/", "drivers/acpi/", "drivers/crypto/",
        "drivers/firmware/qemu_fw_cfg", "drivers/gnss/", "drivers/accel/", "drivers/powercap/",
        "drivers/char/agp/", "drivers/char/tpm/", "drivers/char/ppdev", "drivers/char/lp", "drivers/char/nvram",
        "drivers/pwm/")


def _keys(text: str) -> tuple[str, ...]:
    """The literal heads a device's modalias is filed under, longest first."""
    bus = text.split(":", 1)[0]
    if bus == "pci":
        return (text[:22], text[:13], "pci")  # pci:vVVVVVVVVdDDDDDDDD, pci:vVVVVVVVV
    if bus == "usb":
        return (text[:14], text[:9], "usb")  # usb:vVVVVpPPPP, usb:vVVVV
    if bus == "acpi":  # acpi:ID1:ID2:...: a pattern names one of the IDs (acpi*:ID:*)
        return (*(f"acpi:{i}" for i in text.split(":")[1:] if i), "acpi")
    if bus == "of":  # of:NnameTtypeCcompat1Ccompat2...: a pattern names one compatible string
        cs = [i for i, ch in enumerate(text) if ch == "C"]
        return (*{f"of:{text[i + 1:j]}" for n, i in enumerate(cs) for j in (*cs[n + 1:], len(text))}, "of")
    return (bus,)


def _key_of_pattern(pattern: str) -> str:
    """The longest literal head of ``pattern`` (no wildcard in it); "*" when even its bus is one."""
    wild = ("*", "?", "[")
    bus = pattern.split(":", 1)[0]
    key = ""
    if bus in ("pci", "usb"):  # a PCI or USB head, whole and literal
        key = next((k for k in _keys(pattern)[:-1] if len(k) in (22, 13, 14, 9) and not any(w in k for w in wild)), "")
    elif bus == "acpi*" and pattern.count(":") == 2 and pattern.endswith(":*"):
        key = "acpi:" + pattern.split(":")[1]
    elif bus == "of" and "T*C" in pattern:
        compat = pattern.split("T*C", 1)[1].removesuffix("C*")
        key = "of:" + compat
    if key and not any(w in key for w in wild):
        return key
    bus = bus.rstrip("*")
    return bus if bus and not any(w in bus for w in wild) else "*"


def normalize(text: str) -> str:
    """An alias as kmod compares it: ``-`` is ``_`` outside a ``[...]`` set, in a device's alias and
    in a pattern alike (the device ``platform:simatic-ipc-wdt`` is its driver's
    ``platform:simatic_ipc_wdt``)."""
    if "-" not in text:
        return text
    if "[" not in text:
        return text.replace("-", "_")
    out, inside = [], False
    for ch in text:
        if inside:
            inside = ch != "]"
        elif ch == "[":
            inside = True
        elif ch == "-":
            ch = "_"
        out.append(ch)
    return "".join(out)


def module_name(path: str) -> str:
    return path.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")


def is_late(path: str) -> bool:
    """``path``: the module's file under the release directory (``kernel/drivers/...``)."""
    rel = path.removeprefix("kernel/")
    return rel.startswith(LATE)


def _buckets(aliases: str) -> dict[str, list[tuple[str, str]]]:
    keys: dict[str, list[tuple[str, str]]] = {}
    for line in aliases.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            pattern = normalize(parts[1])
            keys.setdefault(_key_of_pattern(pattern), []).append((pattern, parts[2]))
    return keys


def _lines(pairs: list[tuple[str, str]]) -> str:
    """(pattern, module) pairs as a bucket's text: a "PATTERN MODULE" line each (read by _pairs)."""
    return "\n".join(f"{p} {m}" for p, m in pairs)


def _pairs(text: str) -> list[tuple[str, str]]:
    """A bucket's text (_lines) as (pattern, module) pairs."""
    return [(pattern, module) for pattern, _, module in (line.rpartition(" ") for line in text.split("\n"))
            if pattern]


def _packed(keys: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    return {k: _lines(v) for k, v in keys.items()}


def _u32(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "little") for v in values)


def _slots(keys: list[bytes]) -> list[int]:
    """An open-addressing hash table of ``keys`` (CRC-32, linear probing, at most half full):
    each slot 0 (empty) or a key's number + 1."""
    size = 8
    while size < 2 * len(keys):
        size *= 2
    slots = [0] * size
    for number, key in enumerate(keys):
        at = zlib.crc32(key) & (size - 1)
        while slots[at]:
            at = (at + 1) & (size - 1)
        slots[at] = number + 1
    return slots


def _table(buckets: dict[str, str]) -> bytes:
    """Buckets read in place (``Table``), as little-endian u32s then bytes: N; the hash table's
    size and slots; N+1 key offsets; N+1 bucket offsets; the keys (sorted); the buckets; padded
    to 4 bytes."""
    keys = sorted(buckets)
    encoded = [k.encode() for k in keys], [buckets[k].encode() for k in keys]
    slots = _slots(encoded[0])
    offsets = []
    for items in encoded:
        at = [0]
        for item in items:
            at.append(at[-1] + len(item))
        offsets.append(_u32(*at))
    out = _u32(len(keys), len(slots), *slots) + offsets[0] + offsets[1] + b"".join(encoded[0]) + b"".join(encoded[1])
    return out + b"\0" * (-len(out) % 4)


def watchdog_devices(aliases: str, deps: str) -> list[tuple[str, str]]:
    """(pattern, module): the platform devices of the watchdog drivers (drivers/watchdog/), whose
    device another driver makes (``platform:iTCO_wdt``: an Intel chipset's TCO timer)."""
    watchdogs = {module_name(line.split(":", 1)[0]) for line in deps.splitlines()
                 if line.startswith("kernel/drivers/watchdog/")}
    return [(normalize(parts[1]), parts[2]) for parts in (line.split() for line in aliases.splitlines())
            if len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("platform:") and parts[2] in watchdogs]


def build(aliases: str, deps: str, absent: str = "", makers: tuple[str, ...] = ()) -> bytes:
    """The index of a ``modules.alias`` and ``modules.dep`` text; ``absent``: the alias lines of the
    drivers the image left out (kernel.modules.profile), for ``missing``; ``makers``: the modules
    that make a watchdog driver's device (builder/media/hardware.py: watchdog_makers), for
    ``Watchdogs``. Each bucket is one string
    ("PATTERN MODULE" lines) found through a hash table where it lies in the file: reading the
    index makes no object per key (a marshalled dict of its 6,800 buckets took longer
    to load than the rest of a coldplug pass's matching)."""
    keys = _buckets(aliases)
    late = sorted({module_name(line.split(":", 1)[0]) for line in deps.splitlines()
                   if line.strip() and is_late(line.split(":", 1)[0])})
    all_late = sorted(k for k, entries in keys.items() if all(m in late for _, m in entries))
    late_makers = [(p, m) for entries in keys.values() for p, m in entries if m in makers and m in late]
    header = marshal.dumps((" ".join(late), "\n".join(all_late), _lines(watchdog_devices(aliases, deps)),
                            " ".join(sorted(m for m in makers if m not in late)), _lines(late_makers)))
    header += b"\0" * (-len(header) % 4)
    return MAGIC + _u32(FORMAT, len(header)) + header + _table(_packed(keys)) + _table(_packed(_buckets(absent)))


class Table:
    """A table ``_table`` wrote, in place in the index's bytes: ``get`` hashes the key, compares
    the key in its slot (and the next ones while full), and decodes that one bucket."""

    def __init__(self, data: bytes, at: int) -> None:
        n, size = int.from_bytes(data[at:at + 4], "little"), int.from_bytes(data[at + 4:at + 8], "little")
        if size & (size - 1) or size < 2 * n or at + 8 + 4 * size + 8 * (n + 1) > len(data):
            raise ValueError("not a table")
        view = memoryview(data)
        self.n, self.data, self.mask = n, data, size - 1
        self.slots = view[at + 8:at + 8 + 4 * size].cast("I")
        offsets = at + 8 + 4 * size
        self.key_at = offsets + 8 * (n + 1)
        self.key_offsets = view[offsets:offsets + 4 * (n + 1)].cast("I")
        self.bucket_offsets = view[offsets + 4 * (n + 1):self.key_at].cast("I")
        self.bucket_at = self.key_at + self.key_offsets[n]
        self.end = self.bucket_at + self.bucket_offsets[n]
        self.end += -self.end % 4
        if self.end > len(data):
            raise ValueError("truncated")

    def key(self, i: int) -> bytes:
        return self.data[self.key_at + self.key_offsets[i]:self.key_at + self.key_offsets[i + 1]]

    def get(self, key: str) -> str | None:
        want = key.encode()
        at = zlib.crc32(want) & self.mask
        for _ in range(self.mask + 1):  # a table at most half full ends in an empty slot
            number = self.slots[at]
            if not number or number > self.n:
                return None
            if self.key(number - 1) == want:
                return self.data[self.bucket_at + self.bucket_offsets[number - 1]:
                                 self.bucket_at + self.bucket_offsets[number]].decode(errors="replace")
            at = (at + 1) & self.mask
        return None


def _header_size(head: bytes) -> int:
    """The size of the header that follows ``head`` (the magic, the format, the size); ValueError
    where it is not this format's index, or on a big-endian machine (the offsets are read in the
    machine's order)."""
    import sys
    at = len(MAGIC)
    if sys.byteorder != "little" or not head.startswith(MAGIC) or len(head) < at + 8 \
            or int.from_bytes(head[at:at + 4], "little") != FORMAT:
        raise ValueError("not an index of this format")
    return int.from_bytes(head[at + 4:at + 8], "little")


class Index:
    """The build's index, read: the buckets of the image's drivers (``keys``) and of those it left
    out (``absent``), the late modules' names and the keys whose every driver is late."""

    def __init__(self, data: bytes) -> None:
        size, at = _header_size(data), len(MAGIC)
        late, all_late = marshal.loads(data[at + 8:at + 8 + size])[:2]
        self.late, self.all_late = str(late), str(all_late)
        self.keys = Table(data, at + 8 + size)
        self.absent = Table(data, self.keys.end)


def parse(data: bytes) -> Index | None:
    """The index in ``data``, or None when it is none (or another format, or cut short)."""
    try:
        return Index(data)
    except (ValueError, TypeError, EOFError, IndexError):
        return None


class Watchdogs:
    """What the index's header says of watchdogs whose device another driver makes: the watchdog
    drivers' platform devices (``devices``), the drivers that load before ready and make one
    (``early_makers``: lpc_ich on an ICH chipset), and the patterns of those that load after it
    (``late_makers``: i2c_i801, the SMBus function of a 100-series or later PCH)."""

    def __init__(self, header: tuple[object, ...]) -> None:
        self.devices = _pairs(str(header[2]))
        self.early_makers = set(str(header[3]).split())
        self.late_makers = _pairs(str(header[4]))

    @staticmethod
    def wanted(pairs: list[tuple[str, str]], aliases: list[str]) -> list[str]:
        """The modules of ``pairs`` whose pattern takes one of ``aliases``, in order."""
        out: list[str] = []
        for alias in aliases:
            alias = normalize(alias)
            out += [m for p, m in pairs if m not in out and glob(p, alias)]
        return out


def watchdogs(path: str) -> Watchdogs | None:
    """The index's watchdog part, reading its header only (16 kB, not the megabyte): for PID 1."""
    try:
        with open(path, "rb") as f:
            size = _header_size(f.read(len(MAGIC) + 8))
            if size > 1 << 20:
                return None
            body = f.read(size)
            return Watchdogs(marshal.loads(body)) if len(body) == size else None
    except (OSError, ValueError, TypeError, EOFError, IndexError):
        return None


def load(path: str) -> Index | None:
    """The index, or None when there is none (or another format): callers fall back to modprobe."""
    try:
        with open(path, "rb") as f:
            return parse(f.read())
    except OSError:
        return None


def glob(pattern: str, text: str) -> bool:
    """fnmatch's rules (``*``, ``?``, ``[...]``, ``[!...]``), without importing re. Most patterns
    are literal pieces between stars: those are found with the string methods (the first piece
    leads, the last ends, each between them at its first place after the one before), not a
    character at a time (a CPU's alias against its bus's 110 feature patterns: 9,000 steps)."""
    if "?" not in pattern and "[" not in pattern:
        pieces = pattern.split("*")
        if len(pieces) == 1:
            return pattern == text
        first, last = pieces[0], pieces[-1]
        end = len(text) - len(last)
        if end < len(first) or not text.startswith(first) or not text.endswith(last):
            return False
        at = len(first)
        for piece in pieces[1:-1]:
            found = text.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
        return True
    p = t = 0
    star_p = star_t = -1
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star_p, star_t = p, t
            p += 1
            continue
        if p < len(pattern):
            ok, width = _one(pattern, p, text[t])
            if ok:
                p += width
                t += 1
                continue
        if star_p < 0:
            return False
        star_t += 1
        p, t = star_p + 1, star_t
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _one(pattern: str, p: int, ch: str) -> tuple[bool, int]:
    """Whether the pattern element at ``p`` matches ``ch``, and how many characters it spans."""
    c = pattern[p]
    if c == "?":
        return True, 1
    if c != "[":
        return c == ch, 1
    end = p + 1
    if end < len(pattern) and pattern[end] in "!^":
        end += 1
    if end < len(pattern) and pattern[end] == "]":  # a "]" first in the set is one of its characters
        end += 1
    end = pattern.find("]", end)
    if end < 0:  # no closing bracket: a literal "["
        return ch == "[", 1
    body = pattern[p + 1:end]
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    hit = False
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            hit = hit or body[i] <= ch <= body[i + 2]
            i += 3
        else:
            hit = hit or body[i] == ch
            i += 1
    return hit != negate, end - p + 1


def _wanted_by(buckets: Table, alias: str, skip_keys: set[str] | frozenset[str] = frozenset(),
               skip_modules: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The modules of ``buckets`` whose patterns take ``alias``, in index order (each bucket is
    split only when the alias is filed under its key)."""
    alias = normalize(alias)
    out: list[str] = []
    for key in (*_keys(alias), "*"):
        bucket = buckets.get(key) if key not in skip_keys else None
        # the lines split here, not by _pairs: a coldplug pass's hot path (a list less per bucket)
        for line in bucket.split("\n") if bucket else ():
            pattern, _, module = line.rpartition(" ")
            if module not in skip_modules and module not in out and glob(pattern, alias):
                out.append(module)
    return out


def missing(index: Index, aliases: list[str]) -> list[tuple[str, str]]:
    """(device's modalias, module) for each device whose driver the image left out."""
    return [(alias, module) for alias in aliases for module in _wanted_by(index.absent, alias)]


def resolve(index: Index, aliases: list[str], early_only: bool = False) -> tuple[list[str], list[str]]:
    """The modules the devices' ``aliases`` want: (before ready, after ready), each in order.
    ``early_only``: the patterns of late drivers are not even tried (the second list is empty)."""
    keys = index.keys
    late = set(index.late.split())
    all_late = set(index.all_late.split("\n")) if early_only else set()
    early_out: list[str] = []
    late_out: list[str] = []
    for alias in aliases:
        for module in _wanted_by(keys, alias, all_late, late if early_only else set()):
            out = late_out if module in late else early_out
            if module not in out:
                out.append(module)
    return early_out, late_out
