"""User-facing errors shared by the host builder and the on-device agent.

Every error a user can cause is one of these: it renders as
``file:line: path: message`` plus an optional ``hint:`` line, and the CLIs turn
it into a non-zero exit without a traceback.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

FIELDS = ("message", "file", "line", "path", "hint", "warning")


class Problem:
    """One thing wrong, where it is, and how to fix it. Immutable, compared and hashed by value.
    (Not a dataclass: every ``basalt`` command imports this, and ``dataclasses`` costs imports that
    are felt on a small board.)"""

    __slots__ = FIELDS
    message: str
    file: str | None
    line: int | None
    path: str | None
    hint: str | None
    warning: bool  # what a node would break on at run time, but may be meant: exit 0

    def __init__(self, message: str, file: str | None = None, line: int | None = None, path: str | None = None,
                 hint: str | None = None, warning: bool = False) -> None:
        for name, value in zip(FIELDS, (message, file, line, path, hint, warning), strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Problem is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Problem is immutable: cannot delete {name}")

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def __eq__(self, other: object) -> bool:
        return other.__class__ is self.__class__ and self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Problem(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS) + ")"

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
