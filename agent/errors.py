"""User-facing errors shared by the host builder and the on-device agent.

Every error a user can cause is one of these: it renders as
``file:line: path: message`` plus an optional ``hint:`` line, and the CLIs turn
it into a non-zero exit without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    message: str
    file: str | None = None
    line: int | None = None
    path: str | None = None
    hint: str | None = None
    warning: bool = False  # what a node would break on at run time, but may be meant: exit 0

    def render(self) -> str:
        where = [part for part in (self.file, self.line) if part is not None]
        prefix = ":".join(str(p) for p in where)
        parts = [p for p in (prefix, "warning" if self.warning else None, self.path) if p]
        head = ": ".join([*parts, self.message])
        return head if not self.hint else f"{head}\nhint: {self.hint}"


class BasaltError(Exception):
    """One or more problems the user can fix."""

    def __init__(self, problems: Problem | Iterable[Problem]):
        self.problems: tuple[Problem, ...] = (
            (problems,) if isinstance(problems, Problem) else tuple(problems)
        )
        super().__init__(self.render())

    @classmethod
    def simple(cls, message: str, hint: str | None = None) -> BasaltError:
        return cls(Problem(message, hint=hint))

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)
