"""``inv fleet``: an inventory of sites rendered from one jinja2 template, validated, stamped.

``sites.yaml``::

    template: site.yaml.j2          # relative to the inventory
    secrets:                        # referenced, never written inline
      k3s_token: {env: FLEET_K3S_TOKEN}
      wifi_psk: {file: secrets/wifi.txt}
    defaults: {role: agent}         # under every site's own variables
    default: {hostname: unknown}    # --one-image: the config of a device nothing matches (optional)
    sites:
    - name: depot-7                 # [a-z0-9-], unique
      hostname: depot-7
      macs: ["52:54:00:00:0a:01"]   # --one-image: how a device is recognised at boot
      serials: []

The template sees every variable, ``name``, and ``secret('k3s_token')``; it runs sandboxed, and
a value that could change the YAML's shape is written quoted (``yaml_value``). Every site is rendered
and validated even after one fails; each problem is ``sites.yaml:LINE: site 'x': ...`` (the
template's own line too, when the error comes from it). A secret's value is replaced by
``<secret:NAME>`` in every message and in what ``render`` writes and ``diff`` prints; only
``build`` stamps the real value.
"""

from __future__ import annotations

import difflib
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import BasaltError, Problem

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5}$")
RESERVED = {"name", "macs", "serials"}


@dataclass
class Site:
    name: str
    line: int
    variables: dict[str, Any]
    macs: list[str] = field(default_factory=list)
    serials: list[str] = field(default_factory=list)


@dataclass
class Rendered:
    site: Site
    text: str  # with the real secrets: only ever stamped
    shown: str  # with <secret:NAME> in their place


@dataclass
class Inventory:
    path: Path
    template: Path
    secrets: dict[str, str]
    sites: list[Site]
    default: Site | None


def load(path: Path, resolve_secrets: bool = True) -> Inventory:
    """Read and check the inventory; every problem at once."""
    from agent.config.yamlsource import load as load_yaml
    doc = load_yaml(path)
    src = str(path)
    value = doc.value
    problems: list[Problem] = []

    def bad(where: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        problems.append(Problem(message, src, doc.line_of(where) or 1, ".".join(str(p) for p in where) or None, hint))

    if not isinstance(value, dict):
        raise BasaltError(Problem("an inventory is a mapping with template: and sites:", src, 1,
                                  hint="see docs/fleet.md"))
    for key in value:
        if key not in ("template", "secrets", "defaults", "default", "sites"):
            bad((key,), "unknown key", "the keys are template, secrets, defaults, default and sites")
    template = path.parent / str(value.get("template", ""))
    if not isinstance(value.get("template"), str):
        bad(("template",), "a template file is required", "template: site.yaml.j2 (relative to the inventory)")
    elif not template.is_file():
        bad(("template",), f"no such file: {template}", "the path is relative to the inventory")
    secrets: dict[str, str] = {}
    for name, ref in (value.get("secrets") or {}).items() if isinstance(value.get("secrets"), dict) else []:
        where = ("secrets", name)
        if not isinstance(ref, dict) or len(ref) != 1 or next(iter(ref)) not in ("env", "file"):
            bad(where, "a secret is {env: VARIABLE} or {file: PATH}", "never the value itself")
            continue
        kind, what = next(iter(ref.items()))
        if not resolve_secrets:
            secrets[name] = f"<secret:{name}>"
        elif kind == "env":
            if not os.environ.get(str(what)):
                bad(where, f"the environment variable {what} is not set", f"export {what}=... before the run")
            else:
                secrets[name] = os.environ[str(what)]
        else:
            file = path.parent / str(what)
            try:
                secrets[name] = file.read_text().strip()
            except OSError as exc:
                bad(where, f"cannot read {file}: {exc.strerror}", "the path is relative to the inventory")
    defaults = value.get("defaults") or {}
    if not isinstance(defaults, dict):
        bad(("defaults",), "defaults is a mapping of variables")
        defaults = {}
    sites: list[Site] = []
    seen: dict[str, int] = {}
    entries = value.get("sites")
    if not isinstance(entries, list) or not entries:
        bad(("sites",), "sites is a list of mappings, each with a name", "sites:\n- name: depot-7")
        entries = []
    macs_seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        site = _site(entry, ("sites", i), defaults, bad, doc)
        if site is None:
            continue
        if site.name in seen or site.name == "default":
            bad(("sites", i, "name"), f"site '{site.name}' is listed twice (first on line {seen[site.name]})"
                if site.name in seen else "'default' names the inventory's default: choose another site name")
            continue
        seen[site.name] = site.line
        for mac in site.macs:
            other = macs_seen.setdefault(mac.lower().replace("-", ":"), site.name)
            if other != site.name:
                bad(("sites", i, "macs"), f"site '{site.name}': MAC {mac} is site '{other}''s too",
                    "a device belongs to one site")
        sites.append(site)
    default = None
    if value.get("default") is not None:
        default = _site({"name": "default", **value["default"]} if isinstance(value["default"], dict)
                        else value["default"], ("default",), defaults, bad, doc)
    if problems:
        raise BasaltError(problems)
    return Inventory(path, template, secrets, sites, default)


def _site(entry: Any, where: tuple[str | int, ...], defaults: dict[str, Any], bad: Any, doc: Any) -> Site | None:
    if not isinstance(entry, dict):
        bad(where, "a site is a mapping with a name and its variables")
        return None
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        bad((*where, "name"), f"{name!r} is not a site name", "lower-case letters, digits and '-' (it names files)")
        return None
    macs, serials = entry.get("macs") or [], entry.get("serials") or []
    ok = True
    if not isinstance(macs, list) or not all(isinstance(m, str) and MAC.match(m) for m in macs):
        bad((*where, "macs"), f"site '{name}': macs is a list of MAC addresses", "e.g. [\"dc:a6:32:01:02:03\"]")
        ok = False
    if not isinstance(serials, list) or not all(isinstance(s, (str, int)) for s in serials):
        bad((*where, "serials"), f"site '{name}': serials is a list of serial numbers")
        ok = False
    if not ok:
        return None
    variables = {**defaults, **{k: v for k, v in entry.items() if k not in ("macs", "serials")}}
    return Site(name, int(doc.line_of((*where, "name")) or 1), variables, [str(m) for m in macs],
                [str(s) for s in serials])


PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./@+=:~%-]*")  # a YAML plain scalar that cannot change structure


class Raw(str):
    """Text the template writes as it is: the ``<secret:NAME>`` placeholders of what is shown."""


def yaml_value(value: Any) -> Any:
    """What ``{{ value }}`` writes into the YAML: a string that could change the document's shape
    (a line break, ': ', '#', a flow bracket, a quote, a leading '-' or '&') as a double-quoted
    YAML scalar, so that a site variable can never add a key (``run_cmd``) or an item; plain
    words, names, addresses and URLs as they are (they read back as the same string; one that YAML
    would read as a boolean, a number or null, such as 'yes' or '0644', is quoted); numbers
    and booleans as YAML writes them; lists and mappings as flow collections."""
    import json

    import jinja2
    if isinstance(value, (Raw, jinja2.Undefined)):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        import yaml
        plain = PLAIN.fullmatch(value) and \
            yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False)) == "tag:yaml.org,2002:str"
        return value if plain else json.dumps(value)  # 'yes', '0644', 'null': strings, not YAML's reading
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return json.dumps(str(value))


def _environment(template_dir: Path) -> Any:
    """jinja2 sandboxed (a template reads its variables; it cannot reach Python's internals, run
    a command or change a value in place), each value written as ``yaml_value`` says."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    return ImmutableSandboxedEnvironment(loader=jinja2.FileSystemLoader(str(template_dir)),
                                         undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                         autoescape=False, finalize=yaml_value)


def render(inv: Inventory) -> tuple[list[Rendered], list[Problem]]:
    """Every site rendered and validated; the problems of all of them."""
    import jinja2

    env = _environment(inv.template.parent)
    problems: list[Problem] = []
    try:
        template = env.get_template(inv.template.name)
    except jinja2.TemplateSyntaxError as exc:
        return [], [Problem(f"{inv.template.name}:{exc.lineno}: {exc.message}", str(inv.path), 1, "template",
                            "fix the template's syntax")]
    out: list[Rendered] = []
    # Rendered twice: with the secrets (what the node gets) and with placeholders (what people see),
    # so a secret that a filter transforms is still never shown.
    real, placeholder = secret_fn(inv.secrets), secret_fn({name: Raw(f"<secret:{name}>") for name in inv.secrets})
    for site in [*inv.sites, *([inv.default] if inv.default else [])]:
        try:
            text = template.render(**site.variables, secret=real)
            shown = template.render(**site.variables, secret=placeholder)
        except (jinja2.UndefinedError, KeyError, TypeError, jinja2.TemplateError) as exc:
            from jinja2.sandbox import SecurityError
            problems.append(Problem(f"site '{site.name}': {inv.template.name}:{_template_line(exc)}: "
                                    f"{_redact(str(exc).strip(chr(34)), inv.secrets)}", str(inv.path), site.line,
                                    hint="a template reads its variables and nothing else (it runs sandboxed)"
                                    if isinstance(exc, SecurityError) else
                                    "set the variable in the site or in defaults:, or fix the template"))
            continue
        found = _problems(text, f"{site.name}.yaml")
        # What people see comes from the render with placeholders: a problem that render has too is
        # shown as it words it; one only the real render has is about a value made from a secret
        # (upper-cased, escaped, an anchor's name...), and its words may hold the secret: withheld.
        seen = {(p.line, p.path, p.message): p for p in _problems(shown, f"{site.name}.yaml")} if found else {}
        for p in found:
            twin = seen.get((p.line, p.path, _redact(p.message, inv.secrets)))
            message = twin.message if twin else "a value made from a secret is not valid here (the message " \
                                                 "is withheld: it could show the secret)"
            hint = twin.hint if twin else "check what the template makes of the secret on this line"
            problems.append(Problem(f"site '{site.name}': {p.path + ': ' if p.path else ''}{message} "
                                    f"(rendered line {p.line})", str(inv.path), site.line,
                                    hint=_redact(hint, inv.secrets) if hint else None))
        if not found:
            out.append(Rendered(site, text, shown))
    return out, problems


def _problems(text: str, name: str) -> list[Problem]:
    from agent.config.validate import check_text
    try:
        return list(check_text(text, name).problems)
    except BasaltError as exc:  # not YAML at all: this site's problem, and the other sites go on
        return list(exc.problems)


def secret_fn(table: dict[str, str]) -> Any:
    """The template's ``secret('NAME')``, looking names up in ``table``."""
    def secret(name: str) -> str:
        if name not in table:
            raise KeyError(f"secret('{name}') is not in the inventory's secrets")
        return table[name]
    return secret


def _template_line(exc: BaseException) -> int:
    import traceback
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2") or
             "<template>" in f.filename]
    return (lines[-1] if lines else getattr(exc, "lineno", None)) or 1


def _redact(text: str, secrets: dict[str, str]) -> str:
    for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1])):
        if len(value) >= 4:  # shorter ones would redact ordinary words; no real secret is that short
            text = text.replace(value, f"<secret:{name}>")
    return text


def render_all(path: Path, out: Path | None = None) -> list[Rendered]:
    """``inv fleet render``: every site, the problems of all, then an error if there are any; with
    ``out``, each site's config (secrets as ``<secret:NAME>``) as ``out/NAME.yaml``."""
    inv = load(path)
    rendered, problems = render(inv)
    if problems:
        raise BasaltError(problems)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for r in rendered:
            (out / f"{r.site.name}.yaml").write_text(r.shown)
    return rendered


def _stamp_one(args: tuple[str, bytes, str, str]) -> str:
    from builder.fleet import stamp
    artifact, payload, out, name = args
    return str(stamp.stamp(Path(artifact), payload, Path(out), name))


def build(path: Path, artifact: Path, out: Path, one_image: bool = False, jobs: int = 0) -> list[Path]:
    """``inv fleet build``: one stamped artifact per site (in parallel), or one carrying them all."""
    from builder.fleet import stamp
    inv = load(path)
    rendered, problems = render(inv)
    if problems:
        raise BasaltError(problems)
    inv_default = next((r for r in rendered if r.site is inv.default), None)
    sites = [r for r in rendered if r is not inv_default]
    if one_image:
        missing = [r.site.name for r in sites if not r.site.macs and not r.site.serials]
        if missing:
            raise BasaltError(Problem(f"--one-image: site(s) {', '.join(missing)} name no MAC address or serial",
                                      str(path), hint="give each site macs: or serials: to be recognised by"))
        payload = stamp.index([{"name": r.site.name, "macs": r.site.macs, "serials": r.site.serials,
                                "config": r.text} for r in sites],
                              {"name": "default", "config": inv_default.text} if inv_default else None)
        return [stamp.stamp(artifact, payload, out / "fleet", "fleet")]
    work = [(str(artifact), stamp.index([], {"name": r.site.name, "config": r.text}), str(out / r.site.name),
             r.site.name) for r in sites]
    with ProcessPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        return [Path(p) for p in pool.map(_stamp_one, work)]


def diff(old: Path, new: Path) -> str:
    """``inv fleet diff``: each changed site's unified diff (secrets redacted); added and removed sites."""
    def shown(path: Path) -> dict[str, str]:
        if path.is_dir():  # a directory 'inv fleet render -o' wrote
            return {p.stem: p.read_text() for p in sorted(path.glob("*.yaml"))}
        inv = load(path, resolve_secrets=False)
        rendered, problems = render(inv)
        if problems:
            raise BasaltError(problems)
        return {r.site.name: r.shown for r in rendered}
    a, b = shown(old), shown(new)
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"removed: {name}\n")
        elif name not in a:
            out.append(f"added: {name}\n")
        elif a[name] != b[name]:
            out.append(f"changed: {name}\n" + "".join(difflib.unified_diff(
                a[name].splitlines(True), b[name].splitlines(True), f"{old}:{name}", f"{new}:{name}")))
    return "".join(out)
