"""The on-device layout contract (agent/layout.py): named once, used by builder, initramfs and agent."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from agent import layout

ROOT = Path(__file__).resolve().parents[3]
SHARED = re.compile(r"/run/basalt|/usr/lib/basalt|/var/lib/basalt|BASALT_STATE|BASALT_EFI")


def literals(path: Path) -> list[tuple[int, str]]:
    """The string literals of a Python file, docstrings left out (they may name a path)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_shared_paths_and_labels_are_spelled_only_in_the_contract() -> None:
    offenders = []
    for path in sorted([*(ROOT / "agent").rglob("*.py"), *(ROOT / "builder").rglob("*.py")]):
        if path.name != "layout.py":
            offenders += [f"{path.relative_to(ROOT)}:{n}: {v!r}" for n, v in literals(path) if SHARED.search(v)]
    for path in (ROOT / "builder/initramfs/init", *(ROOT / "builder/templates").glob("*")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SHARED.search(line) and not line.lstrip().startswith(("#", "{#")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_initramfs_reads_the_contract_from_the_shell_file(tmp_path: Path) -> None:
    text = layout.shell()
    assert f"state_label='{layout.STATE_LABEL}'\n" in text and f"run_slot='{layout.RUN_SLOT}'\n" in text
    script = tmp_path / "show.sh"
    (tmp_path / "layout.sh").write_text(text)
    script.write_text(f". {tmp_path}/layout.sh\necho \"$state_label|$root_image|$state_dirs|$run_state\"\n")
    out = subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout
    assert out == f"{layout.STATE_LABEL}|{layout.MEDIUM_ROOT}|var home root opt|{layout.RUN_STATE}\n"
    init = (ROOT / "builder/initramfs/init").read_text()
    assert ". /etc/layout.sh" in init
    for name in layout.INITRAMFS:  # every value the contract gives the initramfs is used there
        assert f"${name}" in init or f"${{{name}}}" in init, name
