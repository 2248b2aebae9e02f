"""config.yaml's ``apps:``: checked with file:line errors, and deployed at boot by a k3s server as
the objects ``basalt app run`` makes (k3s's auto-deploy manifests directory)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from agent.apps import commands, deploy, spec
from agent.config.validate import check_text
from agent.modules import k3s, plans

FACTS = {"k3s": True, "version": "0.1.0", "slot": "a", "mode": "installed", "k3s_images": [], "k3s_charts": []}
APPS = """\
apps:
- name: shop
  image: nginx:1.27
  port: 80
  scale: 1-3
  env: {LOG: info, WORKERS: 2}
  host: shop.example.com
- name: clock
  image: registry.site/clock:3
  port: 8080
"""


def boot_files(config: dict[str, Any]) -> dict[str, Any]:
    boot = dict(plans.plan_phase("boot", config, FACTS)).get("k3s", [])
    return {os.path.basename(a[1]): json.loads(a[2]) for a in boot
            if a[0] == "write" and a[1].startswith(k3s.MANIFESTS)}


def test_apps_in_the_config_are_written_as_the_objects_basalt_app_run_makes() -> None:
    loaded = check_text(APPS, "site.yaml")
    assert loaded.problems == ()
    files = boot_files(loaded.value)
    # HTTPS by default (app_tls.mode: site-ca): each app on websecure, plain HTTP redirected to it
    assert sorted(files) == [
        "basalt-app-clock-deployment-clock-v1.yaml", "basalt-app-clock-ingressroute-clock-http.yaml",
        "basalt-app-clock-ingressroute-clock.yaml", "basalt-app-clock-middleware-clock-https.yaml",
        "basalt-app-clock-service-clock-v1.yaml", "basalt-app-clock-traefikservice-clock.yaml",
        "basalt-app-shop-deployment-shop-v1.yaml", "basalt-app-shop-horizontalpodautoscaler-shop-v1.yaml",
        "basalt-app-shop-ingressroute-shop-http.yaml", "basalt-app-shop-ingressroute-shop.yaml",
        "basalt-app-shop-middleware-shop-https.yaml", "basalt-app-shop-service-shop-v1.yaml",
        "basalt-app-shop-traefikservice-shop.yaml"]
    cli_made = commands.run([], spec.AppSpec(name="shop", image="nginx:1.27", port=80, scale=spec.Scale(1, 3),
                                             env=(("LOG", "info"), ("WORKERS", "2")), host="shop.example.com",
                                             tls="site-ca")).apply
    assert [files[f"basalt-app-shop-{o['kind'].lower()}-{o['metadata']['name']}.yaml"] for o in cli_made] == cli_made
    clock = files["basalt-app-clock-ingressroute-clock.yaml"]["spec"]
    assert clock["routes"][0]["match"] == "Host(`clock.local`)"
    assert clock["entryPoints"] == ["websecure"] and clock["tls"] == {"secretName": "clock-tls"}
    assert files["basalt-app-clock-middleware-clock-https.yaml"]["spec"] == {
        "redirectScheme": {"scheme": "https", "permanent": True}}


@pytest.mark.parametrize(("mode", "route_tls"), [("off", None), ("acme", {"certResolver": "basalt"})])
def test_app_tls_mode_decides_the_routes(mode: str, route_tls: Any) -> None:
    acme = "\n  acme_directory: https://acme.site/dir\n  acme_email: ops@site.example" if mode == "acme" else ""
    loaded = check_text(f"{APPS}app_tls:\n  mode: {mode}{acme}\n", "site.yaml")
    assert loaded.problems == ()
    files = boot_files(loaded.value)
    route = files["basalt-app-clock-ingressroute-clock.yaml"]["spec"]
    assert route.get("tls") == route_tls
    assert ("basalt-app-clock-middleware-clock-https.yaml" in files) == (mode != "off")
    assert route["entryPoints"] == (["web"] if mode == "off" else ["websecure"])
    # with the controller in the image, ACME gives k3s's Traefik the resolver through its chart's values
    controller = dict(k3s.apps_controller_files(loaded.value, {**FACTS, "k3s_images": [deploy.IMAGE_FILE]}))
    helm = controller.get("basalt-traefik-acme.yaml")
    if mode == "off":
        assert helm is None
    else:
        assert helm["kind"] == "HelmChartConfig" and helm["metadata"] == {"name": "traefik", "namespace": "kube-system"}
        assert json.loads(helm["spec"]["valuesContent"])["additionalArguments"] == [
            "--certificatesresolvers.basalt.acme.caserver=https://acme.site/dir",
            "--certificatesresolvers.basalt.acme.email=ops@site.example",
            "--certificatesresolvers.basalt.acme.storage=/data/acme.json",
            "--certificatesresolvers.basalt.acme.httpchallenge.entrypoint=web"]


@pytest.mark.parametrize(("text", "expected"), [
    ("apps:\n- name: shop\n  image: nginx\n", ["site.yaml:2: apps[0]: 'port' is required"]),
    ("apps:\n- name: Shop\n  image: nginx\n  port: 80\n",
     ["site.yaml:2: apps[0].name: 'Shop' is not valid here\nhint: lowercase letters, digits and '-', starting "
      "with a letter, at most 30 characters"]),
    ("apps:\n- name: shop\n  image: nginx\n  port: 80\n  scale: 3-1\n",
     ["site.yaml:5: apps[0].scale: 3-1: the range runs backwards\nhint: write it 1-3"]),
    ("apps:\n- name: shop\n  image: nginx\n  port: 80\n  scale: 2,rps=3\n",
     ["site.yaml:5: apps[0].scale: 2,rps=3: rps= needs a range\nhint: e.g. 1-2,rps=3"]),
    ("apps:\n- name: shop\n  image: nginx\n  port: 80\n  scale: 0-3,concurrency=0\n",
     ["site.yaml:5: apps[0].scale: 'concurrency=0': concurrency is a number of requests per replica, more "
      "than 0\nhint: e.g. concurrency=10"]),
    ("apps:\n- name: shop\n  image: nginx\n  port: 80\n  scale: 0-3,idle=0s\n",
     ["site.yaml:5: apps[0].scale: '0s': the interval must be more than zero\nhint: e.g. 5s"]),
    ("apps:\n- name: shop\n  image: nginx\n  port: 80\n  host: Shop_1\n",
     ["site.yaml:5: apps[0].host: 'Shop_1' is not a host name\nhint: lowercase letters, digits and '-' in "
      "dot-separated labels of at most 63 characters, e.g. shop.example.com"]),
    ("apps:\n- name: shop\n  image: nginx\n  port: 80\n  replicas: 2\n",
     ["site.yaml:5: apps[0].replicas: unknown key 'replicas'\nhint: valid keys here: env, host, image, name, "
      "namespace, port, revision, scale"]),
    ("apps:\n- {name: shop, image: a, port: 80}\n- {name: shop, image: b, port: 81}\n",
     ["site.yaml:3: apps[1].name: app shop is declared twice (also apps[0])\nhint: give each app one entry; "
      "revisions are made by basalt app stage"]),
])
def test_bad_apps_are_reported_at_their_line(text: str, expected: list[str]) -> None:
    assert [p.render() for p in check_text(text, "site.yaml").problems] == expected
