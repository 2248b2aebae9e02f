"""``write_files`` content and its encodings (cloud-init's and k3OS's names): decoded by the
plan that writes the file, and checked by the validator before a node ever sees it."""

from __future__ import annotations

ENCODINGS = {"": (), "b64": ("b64",), "base64": ("b64",), "gz": ("gz",), "gzip": ("gz",),
             "gz+b64": ("b64", "gz"), "gz+base64": ("b64", "gz"), "gzip+b64": ("b64", "gz"),
             "gzip+base64": ("b64", "gz")}


def decode(content: str, encoding: str) -> bytes:
    import base64
    import gzip
    data = content.encode()
    for step in ENCODINGS[encoding]:  # base64 first, then gunzip
        data = base64.b64decode(data, validate=False) if step == "b64" else gzip.decompress(data)
    return data
