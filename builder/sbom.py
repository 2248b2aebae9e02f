"""An SPDX 2.3 (JSON) software bill of materials for a build: every locked Debian package, the
agent, k3s and its air-gap images, bundled charts; from the manifest's inputs, so it says exactly
what the image was built from."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any


def spdx_id(kind: str, name: str) -> str:
    return f"SPDXRef-{kind}-" + "".join(c if c.isalnum() or c in ".-" else "-" for c in name)


def document(image: str, version: str, arch: str, epoch: int, inputs: dict[str, Any], tool: str) -> dict[str, Any]:
    packages: list[dict[str, Any]] = []
    for p in inputs.get("packages", []):
        packages.append({
            "SPDXID": spdx_id("Package", f"{p['name']}-{p['role']}"), "name": p["name"], "versionInfo": p["version"],
            "supplier": "Organization: Debian", "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": p["sha256"]}],
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": f"pkg:deb/debian/{p['name']}@{p['version']}?arch={arch}"}],
            "comment": f"role: {p['role']}"})
    packages.append({"SPDXID": spdx_id("Package", "basalt-agent"), "name": "basalt-agent", "versionInfo": version,
                     "supplier": "Organization: Basalt", "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
                     "comment": f"tree digest {inputs.get('agent_digest', '')}"})
    k3s = inputs.get("k3s") or {}
    for key in ("binary", "airgap"):
        if k3s.get(key):
            packages.append({"SPDXID": spdx_id("Package", k3s[key]["file"]), "name": k3s[key]["file"],
                             "versionInfo": k3s["version"], "supplier": "Organization: k3s-io",
                             "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
                             "checksums": [{"algorithm": "SHA256", "checksumValue": k3s[key]["sha256"]}]})
    for chart in inputs.get("k3s_charts", []):
        packages.append({"SPDXID": spdx_id("Package", chart["name"]), "name": chart["name"],
                         "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
                         "checksums": [{"algorithm": "SHA256", "checksumValue": chart["sha256"]}]})
    body = json.dumps(packages, sort_keys=True).encode()
    root = spdx_id("Package", image)
    return {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image}-{version}",
        "documentNamespace": f"https://basalt.invalid/spdx/{image}-{version}-{hashlib.sha256(body).hexdigest()[:16]}",
        "creationInfo": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)), "creators": [tool]},
        "packages": [{"SPDXID": root, "name": image, "versionInfo": version, "downloadLocation": "NOASSERTION",
                      "filesAnalyzed": False, "primaryPackagePurpose": "OPERATING-SYSTEM"}, *packages],
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                           "relatedSpdxElement": root},
                          *({"spdxElementId": root, "relationshipType": "CONTAINS", "relatedSpdxElement": p["SPDXID"]}
                            for p in packages)],
    }
