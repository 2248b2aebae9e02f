"""The apps controller in the cluster: its namespace, service account, the little it may do, and
its Deployment, running the image the builder made (builder/media/appsimage.py), which k3s imports from
the air-gap images directory: ``imagePullPolicy: Never``, so an offline site never tries a registry."""

from __future__ import annotations

import json
from typing import Any

from agent.apps import tls
from agent.apps.spec import MANAGED

NAMESPACE = tls.NAMESPACE
NAME = "basalt-apps-controller"
IMAGE = "docker.io/basalt/apps-controller"  # fully qualified: the name containerd keeps it under
IMAGE_FILE = "basalt-apps-controller.tar"  # in /usr/lib/basalt/k3s/images (then k3s's agent/images)
MDNS = "basalt-mdns"  # the apps' names on each node's LAN (agent/apps/mdns.py): a DaemonSet, same image


def image(version: str) -> str:
    return f"{IMAGE}:{version}"


def objects(version: str) -> list[dict[str, Any]]:
    labels = {**MANAGED, "app.kubernetes.io/name": NAME}
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": labels}
    rules = [{"apiGroups": ["traefik.io"], "resources": ["traefikservices"], "verbs": ["get", "list", "patch"]},
             {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "patch"]},
             # Traefik's pod (its metrics, agent/apps/controller.Traffic) and the rollbacks' Events
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
             # a sleeping revision (agent/apps/activator.py): its Service's selector off and on, its wake slice
             {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "patch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "create", "patch", "delete"]},
             # the site-ca apps' certificates (agent/apps/tls.py): written, never read back
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},
             # the nodes whose LANs name the apps (APP.NODE.local): their names only
             {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    container = {
        "name": "controller", "image": image(version), "imagePullPolicy": "Never",
        # the holding endpoint for sleeping revisions; the wake slices give this pod's IP
        "ports": [{"name": "activator", "containerPort": 8012}],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "resources": {"requests": {"cpu": "5m", "memory": "24Mi"}, "limits": {"memory": "64Mi"}},
        # the site CA (readable by this pod's group only), and a small private /tmp for openssl's files
        "volumeMounts": [{"name": "site-ca", "mountPath": tls.CA_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": dict(MANAGED)}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": NAME, "labels": labels}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {"replicas": 1, "strategy": {"type": "Recreate"},  # one controller at a time
                  "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"serviceAccountName": NAME, "enableServiceLinks": False,
                                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                                            "runAsGroup": 65534, "fsGroup": 65534},
                                        "volumes": [
                                            {"name": "site-ca", "secret": {"secretName": tls.CA_SECRET,
                                                                           "optional": True, "defaultMode": 0o440}},
                                            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
                                        "containers": [container]}}}},
        *mdns_objects(version),
    ]


def mdns_objects(version: str) -> list[dict[str, Any]]:
    """The announcer on every node: the host's network (its LAN's multicast), reading the apps'
    TraefikServices and nothing else, as nobody, with no capability (UDP 5353 needs none)."""
    labels = {**MANAGED, "app.kubernetes.io/name": MDNS}
    meta = {"name": MDNS, "namespace": NAMESPACE, "labels": labels}
    container = {
        "name": "mdns", "image": image(version), "imagePullPolicy": "Never",
        "command": ["/usr/bin/python3", "-S", "-m", "agent.apps.mdns"],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "PYTHONPATH", "value": "/app:/usr/lib/python3/dist-packages"}],  # zeroconf, Debian's
        "resources": {"requests": {"cpu": "5m", "memory": "24Mi"}, "limits": {"memory": "48Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": MDNS, "labels": labels},
         "rules": [{"apiGroups": ["traefik.io"], "resources": ["traefikservices"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": MDNS, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": MDNS},
         "subjects": [{"kind": "ServiceAccount", "name": MDNS, "namespace": NAMESPACE}]},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta,
         "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": MDNS}},
                  "template": {"metadata": {"labels": labels},
                               "spec": {"serviceAccountName": MDNS, "enableServiceLinks": False,
                                        "hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet",
                                        "tolerations": [{"operator": "Exists"}],  # every node, tainted too
                                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                                            "runAsGroup": 65534},
                                        "containers": [container]}}}},
    ]


def manifest(version: str) -> str:
    """The objects as one multi-document file (JSON documents are YAML)."""
    return "".join(f"---\n{json.dumps(o, indent=2)}\n" for o in objects(version))
