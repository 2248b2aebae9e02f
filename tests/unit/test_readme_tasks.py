"""The README's task table against the tasks themselves (tasks.py, through invoke's own parser
data): every option the table writes is one the task takes, and every option a task takes is in
the README. A misspelt flag there (`--k` for `-k`) is an operator's first command failing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from invoke import Collection

import tasks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
NAMESPACE = Collection.from_module(tasks)
COMMAND = re.compile(r"`\./inv ([a-z][a-z0-9-]*)([^`]*)`")
FLAG = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")


def written() -> dict[str, set[str]]:
    """Each task the README's table rows name, with the flags written in their first column (an
    app's own flags, after ` -- `, belong to `basalt app`, not to the task)."""
    out: dict[str, set[str]] = {}
    for line in README.splitlines():
        if not line.startswith("| `./inv "):
            continue
        first = line.split(" | ")[0]
        for name, rest in COMMAND.findall(first):
            rest = rest.split(" -- ")[0].removesuffix(" --")
            out.setdefault(name, set()).update(FLAG.findall(rest))
    return out


def flags(name: str) -> set[str]:
    task = NAMESPACE[name]
    return {(f"--{n}" if len(n) > 1 else f"-{n}") for arg in task.get_arguments() for n in arg.names}


def test_the_table_is_read() -> None:
    rows = written()
    assert {"build", "boot", "test", "app"} <= rows.keys()
    assert "--image" in rows["build"] and "-k" in rows["test"]


@pytest.mark.parametrize("name", sorted(written()))
def test_every_flag_written_is_one_the_task_takes(name: str) -> None:
    assert name in NAMESPACE.task_names, f"README names ./inv {name}, which is no task"
    assert written()[name] <= flags(name), f"./inv {name}: {sorted(written()[name] - flags(name))} are no options"


@pytest.mark.parametrize("name", sorted(NAMESPACE.task_names))
def test_every_task_and_option_is_in_the_readme(name: str) -> None:
    assert f"./inv {name}" in README
    task = NAMESPACE[name]
    positional = set(task.positional)
    for arg in task.get_arguments():
        if arg.name in positional:
            continue  # written as a value: ./inv validate FILE
        long = next(n for n in arg.names if len(n) > 1) if any(len(n) > 1 for n in arg.names) else arg.names[0]
        flag = f"--{long}" if len(long) > 1 else f"-{long}"
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README), f"./inv {name} {flag} is not in the README"
