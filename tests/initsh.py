"""The initramfs's shell functions (builder/initramfs/init), cut out to run alone in busybox sh: in
the unit tests against a made-up device list, in the boot tests against a guest's real sysfs."""

from __future__ import annotations

import re
from collections.abc import Collection

from builder.stages import initramfs


def init_functions(*names: str) -> str:
    """These shell functions, as builder/initramfs/init defines them (each ends at a lone ``}``)."""
    text = initramfs.INIT.read_text()
    out = []
    for name in names:
        start = text.index(f"\n{name}() {{") + 1
        out.append(text[start:text.index("\n}\n", start) + 3])
    return "".join(out)


def _code_only(text: str) -> str:
    """The script with what is not code blanked (quoted text, comments, arithmetic, parameter
    expansions) and each command substitution or subshell on lines of its own."""
    out: list[str] = []
    stack = ["code"]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("$((", i):
            end = text.index("))", i) + 2
            out.append(" " * (end - i))
            i = end
        elif c == "\\":
            out.append("  ")
            i += 2
        elif text.startswith("$(", i):
            stack.append("sub")
            out.append("\n")
            i += 2
        elif stack[-1] == "dq":
            if c == '"':
                stack.pop()
            out.append(c if c == "\n" else '"')
            i += 1
        elif c == '"':
            stack.append("dq")
            out.append(c)
            i += 1
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif c == "'":
            i = text.index("'", i + 1) + 1
            out.append("''")
        elif text.startswith("${", i):
            i = text.index("}", i) + 1
            out.append("$x")
        elif c == ")" and stack[-1] in ("sub", "subshell"):
            stack.pop()
            out.append("\n")
            i += 1
        elif c == "(" and (i == 0 or text[i - 1] in " \t\n;&|"):
            stack.append("subshell")
            out.append("\n")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


KEYWORDS = {"if", "then", "else", "elif", "fi", "while", "until", "do", "done", "esac", "{", "}", "!", "exec", "setsid"}
BUILTINS = {"[", ":", ".", "set", "shift", "export", "local", "return", "continue", "break", "read", "wait", "echo",
            "printf", "test", "true", "false", "cd", "eval", "exit", "trap", "unset", "command"}
# a redirection that opens, duplicates or closes a descriptor (exec 3<> FIFO, 3>&-, 2>&1): no
# command, and its & is no list operator
REDIRECT_FD = re.compile(r"(?<![\w$])\d*(?:<>|[<>]&(?:-|\d+))")
# a case branch's patterns (a|b), at a line's start, after ;; or after ``in``
CASE_PATTERNS = re.compile(r"(^|;;|\bin)([ \t]*)[^\s()|;]+(?:[ \t]*\|[ \t]*[^\s()|;]+)*\)", re.M)


def programs(text: str, functions: Collection[str] = ()) -> set[str]:
    """The programs a busybox sh script runs: the first word of each command (after assignments,
    ``exec`` and ``setsid``; ``chroot``'s too), in substitutions and subshells as well, less the
    shell's keywords and builtins and the script's own functions (and ``functions``, defined in
    files it sources)."""
    defined = set(re.findall(r"^(\w+)\(\) \{", text, re.M)) | set(functions)
    found: set[str] = set()
    code = REDIRECT_FD.sub(" >fd ", CASE_PATTERNS.sub(r"\1\n", _code_only(text)))
    for segment in re.split(r";;|;|\|\||&&|\||&|\n", code):
        words = segment.split()
        while words:
            word = words.pop(0)
            if word in KEYWORDS or re.fullmatch(r"\w+=\S*", word) or word.endswith("()"):
                continue  # NAME() { BODY }: the body's commands
            if word in ("for", "case") or word.startswith(("$", '"', "'", "<", ">", "2>")) or word.isdigit():
                break  # for NAME in WORDS, case WORD in; a redirection or an expansion as the command
            if word not in BUILTINS and word not in defined:
                found.add(word)
            if word == "chroot":
                words = words[1:]  # chroot DIR PROGRAM
                continue
            break
    return found
