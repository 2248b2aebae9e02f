"""Offline checks of the Kubernetes objects a site config deploys (``k3s.manifests`` and
``k3s.helm_charts``), before they are baked into an image: built-in kinds against the
Kubernetes OpenAPI schema (the kubernetes-validate package), HelmChart against the fields
of k3s's helm-controller CRD. Other custom resources cannot be known offline: not checked.
Manifests named by ``{file: /path}`` live on the node, and are checked there by k3s."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from agent.config.yamlsource import Located
from agent.errors import Problem
from agent.modules import k3s

HELMCHART_SCHEMA = Path(__file__).parent / "schemas" / "helmchart.schema.json"


@functools.cache
def helmchart_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(HELMCHART_SCHEMA.read_text()))


def kubernetes_version(k3s_version: str | None = None) -> str:
    """The Kubernetes API to check against: the pinned k3s release's (v1.34.2+k3s1 -> 1.34.0)
    when kubernetes-validate has it, else the newest it knows."""
    from kubernetes_validate import utils
    known = utils.all_versions()
    if k3s_version:
        major_minor = ".".join(k3s_version.lstrip("v").split(".")[:2])
        matching = [v for v in known if v.startswith(major_minor + ".")]
        if matching:
            return str(matching[-1])
    return str(utils.latest_version())


# The Traefik each k3s minor release bundles (its traefik chart's image), for checking the apps'
# TraefikService and IngressRoute objects: k3s v1.34 ships chart 37.1.x with
# rancher/mirrored-library-traefik:3.5.1, whose CRDs are traefik.io/v1alpha1.
TRAEFIK = {"1.34": "3.5.1"}


def traefik_version(k3s_version: str) -> str:
    """The Traefik the k3s release bundles (v1.34.2+k3s1 -> 3.5.1)."""
    major_minor = ".".join(k3s_version.lstrip("v").split(".")[:2])
    if major_minor not in TRAEFIK:
        raise KeyError(f"k3s {k3s_version}: which Traefik it bundles is not recorded (builder/manifests.py TRAEFIK)")
    return TRAEFIK[major_minor]


def object_problems(obj: Any, kubernetes: str | None = None) -> list[tuple[str, str]]:
    """(path inside the object, message) for one Kubernetes object."""
    if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
        return [("", "not a Kubernetes object (it needs apiVersion and kind)")]
    if obj["apiVersion"] == "helm.cattle.io/v1" and obj["kind"] == "HelmChart":
        return [(".".join(map(str, e.absolute_path)), e.message)
                for e in sorted(helmchart_validator().iter_errors(obj), key=lambda e: list(map(str, e.path)))]
    import kubernetes_validate
    try:
        kubernetes_validate.validate(obj, kubernetes or kubernetes_version(), strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return []  # a custom resource whose CRD is not known offline
    except kubernetes_validate.ValidationError as exc:
        return [(".".join(map(str, exc.path)), exc.message)]
    return []


def check(doc: Located, k3s_version: str | None = None) -> list[Problem]:
    """Problems in a loaded (normalised) config's manifests and charts, at their lines."""
    kubernetes = kubernetes_version(k3s_version)
    config = doc.value if isinstance(doc.value, dict) else {}
    spec = config.get("k3s", {})
    problems = []

    def report(path: tuple[str | int, ...], inner: str, message: str, hint: str) -> None:
        problems.append(doc.problem(path, f"{inner + ': ' if inner else ''}{message}", hint))

    for i, item in enumerate(spec.get("manifests", [])):
        path = ("k3s", "manifests", i)
        if isinstance(item, dict) and "file" in item and "kind" not in item:
            continue
        try:
            objects = [item] if isinstance(item, dict) else [o for o in yaml.safe_load_all(item) if o is not None]
        except yaml.YAMLError as exc:
            report(path, "", f"the manifest text is not YAML: {exc}", "check the indentation of the block")
            continue
        for obj in objects:
            for inner, message in object_problems(obj, kubernetes):
                kind = f"{obj.get('kind')} {obj.get('metadata', {}).get('name', '')}".strip() \
                    if isinstance(obj, dict) else "manifest"
                report(path, f"{kind}: {inner}" if inner else kind, message,
                       f"checked offline against the Kubernetes {kubernetes} API schema")
    for i, entry in enumerate(spec.get("helm_charts", [])):
        if isinstance(entry, dict) and "name" in entry and ("chart" in entry or "bundled" in entry):
            for inner, message in object_problems(k3s.helm_chart(entry)):
                report(("k3s", "helm_charts", i), inner, message, "see k3s.helm_charts in docs/config.md")
    return problems
