"""Every Envoy config the project ships (envoy/*.yaml, docker/*.yaml) passes `envoy --mode validate`
with the real l402.wasm (validation runs the plugin's on_configure, so the plugin's JSON is checked
too) and a real TLS certificate; docker-compose.yml parses and everything it mounts exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from harness import ROOT, WASM, Envoy, self_signed_cert
from test_filter_support import cli, new_secret, plugin_config

ENVOY_CONFIGS = sorted((ROOT / "envoy").glob("*.yaml")) + sorted((ROOT / "docker").glob("*.yaml"))
COMPOSE = ROOT / "docker-compose.yml"
CONTAINER_WASM = "/etc/envoy/l402.wasm"


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+)\}", text))


def fill(path: Path, tmp: Path) -> tuple[str, dict[str, str]]:
    """(rendered config, env for the plugin) of a shipped config."""
    text = path.read_text()
    cert, _ = self_signed_cert(tmp, "tls")
    vars = {"LISTEN_PORT": 18080, "UPSTREAM_PORT": 18081, "ADMIN_PORT": 18082, "LNBITS_PORT": 5000,
            "WASM": str(WASM), "LND_HOST": "127.0.0.1", "LND_PORT": 8080, "LND_TLS_CERT": str(cert),
            "CLN_HOST": "127.0.0.1", "CLN_PORT": 3010, "CLN_TLS_CERT": str(cert)}
    unknown = placeholders(text) - set(vars)
    assert not unknown, f"{path.name}: undocumented placeholders {unknown}"
    for name in placeholders(text):
        assert name in text.split("admin:")[0], f"{path.name}: placeholder {name} not described in the header"
    rendered = Envoy.render(text, vars).replace(CONTAINER_WASM, str(WASM))
    env = {"L402_SECRETS": new_secret(), "LNBITS_INVOICE_KEY": "0123456789abcdef",
           "LND_INVOICE_MACAROON_HEX": "0201036c6e64", "CLN_RUNE": "rune-for-invoice-and-listinvoices"}
    return rendered, env


@pytest.mark.parametrize("path", ENVOY_CONFIGS, ids=[str(p.relative_to(ROOT)) for p in ENVOY_CONFIGS])
def test_envoy_config_validates(path, tmp_path, wasm):
    rendered, env = fill(path, tmp_path)
    assert not placeholders(rendered)
    config = tmp_path / "envoy.yaml"
    config.write_text(rendered)
    res = Envoy.validate(config, env=env)
    assert res.returncode == 0, res.stdout
    # The plugin config inside is also accepted by `l402 config check`, and its env names are the
    # ones the VM is given.
    doc = yaml.safe_load(rendered)
    (listener,) = doc["static_resources"]["listeners"]
    wasm_filter = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
    keys = set(wasm_filter["config"]["vm_config"]["environment_variables"]["host_env_keys"])
    assert wasm_filter["config"].get("failure_policy", "FAIL_CLOSED") == "FAIL_CLOSED"
    cfg = plugin_config(rendered)
    wanted = {src["env"] for src in (cfg["secrets"], cfg["node"]["credential"]) if isinstance(src, dict)}
    assert wanted <= keys, (wanted, keys)
    if isinstance(cfg["node"]["credential"], dict):  # cli() passes only L402_SECRETS through
        cfg["node"]["credential"] = env[cfg["node"]["credential"]["env"]]
    cfg_file = tmp_path / "plugin.json"
    cfg_file.write_text(json.dumps(cfg))
    check = cli("config", "check", str(cfg_file), secret=env["L402_SECRETS"])
    assert check.returncode == 0, check.stdout + check.stderr
    # Every cluster the plugin names exists; TLS nodes have a verifying TLS transport.
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    node = clusters[cfg["node"]["upstream"]]
    if cfg["node"].get("tls"):
        tls = node["transport_socket"]["typed_config"]
        assert tls["@type"].endswith("UpstreamTlsContext")
        assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"]
        assert tls.get("sni")


@pytest.mark.parametrize("name", ["lnd-tls.yaml", "cln-tls.yaml"])
def test_tls_configs_need_the_certificate(name, tmp_path, wasm):
    rendered, env = fill(ROOT / "envoy" / name, tmp_path)
    missing = tmp_path / "no-such-dir" / "tls.cert"
    rendered = re.sub(r"trusted_ca: \{ filename: [^}]+\}", f"trusted_ca: {{ filename: {missing} }}", rendered)
    config = tmp_path / "envoy.yaml"
    config.write_text(rendered)
    res = Envoy.validate(config, env=env)
    assert res.returncode != 0 and str(missing) in res.stdout, res.stdout


def test_shipped_config_without_its_secret_is_refused(tmp_path, wasm):
    rendered, env = fill(ROOT / "envoy" / "lnd-tls.yaml", tmp_path)
    config = tmp_path / "envoy.yaml"
    config.write_text(rendered)
    env["LND_INVOICE_MACAROON_HEX"] = ""
    res = Envoy.validate(config, env=env)
    assert res.returncode != 0
    assert "invalid configuration: node.credential: environment variable LND_INVOICE_MACAROON_HEX" in res.stdout


def test_docker_compose(wasm):
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert {"envoy", "lnbits", "api", "lnbits-setup"} <= set(services)
    named_volumes = set(doc.get("volumes") or {})
    mounts: dict[str, str] = {}
    build = (ROOT / "build.sh").read_text()
    pinned = {key: re.search(rf"^{key}=(\S+)$", build, re.M).group(1) for key in ("ENVOY_VERSION", "LNBITS_VERSION")}
    for name, svc in services.items():
        # Every image at a version (never a moving tag such as latest or v1.40-latest).
        tag = svc["image"].rsplit(":", 1)[-1]
        assert re.fullmatch(r"v?\d+(\.\d+)+(-[a-z0-9.]+)?", tag), f"{name}: {svc['image']} is not pinned to a version"
    # The images of the components the tests run are the versions they run.
    assert services["envoy"]["image"] == f"envoyproxy/envoy:v{pinned['ENVOY_VERSION']}"
    assert services["lnbits"]["image"] == f"lnbits/lnbits:v{pinned['LNBITS_VERSION']}"
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith("."):
                path = (ROOT / source).resolve()
                assert path.is_file(), f"{name} mounts {source}, which does not exist"
                assert ROOT in path.parents
                mounts[target] = source
            else:
                assert source in named_volumes, (name, source)
    envoy = services["envoy"]
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    assert services["lnbits"]["environment"]["LNBITS_BACKEND_WALLET_CLASS"] == "FakeWallet"
    # Envoy reads the mounted config, which loads the mounted module.
    command = " ".join(envoy.get("entrypoint", []) + envoy.get("command", []))
    config_target = re.search(r"exec envoy -c (\S+)", command).group(1)
    assert mounts[config_target] == "./docker/envoy.yaml"
    assert mounts[CONTAINER_WASM] == "./l402.wasm"
    assert CONTAINER_WASM in (ROOT / "docker" / "envoy.yaml").read_text()
    # The secret comes from the operator; the invoice key from lnbits-setup's shared file.
    assert "L402_SECRETS" in envoy["environment"] and "${L402_SECRETS:?" in COMPOSE.read_text()
    assert "/shared/gateway.env" in command
    setup_script = mounts["/setup/lnbits-setup.py"]
    assert "gateway.env" in (ROOT / setup_script).read_text()
    # Only loopback ports are published.
    for svc in services.values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port
    # The hosts docker/envoy.yaml talks to are services of the compose file.
    envoy_doc = yaml.safe_load((ROOT / "docker" / "envoy.yaml").read_text())
    for cluster in envoy_doc["static_resources"]["clusters"]:
        for ep in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            assert ep["endpoint"]["address"]["socket_address"]["address"] in services


PATH_SETTINGS = {"normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "REJECT_REQUEST"}


def test_connection_managers_hand_on_normalized_paths():
    """Every shipped connection manager, and the README's "In Envoy" snippet, has the path settings
    that give the filter and the upstream one path (the filter refuses ambiguous paths without them)."""
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("## In Envoy", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    managers = [yaml.safe_load(snippet)[0]["typed_config"]]
    for path in ENVOY_CONFIGS:
        doc = yaml.safe_load(re.sub(r"\$\{[A-Z0-9_]+\}", "0", path.read_text()))
        for listener in doc["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                managers += [f["typed_config"] for f in chain["filters"] if f["name"].endswith("http_connection_manager")]
    assert len(managers) > len(ENVOY_CONFIGS)
    for manager in managers:
        assert {k: manager.get(k) for k in PATH_SETTINGS} == PATH_SETTINGS, manager.get("stat_prefix")
