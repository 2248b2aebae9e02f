"""Rancher's system-upgrade-controller, shipped in an image with ``upgrade.kubernetes: true``:
its namespace, service account, cluster role binding, settings and Deployment, pinned, as one
multi-document manifest that the node's k3s server deploys (the controller registers its Plan
CRD itself at start). The Plan that drives Basalt upgrades is made on the node from the site
config (agent/modules/k3s.py ``upgrade_plan``)."""

from __future__ import annotations

from typing import Any

import yaml

VERSION = "v0.20.1"
IMAGE = f"rancher/system-upgrade-controller:{VERSION}"
KUBECTL_IMAGE = "rancher/kubectl:v1.34.2"  # the controller's drain/cordon jobs
NAMESPACE = "system-upgrade"
NAME = "system-upgrade-controller"
IMAGES = (IMAGE, KUBECTL_IMAGE)  # what the air-gap image set needs for it


def objects() -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/version": VERSION}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "system-upgrade", "namespace": NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system-upgrade"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": "system-upgrade", "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "default-controller-env", "namespace": NAMESPACE},
         "data": {"SYSTEM_UPGRADE_CONTROLLER_DEBUG": "false", "SYSTEM_UPGRADE_CONTROLLER_THREADS": "2",
                  "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS": "900", "SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT": "99",
                  "SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY": "IfNotPresent",
                  "SYSTEM_UPGRADE_JOB_KUBECTL_IMAGE": KUBECTL_IMAGE, "SYSTEM_UPGRADE_JOB_PRIVILEGED": "true",
                  "SYSTEM_UPGRADE_JOB_TTL_SECONDS_AFTER_FINISH": "900",
                  "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL": "15m"}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": NAME, "namespace": NAMESPACE,
                                                                     "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "system-upgrade",
                      "nodeSelector": {"node-role.kubernetes.io/control-plane": "true"},
                      "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                      {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                                       "effect": "NoSchedule"}],
                      "containers": [{
                          "name": NAME, "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                          "envFrom": [{"configMapRef": {"name": "default-controller-env"}}],
                          "env": [{"name": "SYSTEM_UPGRADE_CONTROLLER_NAME", "value": NAME},
                                  {"name": "SYSTEM_UPGRADE_CONTROLLER_NAMESPACE",
                                   "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                                  {"name": "SYSTEM_UPGRADE_CONTROLLER_NODE_NAME",
                                   "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                          "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                      "volumes": [{"name": "tmp", "emptyDir": {}}]}}}},
    ]


def manifest() -> str:
    return f"# {NAME} {VERSION}, shipped by Basalt (upgrade.kubernetes)\n" + yaml.safe_dump_all(objects(),
                                                                                               sort_keys=True)
