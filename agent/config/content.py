"""``write_files`` content and its encodings (cloud-init's and k3OS's names): decoded by the
plan that writes the file, and checked by the validator before a node ever sees it.

Decoding is strict, as k3OS's (Go's) decoder is: base64 must be base64 throughout (whitespace
and line breaks between its characters are allowed, anything else — an unrendered ``${var}``,
plain text — is an error, never garbage written to the file), and gzip data must be whole. What
gunzips to more than ``MAX_BYTES`` is refused as it is read, so a small bomb never takes a
board's memory."""

from __future__ import annotations

ENCODINGS = {"": (), "b64": ("b64",), "base64": ("b64",), "gz": ("gz",), "gzip": ("gz",),
             "gz+b64": ("b64", "gz"), "gz+base64": ("b64", "gz"), "gzip+b64": ("b64", "gz"),
             "gzip+base64": ("b64", "gz")}
MAX_BYTES = 16 << 20  # one write_files item, decoded


def steps(encoding: object) -> tuple[str, ...]:
    """What ``encoding`` asks for; KeyError for anything that is not one of ENCODINGS' names (the
    schema says which)."""
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise KeyError(encoding)
    return ENCODINGS[encoding]


def unbase64(data: bytes) -> bytes:
    import base64
    return base64.b64decode(b"".join(data.split()), validate=True)


def gunzip(data: bytes, limit: int = MAX_BYTES) -> bytes:
    """gzip data (one member or several, as gzip writes them), whole; ValueError past ``limit``."""
    import zlib
    if data[:2] != b"\x1f\x8b":
        import gzip
        raise gzip.BadGzipFile(f"Not a gzipped file ({data[:2]!r})")
    out: list[bytes] = []
    size = 0
    while True:
        z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while data:
            try:
                chunk = z.decompress(data, limit + 1 - size)
            except zlib.error as exc:
                raise ValueError(f"not whole gzip data ({exc})") from None
            size += len(chunk)
            out.append(chunk)
            if size > limit:
                raise ValueError(f"it decompresses to more than {limit >> 20} MiB")
            data = z.unconsumed_tail
            if not data or z.eof:
                break
        if not z.eof:
            raise EOFError("the gzip data ends before its end marker (truncated)")
        data = z.unused_data
        if not data.strip(b"\0"):
            return b"".join(out)


def decode(content: str, encoding: object) -> bytes:
    data = content.encode()
    for step in steps(encoding):  # base64 first, then gunzip
        data = unbase64(data) if step == "b64" else gunzip(data)
    return data
