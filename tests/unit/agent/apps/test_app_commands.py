"""``basalt app`` against the pure planning functions, offline: each command's ``--dry-run`` output,
exact (tests/data/apps/*.yaml, one run → stage → promote → ... story, each output read back as the
next command's ``--state``), and every object it makes checked against the Kubernetes OpenAPI
schema (kubernetes-validate, the pinned k3s's Kubernetes) and Traefik's own CRD schemas, read in
place from ../shared/reference/crds for the Traefik the pinned k3s bundles (never copied here)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from agent.apps import cli, resources
from agent.errors import BasaltError
from builder import imagedef, manifests

ROOT = Path(__file__).resolve().parents[4]
DATA = ROOT / "tests" / "data" / "apps"
CRDS = ROOT.parent / "shared" / "reference" / "crds"
K3S = imagedef.load_image("x86_64-k3s").k3s["version"]

# command line → golden output; each later command reads the earlier outputs as --state
STORY = [
    ("run", ["run", "nginx:1.27", "--name", "shop", "--port", "80", "--scale", "1-3", "--env", "LOG=info",
             "--host", "shop.example.com"], []),
    ("stage", ["stage", "shop", "nginx:1.28"], ["run"]),
    ("promote", ["promote", "shop", "v2"], ["run", "stage"]),
    ("pause", ["promote", "shop", "--pause"], ["run", "stage", "promote"]),
    ("resume", ["promote", "shop", "--resume"], ["run", "stage", "pause"]),
    ("abort", ["promote", "shop", "--abort"], ["run", "stage", "promote"]),
    ("weight", ["weight", "shop", "v1=90", "v2=10"], ["run", "stage"]),
    ("scale", ["scale", "shop", "2", "--revision", "v2"], ["run", "stage"]),
    ("rm-revision", ["rm", "shop", "v2"], ["run", "stage"]),
    ("rm", ["rm", "shop"], ["run", "stage"]),
]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def dry_run(argv: list[str], states: list[str]) -> str:
    args = parse(["--dry-run", *[x for s in states for x in ("--state", str(DATA / f"{s}.yaml"))], *argv])
    return cli.dry_run_text(cli.plan(args, cli.read_state(args.state)))


@pytest.mark.parametrize(("name", "argv", "states"), STORY, ids=[s[0] for s in STORY])
def test_dry_run_output_is_exact(name: str, argv: list[str], states: list[str]) -> None:
    assert dry_run(argv, states) == (DATA / f"{name}.yaml").read_text()


def test_the_story_says_what_each_step_does() -> None:
    def objects(name: str) -> dict[tuple[str, str], dict[str, Any]]:
        return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all((DATA / f"{name}.yaml").read_text())
                if o}
    run = objects("run")
    assert sorted(run) == [("Deployment", "shop-v1"), ("HorizontalPodAutoscaler", "shop-v1"),
                           ("IngressRoute", "shop"), ("Service", "shop-v1"), ("TraefikService", "shop")]
    routes = run["IngressRoute", "shop"]["spec"]["routes"]
    assert [r["match"] for r in routes] == ["Host(`shop.example.com`)", "Host(`v1-shop.example.com`)"]
    assert routes[0]["services"] == [{"kind": "TraefikService", "name": "shop"}]
    stage = objects("stage")
    assert stage["TraefikService", "shop"]["spec"]["weighted"]["services"] == [
        {"name": "shop-v1", "port": 80, "weight": 100}, {"name": "shop-v2", "port": 80, "weight": 0}]
    assert stage["Deployment", "shop-v2"]["spec"]["template"]["spec"]["containers"][0]["env"] == \
        [{"name": "LOG", "value": "info"}]  # the current revision's port, scale and environment
    notes = objects("promote")["TraefikService", "shop"]["metadata"]["annotations"]
    assert (notes["basalt.io/rollout"], notes["basalt.io/target"], notes["basalt.io/rollback-to"]) == \
        ("promoting", '{"v1":0,"v2":100}', '{"v1":100,"v2":0}')
    assert objects("pause")["TraefikService", "shop"]["metadata"]["annotations"]["basalt.io/rollout"] == "paused"
    assert objects("resume")["TraefikService", "shop"]["metadata"]["annotations"]["basalt.io/rollout"] == \
        "promoting"
    aborted = objects("abort")["TraefikService", "shop"]["metadata"]["annotations"]
    assert (aborted["basalt.io/rollout"], aborted["basalt.io/target"], aborted["basalt.io/increment"]) == \
        ("aborted", '{"v1":100,"v2":0}', "100")
    assert objects("weight")["TraefikService", "shop"]["metadata"]["annotations"]["basalt.io/target"] == \
        '{"v1":90,"v2":10}'
    assert (DATA / "scale.yaml").read_text().startswith("# delete HorizontalPodAutoscaler default/shop-v2\n")
    assert objects("scale")["Deployment", "shop-v2"]["spec"]["replicas"] == 2
    assert "shop-v2" not in str(objects("rm-revision")["IngressRoute", "shop"])
    assert (DATA / "rm.yaml").read_text().count("# delete ") == 8


@pytest.mark.parametrize(("argv", "states", "message"), [
    (["run", "nginx", "--name", "Shop", "--port", "80"], [], "name: 'Shop' is not a valid app name"),
    (["run", "nginx", "--name", "shop", "--port", "0"], [], "port: 0 is not a TCP port"),
    (["run", "nginx", "--name", "shop", "--port", "80", "--scale", "3-1"], [], "--scale: 3-1: the range runs "
                                                                                 "backwards"),
    (["run", "nginx", "--name", "shop", "--port", "80", "--env", "LOG"], [], "--env: 'LOG' is not KEY=VALUE"),
    (["run", "nginx", "--name", "shop", "--port", "80"], ["run"], "app shop exists already in namespace default"),
    (["stage", "cart", "nginx"], ["run"], "no app cart in namespace default"),
    (["stage", "shop", "nginx", "--revision", "v1"], ["run"], "app shop has a revision v1 already"),
    (["promote", "shop", "v9"], ["run", "stage"], "app shop has no revision v9"),
    (["promote", "shop", "v1"], ["run", "stage"], "shop: v1 has all the traffic already"),
    (["promote", "shop", "--resume"], ["run", "stage"], "shop: the promotion is not paused (idle)"),
    (["weight", "shop", "v1=50", "v2=40"], ["run", "stage"], "the weights add up to 90, not 100 (v1=50 + v2=40)"),
    (["rm", "shop", "v1"], ["run", "stage"], "shop: revision v1 has traffic (100%, target 100%)"),
    # hostile values: a trailing newline never passes a name's pattern; an image is an image reference
    (["run", "nginx", "--name", "shop\n", "--port", "80"], [], "name: 'shop\\n' is not a valid app name"),
    (["run", "nginx", "--name", "shop", "--port", "80", "--host", "shop.example.com\n"], [],
     "--host: 'shop.example.com\\n' is not a host name"),
    (["run", "nginx", "--name", "shop", "--port", "80", "--env", "A\nB=1"], [],
     "--env: 'A\\nB' is not a valid environment variable name"),
    (["run", "x;touch /tmp/pwned;", "--name", "shop", "--port", "80"], [],
     "image: 'x;touch /tmp/pwned;' is not an image reference"),
    (["run", "nginx:1.27\n", "--name", "shop", "--port", "80"], [], "image: 'nginx:1.27\\n' is not an image reference"),
    (["run", "$(id)", "--name", "shop", "--port", "80"], [], "image: '$(id)' is not an image reference"),
    (["stage", "shop", "nginx:1.28 --privileged"], ["run"], "image: 'nginx:1.28 --privileged' is not an image "
                                                            "reference"),
    (["run", "nginx", "--name", "shop", "--port", "80", "--revision", "v1\n"], [],
     "revision: 'v1\\n' is not a valid revision name"),
])
def test_bad_commands_are_refused_with_the_reason(argv: list[str], states: list[str], message: str) -> None:
    with pytest.raises(BasaltError) as exc:
        dry_run(argv, states)
    assert exc.value.render().splitlines()[0] == message
    assert exc.value.problems[0].hint


def test_the_cli_exits_1_with_the_message_and_a_hint_and_no_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.apps.cli", "--dry-run", "--state", str(DATA / "run.yaml"),
                           "weight", "shop", "v1=50"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "the weights add up to 50, not 100 (v1=50)\nhint: give every revision that gets traffic; " \
                          "the ones not named get 0\n"


def test_the_dry_run_output_reads_back_as_the_app() -> None:
    state = resources.read(cli.read_state([str(DATA / "run.yaml"), str(DATA / "stage.yaml")]), "shop")
    assert state is not None and state.host == "shop.example.com" and state.port == 80
    assert sorted(state.revisions) == ["v1", "v2"] and state.current() == "v1"
    assert str(state.revisions["v2"].scale) == "1-3" and state.revisions["v2"].image == "nginx:1.28"


def traefik_schemas() -> dict[str, dict[str, Any]]:
    version = manifests.traefik_version(K3S)
    folder = CRDS / f"traefik-v{version}"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: Traefik v{version}'s CRDs (bundled by k3s {K3S}) are read from there")
    out = {}
    for plural, kind in (("traefikservices", "TraefikService"), ("ingressroutes", "IngressRoute")):
        crd = yaml.safe_load((folder / f"traefik.io_{plural}.yaml").read_text())
        out[kind] = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]
    return out


def test_every_object_fits_the_kubernetes_schema_and_traefiks_crds() -> None:
    schemas = traefik_schemas()
    kubernetes = manifests.kubernetes_version(K3S)
    seen = set()
    for name, _, _ in STORY:
        for obj in yaml.safe_load_all((DATA / f"{name}.yaml").read_text()):
            if not obj:
                continue
            seen.add(obj["kind"])
            if obj["kind"] in schemas:
                errors = [e.message for e in jsonschema.Draft7Validator(schemas[obj["kind"]]).iter_errors(obj)]
                assert errors == [], (name, obj["kind"])
            else:
                assert manifests.object_problems(obj, kubernetes) == [], (name, obj["kind"])
    assert seen == {"Deployment", "Service", "HorizontalPodAutoscaler", "TraefikService", "IngressRoute"}


def test_a_crd_schema_catches_a_bad_object() -> None:
    """The check above can fail: a weight below 0 and a route without a match are refused."""
    schemas = traefik_schemas()
    objs = {o["kind"]: o for o in yaml.safe_load_all((DATA / "stage.yaml").read_text()) if o}
    bad = objs["TraefikService"]
    bad["spec"]["weighted"]["services"][0]["weight"] = -5
    assert [e.message for e in jsonschema.Draft7Validator(schemas["TraefikService"]).iter_errors(bad)] == \
        ["-5 is less than the minimum of 0"]
    route = objs["IngressRoute"]
    del route["spec"]["routes"][0]["match"]
    assert [e.message for e in jsonschema.Draft7Validator(schemas["IngressRoute"]).iter_errors(route)] == \
        ["'match' is a required property"]


def test_the_pinned_k3s_bundles_traefik_3_5() -> None:
    assert K3S == "v1.34.2+k3s1" and manifests.traefik_version(K3S) == "3.5.1"


def test_inv_app_passes_its_arguments_as_arguments_never_as_a_shell_line(tmp_path: Path) -> None:
    """./inv app -- ARGS: an argument holding ';' is one argument (it was joined into a shell line)."""
    marker = tmp_path / "PWNED"
    proc = subprocess.run([sys.executable, "-m", "invoke", "app", "--", "--dry-run", "run", f"x;touch {marker};",
                           "--name", "shop", "--port", "80"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert not marker.exists()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"image: 'x;touch {marker};' is not an image reference\n"), proc.stderr


def test_removing_an_app_that_sleeps_removes_its_wake_slice(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(dry_run(["run", "nginx:1.27", "--name", "cold", "--port", "80",
                                                "--scale", "0-2"], []))
    args = parse(["--dry-run", "--state", str(tmp_path / "run.yaml"), "rm", "cold"])
    removed = cli.dry_run_text(cli.plan(args, cli.read_state(args.state)))
    assert removed.splitlines() == [
        "# delete Deployment default/cold-v1", "# delete Service default/cold-v1",
        "# delete EndpointSlice default/cold-v1-wake", "# delete TraefikService default/cold",
        "# delete IngressRoute default/cold"]
