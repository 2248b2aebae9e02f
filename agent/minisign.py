"""minisign's verdict on signed data: the one check behind every signature a node trusts (an
upgrade bundle's manifest, an install plan from ``install.iso_url``), against its upgrade key.

On the bottom floor: the standard library and agent.errors only."""

from __future__ import annotations

import os
import subprocess

from agent.errors import BasaltError, Problem

MINISIGN = "/usr/bin/minisign"


def verify(data: bytes, signature: bytes, public_key: str, work: str, source: str, what: str = "bundle") -> None:
    """``data`` signed by the key whose public half is ``public_key``, or a BasaltError:
    ``SOURCE: refused: bad signature`` or ``… it is signed with another key``."""
    os.makedirs(work, 0o700, exist_ok=True)
    paths = {name: os.path.join(work, name) for name in ("signed", "signed.minisig")}
    for path, content in zip(paths.values(), (data, signature), strict=True):
        with open(path, "wb") as f:
            f.write(content)
    tool = MINISIGN if os.path.exists(MINISIGN) else "minisign"
    try:
        proc = subprocess.run([tool, "-V", "-q", "-p", public_key, "-m", paths["signed"], "-x",
                               paths["signed.minisig"]], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise BasaltError(Problem(f"minisign is not installed: {what}s cannot be verified",
                                  hint="apt-get install minisign (the image carries it)")) from None
    if proc.returncode == 0:
        return
    said = (proc.stderr or proc.stdout).strip().replace("\n", " ")
    if "key id" in said.lower():
        raise BasaltError(Problem(f"{source}: refused: it is signed with another key ({said})",
                                  hint=f"{what}s for this node are signed with the key whose public half is "
                                       f"{public_key}"))
    raise BasaltError(Problem(f"{source}: refused: bad signature ({said or 'minisign -V failed'})",
                              hint=f"the {what} was changed after it was signed, or is not a Basalt {what}: "
                                   "fetch it again"))
