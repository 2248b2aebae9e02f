"""``basalt app``: on a node (the node's kubeconfig), from a workstation (``--kubeconfig``, or
``./inv app`` on the build host), or with ``--dry-run`` anywhere (the objects it would apply, as
YAML; ``--state FILE`` gives the app's objects as they are, e.g. an earlier dry run's output)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.apps import commands, resources, rollout, spec, tls
from agent.apps.commands import Change
from agent.errors import BasaltError, Problem

KINDS = ("TraefikService", "IngressRoute", "Middleware", "Deployment", "Service", "HorizontalPodAutoscaler")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", default="default")
    parser.add_argument("--kubeconfig", help="default: the service account, $KUBECONFIG, ~/.kube/config, "
                                             "/etc/rancher/k3s/k3s.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the objects as YAML; no cluster is used")
    parser.add_argument("--state", metavar="FILE", action="append", default=[],
                        help="with --dry-run: the app's objects now (YAML; again for more files, later ones "
                             "replacing earlier objects of the same kind and name)")
    sub = parser.add_subparsers(dest="app_command", required=True)
    run = sub.add_parser("run", help="run IMAGE as app NAME: its first revision, all the traffic")
    run.add_argument("image")
    run.add_argument("--name", required=True)
    run.add_argument("--port", required=True, type=int, help="the port the container listens on")
    run.add_argument("--scale", default="1", help="N replicas, or MIN-MAX to autoscale on CPU (default 1)")
    run.add_argument("--env", action="append", default=[], metavar="K=V")
    run.add_argument("--host", default="", help="the app's host name (default NAME.local)")
    run.add_argument("--revision", default=spec.FIRST_REVISION, help=argparse.SUPPRESS)
    run.add_argument("--tls", choices=tls.MODES,
                     help="HTTPS for its hosts: site-ca (a certificate from the node's site CA), acme (from the "
                          "ACME directory in config), off (HTTP only); default: the cluster's (app_tls.mode in the "
                          "node's config), off without a cluster")
    st = sub.add_parser("stage", help="a new revision beside the current one, at 0%%, at its preview host")
    st.add_argument("name")
    st.add_argument("image")
    st.add_argument("--revision", default="", help="its name (default: the next vN)")
    st.add_argument("--scale", help="default: the current revision's")
    st.add_argument("--env", action="append", default=[], metavar="K=V", help="added to the current revision's")
    pr = sub.add_parser("promote", help="shift the traffic to REVISION gradually")
    pr.add_argument("name")
    pr.add_argument("revision", nargs="?", default="")
    pr.add_argument("--increment", type=int, default=rollout.INCREMENT, help="points per step (default 5)")
    pr.add_argument("--interval", default="5s", help="time between steps (default 5s)")
    pr.add_argument("--max-error-rate", default=spec.format_error_rate(spec.MAX_ERROR_RATE),
                    help="roll back when the new revision answers more than this share of its requests "
                         "with 5xx in a step, and more than the old one (default 5%%)")
    pr.add_argument("--max-latency", default=spec.format_interval(spec.MAX_LATENCY),
                    help="roll back when the new revision's p95 latency in a step is above this, and above "
                         "the old one's (default 1s)")
    how = pr.add_mutually_exclusive_group()
    how.add_argument("--pause", action="store_true", help="hold the promotion where it is")
    how.add_argument("--resume", action="store_true", help="go on with a paused promotion")
    how.add_argument("--abort", action="store_true", help="give the traffic back as it was before the promotion")
    we = sub.add_parser("weight", help="set the revisions' weights: R=PCT ..., 100 in all")
    we.add_argument("name")
    we.add_argument("weights", nargs="+", metavar="R=PCT")
    we.add_argument("--increment", type=int, default=100, help="points per step (default: at once)")
    we.add_argument("--interval", default="5s")
    sc = sub.add_parser("scale", help="a revision's replicas: N or MIN-MAX (default: the current revision)")
    sc.add_argument("name")
    sc.add_argument("scale")
    sc.add_argument("--revision", default="")
    sub.add_parser("ps", help="apps, revisions, weights, ready replicas, URLs")
    tp = sub.add_parser("top", help="each revision's traffic: weight, requests a second, errors, p50/p95, replicas")
    tp.add_argument("--interval", default="2s", help="between the two scrapes, and between refreshes (default 2s)")
    tp.add_argument("--once", action="store_true", help="one table, then exit (default: refresh until Ctrl-C)")
    tp.add_argument("--metrics", default="", metavar="URL",
                    help="Traefik's metrics (default: $BASALT_TRAEFIK_METRICS, else Traefik's pod through the "
                         "API server)")
    lg = sub.add_parser("logs", help="the logs of an app's pods (one revision's, with REVISION)")
    lg.add_argument("name")
    lg.add_argument("revision", nargs="?", default="")
    lg.add_argument("--tail", type=int, default=100)
    sub.add_parser("ca", help="the site CA's certificate (PEM), for clients to trust the apps' HTTPS")
    rm = sub.add_parser("rm", help="remove an app, or one revision without traffic")
    rm.add_argument("name")
    rm.add_argument("revision", nargs="?", default="")


def _weights(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        rev, sep, pct = item.partition("=")
        if not sep or not pct.strip().rstrip("%").isdigit():
            raise BasaltError(Problem(f"{item!r} is not REVISION=PERCENT", hint="e.g. v1=90 v2=10"))
        out[rev] = int(pct.strip().rstrip("%"))
    return out


def plan(args: argparse.Namespace, objects: list[dict[str, Any]]) -> Change:
    """The change a command makes, from the app's objects now (pure: the dry run prints this)."""
    ns, cmd = args.namespace, args.app_command
    if cmd == "run":
        s = spec.AppSpec(name=spec.check_name(args.name), image=spec.check_image(args.image),
                         port=spec.check_port(args.port),
                         scale=spec.parse_scale(args.scale, "--scale"), env=spec.parse_env(args.env, "--env"),
                         host=spec.check_host(args.host, "--host") if args.host else "", namespace=ns,
                         revision=spec.check_revision(args.revision), tls=args.tls or "off")
        return commands.run(objects, s)
    if cmd == "stage":
        return commands.stage(objects, args.name, ns, spec.check_image(args.image), args.revision,
                              spec.parse_scale(args.scale, "--scale") if args.scale else None,
                              spec.parse_env(args.env, "--env"))
    if cmd == "promote":
        if args.pause:
            return commands.pause(objects, args.name, ns)
        if args.resume:
            return commands.resume(objects, args.name, ns)
        if args.abort:
            return commands.abort(objects, args.name, ns)
        if not args.revision:
            raise BasaltError(Problem("promote needs a REVISION", hint=f"basalt app promote {args.name} v2"))
        return commands.promote(objects, args.name, ns, args.revision, args.increment,
                                spec.parse_interval(args.interval, "--interval"),
                                spec.parse_error_rate(args.max_error_rate), spec.parse_latency(args.max_latency))
    if cmd == "weight":
        return commands.weight(objects, args.name, ns, _weights(args.weights), args.increment,
                               spec.parse_interval(args.interval, "--interval"))
    if cmd == "scale":
        return commands.scale(objects, args.name, ns, spec.parse_scale(args.scale), args.revision)
    if cmd == "rm":
        return commands.rm(objects, args.name, ns, args.revision)
    raise AssertionError(cmd)


def dry_run_text(change: Change) -> str:
    import yaml
    head = "".join(f"# delete {kind} {ns}/{name}\n" for kind, ns, name in change.delete)
    body = yaml.safe_dump_all(change.apply, sort_keys=False, default_flow_style=False) if change.apply else ""
    return head + body


def read_state(paths: list[str]) -> list[dict[str, Any]]:
    """Objects from YAML files (earlier dry runs' output), the later of two with one kind and name
    kept; a ``# delete KIND NS/NAME`` line removes one."""
    import yaml
    objects: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in paths:
        try:
            with open(path) as f:
                text = f.read()
            docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
        except (OSError, yaml.YAMLError) as exc:
            raise BasaltError(Problem(f"{path}: {exc}", hint="give the YAML an earlier --dry-run printed")) from None
        for line in text.splitlines():
            if line.startswith("# delete "):
                kind, _, where = line[len("# delete "):].partition(" ")
                ns, _, name = where.partition("/")
                objects.pop((kind, ns, name), None)
        for d in docs:
            meta = d.get("metadata") or {}
            objects[(str(d.get("kind")), meta.get("namespace") or "default", str(meta.get("name")))] = d
    return list(objects.values())


def cluster_objects(client: Any, namespace: str | None, app: str = "") -> list[dict[str, Any]]:
    selector = f"{spec.APP}={app}" if app else f"{spec.APP}"
    return [o for kind in KINDS for o in client.list(kind, namespace, selector)]


def main(args: argparse.Namespace) -> int:
    if args.dry_run:
        if args.app_command in ("ps", "logs", "top", "ca"):
            raise BasaltError(Problem(f"basalt app {args.app_command} reads the cluster: it has no --dry-run"))
        sys.stdout.write(dry_run_text(plan(args, read_state(args.state))))
        return 0
    from agent.apps import kube
    client = kube.Client(kube.credentials(args.kubeconfig))
    if args.app_command == "ps":
        objects = cluster_objects(client, None)
        keys = sorted({(o["metadata"].get("namespace", "default"), o["metadata"]["labels"][spec.APP])
                       for o in objects if o.get("kind") == "TraefikService"})
        states = [s for ns, app in keys if (s := resources.read(objects, app, ns)) is not None]
        print(commands.ps(states))
        return 0
    if args.app_command == "top":
        return top(client, args)
    if args.app_command == "ca":
        print(site_ca(client), end="")
        return 0
    if args.app_command == "run" and not args.tls:
        args.tls = cluster_tls(client)
    if args.app_command == "logs":
        selector = f"{spec.APP}={args.name}" + (f",{spec.REVISION}={args.revision}" if args.revision else "")
        pods = client.list("Pod", args.namespace, selector)
        if not pods:
            raise BasaltError(Problem(f"no pods for {args.name} {args.revision}".strip(), hint="basalt app ps"))
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            name = pod["metadata"]["name"]
            for line in client.logs(args.namespace, name, args.tail).splitlines():
                print(f"{name}: {line}")
        return 0
    objects = cluster_objects(client, args.namespace, getattr(args, "name", ""))
    change = plan(args, objects)
    versions = {(o["kind"], o["metadata"]["name"]): o["metadata"].get("resourceVersion") for o in objects}
    for kind, ns, name in change.delete:
        client.delete(kind, ns, name)
    for obj in change.apply:
        if obj["kind"] == "TraefikService" and versions.get((obj["kind"], obj["metadata"]["name"])):
            # the rollout's object: written only if nothing (the controller's last step) changed it since
            obj["metadata"]["resourceVersion"] = versions[(obj["kind"], obj["metadata"]["name"])]
        try:
            client.apply(obj)
        except kube.Conflict:
            raise BasaltError(Problem(f"{obj['kind']} {obj['metadata']['name']} changed while this ran "
                                      "(the controller stepped it)", hint="run the command again")) from None
    print(change.message)
    return 0


def _settings(client: Any) -> dict[str, str]:
    from agent.apps import kube
    try:
        data: dict[str, str] = client.get("ConfigMap", tls.NAMESPACE, tls.SETTINGS).get("data") or {}
    except kube.NotFound:
        return {}
    return data


def cluster_tls(client: Any) -> str:
    """The cluster's TLS mode for new apps (the node's ``app_tls.mode``); off where Basalt set none."""
    mode = _settings(client).get("tls", "off")
    return mode if mode in tls.MODES else "off"


def site_ca(client: Any) -> str:
    cert = _settings(client).get("ca.crt", "")
    if not cert.startswith("-----BEGIN CERTIFICATE-----"):
        raise BasaltError(Problem(f"this cluster has no site CA ({tls.NAMESPACE}/{tls.SETTINGS} has no ca.crt)",
                                  hint="a Basalt k3s server makes one with app_tls.mode: site-ca (the default)"))
    return cert


def scrape(client: Any, url: str) -> str:
    """Traefik's metrics: from ``url``, or from its pod through the API server's proxy."""
    from agent.apps import controller, metrics
    if url:
        return metrics.fetch(url)
    namespace, selector, _ = controller.TRAEFIK_POD
    pods = client.list("Pod", namespace, selector)
    if not pods:
        raise BasaltError(Problem(f"no Traefik pod in {namespace} ({selector}) to read metrics from",
                                  hint="give --metrics URL (Traefik's metrics entry point)"))
    name, port = pods[0]["metadata"]["name"], controller.metrics_port(pods[0])
    text: str = client.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}:{port}/proxy/metrics", raw=True)
    return text[:metrics.LIMIT]


def top(client: Any, args: argparse.Namespace) -> int:
    import os
    import time

    from agent.apps import controller, metrics
    from agent.apps import top as view
    interval = spec.parse_interval(args.interval, "--interval")
    url = args.metrics or os.environ.get(controller.METRICS_ENV, "")

    def read() -> tuple[float, metrics.Snapshot]:
        try:
            return time.monotonic(), metrics.parse(scrape(client, url))
        except (OSError, ValueError) as exc:
            raise BasaltError(Problem(f"cannot read Traefik's metrics: {exc}",
                                      hint="give --metrics URL (Traefik's metrics entry point)")) from None

    t0, before = read()
    try:
        while True:
            time.sleep(interval)
            t1, after = read()
            objects = cluster_objects(client, None)
            keys = sorted({(o["metadata"].get("namespace", "default"), o["metadata"]["labels"][spec.APP])
                           for o in objects if o.get("kind") == "TraefikService"})
            states = [s for ns, app in keys if (s := resources.read(objects, app, ns)) is not None]
            text = view.table(states, before, after, t1 - t0)
            if args.once:
                print(text)
                return 0
            print("\x1b[H\x1b[2J" + text, flush=True)  # the terminal cleared, the table at the top
            t0, before = t1, after
    except KeyboardInterrupt:
        return 0


def standalone(argv: list[str] | None = None) -> int:
    """``python -m agent.apps.cli`` (``./inv app`` on the build host)."""
    parser = argparse.ArgumentParser(prog="basalt app", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except BasaltError as exc:
        print(exc.render(), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(standalone())
