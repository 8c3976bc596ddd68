"""k8s/: every YAML document parses, is a kind we know at the apiVersion its API has, uses only field
names that API defines (lists written down below from the Istio, Envoy Gateway and Kubernetes API
references), and the filter config embedded in it passes both the schema (kong/l402.meta.json) and
`l402 config check`. Every file directly in a folder of k8s/ is a complete object (what
`kubectl apply -f <folder>` needs); patches of existing objects live in `patches/` subfolders, which a
folder apply does not read. No Kubernetes cluster runs in the test environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import ROOT
from test_kong_schema import ENV, VALIDATOR, parser

K8S = ROOT / "k8s"
FILES = sorted(K8S.rglob("*.yaml"))
# The folders an operator applies with `kubectl apply -f <folder>` (not recursive), and the patches.
FOLDERS = sorted(p for p in K8S.iterdir() if p.is_dir())
APPLIED = sorted(f for d in FOLDERS for f in d.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
PATCHES = sorted(f for f in FILES if "patches" in f.relative_to(K8S).parts)

META = {"name", "namespace", "labels", "annotations"}
# kind -> (apiVersion, {dotted path of an object: its allowed keys}); "*" allows any key (maps of
# user data such as pluginConfig, labels, or an Envoy resource in a patch).
KNOWN: dict[str, tuple[str, dict[str, set[str]]]] = {
    "WasmPlugin": ("extensions.istio.io/v1alpha1", {
        "spec": {"selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
                 "pluginConfig", "pluginName", "phase", "priority", "failStrategy", "vmConfig", "match", "type"},
        "spec.selector": {"matchLabels"}, "spec.selector.matchLabels": {"*"},
        "spec.vmConfig": {"env"}, "spec.vmConfig.env[]": {"name", "value", "valueFrom"},
        "spec.pluginConfig": {"*"},
    }),
    "ServiceEntry": ("networking.istio.io/v1", {
        "spec": {"hosts", "addresses", "ports", "location", "resolution", "endpoints", "workloadSelector",
                 "exportTo", "subjectAltNames"},
        "spec.ports[]": {"number", "protocol", "name", "targetPort"},
    }),
    "DestinationRule": ("networking.istio.io/v1", {
        "spec": {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"},
        "spec.trafficPolicy": {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel",
                               "proxyProtocol"},
        "spec.trafficPolicy.tls": {"mode", "clientCertificate", "privateKey", "caCertificates", "credentialName",
                                   "subjectAltNames", "sni", "insecureSkipVerify", "caCrl"},
    }),
    "Deployment": ("apps/v1", {
        "spec": {"template", "replicas", "selector", "strategy"}, "spec.template": {"spec", "metadata"},
        "spec.template.spec": {"containers", "volumes"}, "spec.template.spec.containers[]": {"name", "env", "image"},
        "spec.template.spec.containers[].env[]": {"name", "value", "valueFrom"},
        "spec.template.spec.containers[].env[].valueFrom": {"secretKeyRef"},
        "spec.template.spec.containers[].env[].valueFrom.secretKeyRef": {"name", "key", "optional"},
    }),
    "EnvoyExtensionPolicy": ("gateway.envoyproxy.io/v1alpha1", {
        "spec": {"targetRef", "targetRefs", "targetSelectors", "wasm", "extProc", "lua"},
        "spec.targetRefs[]": {"group", "kind", "name", "sectionName"},
        "spec.wasm[]": {"name", "rootID", "code", "config", "failOpen", "env"},
        "spec.wasm[].code": {"type", "http", "image", "pullPolicy"},
        "spec.wasm[].code.image": {"url", "sha256", "pullSecretRef"},
        "spec.wasm[].env": {"hostKeys"}, "spec.wasm[].config": {"*"},
    }),
    "EnvoyPatchPolicy": ("gateway.envoyproxy.io/v1alpha1", {
        "spec": {"targetRef", "type", "jsonPatches", "priority"},
        "spec.targetRef": {"group", "kind", "name"},
        "spec.jsonPatches[]": {"type", "name", "operation"},
        "spec.jsonPatches[].operation": {"op", "path", "from", "value", "jsonPath"},
        "spec.jsonPatches[].operation.value": {"*"},
    }),
    "EnvoyProxy": ("gateway.envoyproxy.io/v1alpha1", {
        "spec": {"provider", "logging", "telemetry", "bootstrap", "concurrency", "shutdown", "mergeGateways"},
        "spec.provider": {"type", "kubernetes"},
        "spec.provider.kubernetes": {"envoyDeployment", "envoyService", "envoyHpa", "envoyDaemonSet", "envoyPDB"},
        "spec.provider.kubernetes.envoyDeployment": {"container", "pod", "replicas", "patch", "strategy", "name"},
        "spec.provider.kubernetes.envoyDeployment.container": {"env", "volumeMounts", "resources", "image",
                                                               "securityContext"},
        "spec.provider.kubernetes.envoyDeployment.container.env[]": {"name", "value", "valueFrom"},
        "spec.provider.kubernetes.envoyDeployment.container.env[].valueFrom": {"secretKeyRef"},
        "spec.provider.kubernetes.envoyDeployment.container.env[].valueFrom.secretKeyRef": {"name", "key"},
        "spec.provider.kubernetes.envoyDeployment.container.volumeMounts[]": {"name", "mountPath", "readOnly"},
        "spec.provider.kubernetes.envoyDeployment.pod": {"volumes", "annotations", "labels"},
        "spec.provider.kubernetes.envoyDeployment.pod.volumes[]": {"name", "secret"},
        "spec.provider.kubernetes.envoyDeployment.pod.volumes[].secret": {"secretName", "items"},
        "spec.provider.kubernetes.envoyDeployment.pod.volumes[].secret.items[]": {"key", "path"},
    }),
}


# kind -> what a complete object of that kind must have (dotted paths; "a|b" is one of them), beyond
# apiVersion, kind and metadata.name: the fields the API server requires, and the workload or route a
# plugin or policy attaches to (without which it would apply to every workload of the namespace).
REQUIRED: dict[str, list[str]] = {
    "WasmPlugin": ["spec.url", "spec.selector|spec.targetRef|spec.targetRefs"],
    "ServiceEntry": ["spec.hosts"],
    "DestinationRule": ["spec.host"],
    "Deployment": ["spec.selector.matchLabels", "spec.template.metadata.labels",
                   "spec.template.spec.containers[].image"],
    "EnvoyExtensionPolicy": ["spec.targetRef|spec.targetRefs|spec.targetSelectors", "spec.wasm[].code"],
    "EnvoyPatchPolicy": ["spec.targetRef", "spec.type", "spec.jsonPatches"],
    "EnvoyProxy": [],
}


def missing_fields(doc: dict[str, Any]) -> list[str]:
    """The fields a complete object of doc's kind needs and doc lacks."""
    def present(value: Any, keys: list[str]) -> bool:
        if not keys:
            return value not in (None, "", [], {})
        key, rest = keys[0], keys[1:]
        if key.endswith("[]"):
            items = value.get(key[:-2]) if isinstance(value, dict) else None
            return isinstance(items, list) and bool(items) and all(present(i, rest) for i in items)
        return isinstance(value, dict) and present(value.get(key), rest)

    wanted = ["apiVersion", "kind", "metadata.name"] + REQUIRED.get(doc.get("kind"), ["<a kind the test knows>"])
    return [w for w in wanted if not any(present(doc, alt.split(".")) for alt in w.split("|"))]


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in FILES:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            out.append((f"{path.relative_to(K8S)}#{i}", doc))
    return out


DOCS = documents()


def check_keys(value: Any, path: str, allowed: dict[str, set[str]], errors: list[str]) -> None:
    if isinstance(value, dict):
        keys = allowed.get(path)
        if keys is None:
            errors.append(f"{path}: an object the test does not know")
            return
        if "*" in keys:
            return
        for k, v in value.items():
            if k not in keys:
                errors.append(f"{path}.{k}: not a field of this API")
            else:
                check_keys(v, f"{path}.{k}", allowed, errors)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                check_keys(item, f"{path}[]", allowed, errors)


def test_every_file_has_documents():
    assert {p.relative_to(K8S).as_posix() for p in FILES} >= {
        "istio/l402-wasmplugin.yaml", "istio/l402-node.yaml", "envoy-gateway/l402-extension-policy.yaml"}
    kinds = {d["kind"] for _, d in DOCS}
    assert {"WasmPlugin", "ServiceEntry", "DestinationRule", "EnvoyExtensionPolicy"} <= kinds


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[i for i, _ in DOCS])
def test_document_uses_known_fields(doc):
    assert doc["kind"] in KNOWN, doc["kind"]
    api, allowed = KNOWN[doc["kind"]]
    assert doc["apiVersion"] == api
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(doc["metadata"]) <= META and doc["metadata"]["name"]
    errors: list[str] = []
    check_keys(doc["spec"], "spec", allowed, errors)
    assert not errors, errors


def test_every_folder_applies_as_a_folder():
    """`kubectl apply -f k8s/<folder>/` reads exactly the files directly in it: each must hold only
    complete objects, and a Deployment's selector must select its own pods."""
    assert {d.name for d in FOLDERS} == {"istio", "envoy-gateway"}
    assert APPLIED, "no files to apply"
    errors = []
    for path in APPLIED:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            where = f"{path.relative_to(K8S)}#{i}"
            if not isinstance(doc, dict):
                errors.append(f"{where}: not an object")
                continue
            errors += [f"{where} ({doc.get('kind')}): no {m}" for m in missing_fields(doc)]
            if doc.get("kind") == "Deployment" and not missing_fields(doc):
                labels = doc["spec"]["template"]["metadata"]["labels"]
                if not doc["spec"]["selector"]["matchLabels"].items() <= labels.items():
                    errors.append(f"{where}: spec.selector does not select spec.template")
    assert not errors, errors


def test_patches_are_kept_out_of_the_applied_folders():
    """A patch is an incomplete object: it sits in a patches/ subfolder that a folder apply skips,
    and the docs say how to apply it."""
    assert [p.relative_to(K8S).as_posix() for p in PATCHES] == ["istio/patches/l402-secrets.yaml"]
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    for path in PATCHES:
        assert path not in APPLIED and path.parent.name == "patches" and path.parent.parent in FOLDERS
        for doc in yaml.safe_load_all(path.read_text()):
            assert missing_fields(doc), f"{path.name}: a complete object, it belongs in the folder itself"
        rel = path.relative_to(ROOT).as_posix()
        assert rel in docs and rel in path.read_text(), f"{rel}: how to apply it is not written down"
    assert "kubectl apply -f k8s/istio/" in docs and "kubectl apply -f k8s/envoy-gateway/" in docs
    assert "kubectl patch" in docs or "-n istio-ingress patch" in docs


def test_the_completeness_check_can_fail():
    (patch,) = [d for p in PATCHES for d in yaml.safe_load_all(p.read_text())]
    assert missing_fields(patch) == ["spec.selector.matchLabels", "spec.template.metadata.labels",
                                     "spec.template.spec.containers[].image"]
    assert missing_fields({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                           "metadata": {"name": "x"}, "spec": {"url": "oci://x"}}) == [
        "spec.selector|spec.targetRef|spec.targetRefs"]
    assert missing_fields({"kind": "Secret"}) == ["apiVersion", "metadata.name", "<a kind the test knows>"]


def test_envoy_gateway_floor_is_1_3():
    """wasm[].env (the secrets' way into the VM) arrived in Envoy Gateway 1.3."""
    (policy,) = _by_kind("EnvoyExtensionPolicy", "envoy-gateway/")
    assert "env" in policy["spec"]["wasm"][0]
    text = (K8S / "envoy-gateway" / "l402-extension-policy.yaml").read_text()
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "1.3+" in text and "Envoy Gateway 1.3+" in docs
    assert not re.search(r"1\.2\+", text + docs)


def test_the_key_check_can_fail():
    errors: list[str] = []
    check_keys({"url": "x", "pluginConfg": {}}, "spec", KNOWN["WasmPlugin"][1], errors)
    assert errors == ["spec.pluginConfg: not a field of this API"]


def embedded_configs() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for doc_id, doc in DOCS:
        if doc["kind"] == "WasmPlugin":
            out.append((doc_id, doc, doc["spec"]["pluginConfig"]))
        elif doc["kind"] == "EnvoyExtensionPolicy":
            for w in doc["spec"]["wasm"]:
                out.append((doc_id, doc, w["config"]))
    return out


CONFIGS = embedded_configs()


@pytest.mark.parametrize("case", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_embedded_filter_config(case, tmp_path):
    _, doc, cfg = case
    assert VALIDATOR.is_valid(cfg), [e.message for e in VALIDATOR.iter_errors(cfg)]
    assert parser(cfg, tmp_path)["valid"]
    # Every {"env": NAME} the config reads is one the host hands to the VM.
    wanted = {s["env"] for s in (cfg["secrets"], cfg["node"]["credential"]) if isinstance(s, dict)}
    if doc["kind"] == "WasmPlugin":
        given = {e["name"] for e in doc["spec"]["vmConfig"]["env"] if e.get("valueFrom") == "HOST"}
        assert doc["spec"]["failStrategy"] == "FAIL_CLOSE" and doc["spec"]["url"].startswith("oci://")
    else:
        (w,) = doc["spec"]["wasm"]
        given = set(w["env"]["hostKeys"])
        assert w["failOpen"] is False and w["code"]["type"] == "Image"
    assert wanted and wanted <= given, (wanted, given)
    assert wanted <= set(ENV)


def _by_kind(kind: str, folder: str) -> list[dict[str, Any]]:
    return [d for i, d in DOCS if d["kind"] == kind and i.startswith(folder)]


def test_istio_node_cluster_matches_the_plugin():
    (plugin,) = _by_kind("WasmPlugin", "istio/")
    node = plugin["spec"]["pluginConfig"]["node"]
    m = re.fullmatch(r"outbound\|(\d+)\|\|([a-z0-9.-]+)", node["upstream"])
    assert m, node["upstream"]
    port, host = int(m.group(1)), m.group(2)
    (entry,) = _by_kind("ServiceEntry", "istio/")
    assert host in entry["spec"]["hosts"] and port in [p["number"] for p in entry["spec"]["ports"]]
    (rule,) = _by_kind("DestinationRule", "istio/")
    assert rule["spec"]["host"] == host and rule["spec"]["trafficPolicy"]["tls"]["mode"] == "SIMPLE"
    assert node["tls"] is True and node["authority"] == f"{host}:{port}"
    # The gateway container gets every HOST variable from the Secret.
    (deploy,) = _by_kind("Deployment", "istio/")
    env = {e["name"] for c in deploy["spec"]["template"]["spec"]["containers"] for e in c["env"]}
    assert {e["name"] for e in plugin["spec"]["vmConfig"]["env"]} <= env


def test_envoy_gateway_node_cluster_matches_the_plugin():
    (policy,) = _by_kind("EnvoyExtensionPolicy", "envoy-gateway/")
    node = policy["spec"]["wasm"][0]["config"]["node"]
    (patch,) = _by_kind("EnvoyPatchPolicy", "envoy-gateway/")
    clusters = [p["operation"]["value"] for p in patch["spec"]["jsonPatches"] if p["type"].endswith("Cluster")]
    (cluster,) = [c for c in clusters if c["name"] == node["upstream"]]
    tls = cluster["transport_socket"]["typed_config"]
    assert node["tls"] is True and tls["sni"] == node["authority"].split(":")[0]
    ca = tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
    (proxy,) = _by_kind("EnvoyProxy", "envoy-gateway/")
    container = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]
    assert any(ca.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
    assert set(policy["spec"]["wasm"][0]["env"]["hostKeys"]) <= {e["name"] for e in container["env"]}


def test_dockerfile_puts_the_module_where_istio_looks():
    lines = [l for l in (K8S / "Dockerfile").read_text().splitlines() if l and not l.startswith("#")]
    assert lines == ["FROM scratch", "COPY l402.wasm ./plugin.wasm"]
