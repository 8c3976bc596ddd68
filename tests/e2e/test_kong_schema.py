"""kong/l402.meta.json (the JSON schema Kong checks the filter config with) against the filter's own
parser (`l402 config check`): every valid example is accepted by both, every single-mutation invalid
config is refused by both, and the few checks a schema cannot express are listed (and pinned) below.
Also: kong/kong.yml and kong/kong-plugin.yml parse, and their filter config passes both.

Kong itself cannot run in the test environment: this is what stands in for Kong's own validation."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from jsonschema import Draft4Validator

from harness import ROOT, Envoy
from test_filter_support import CLI, cli, plugin_config

META = ROOT / "kong" / "l402.meta.json"
SECRET = "5f" * 32
SECRET2 = "A0" * 40
MACAROON = "0201036c6e6402f801"
# What the plugin's environment holds when the parser runs ({"env": NAME} sources).
ENV = {"L402_SECRETS": f"{SECRET},{SECRET2}", "LND_INVOICE_MACAROON_HEX": MACAROON,
       "CLN_RUNE": "rune-for-invoice", "LNBITS_INVOICE_KEY": "0123456789abcdef"}

# Placeholder values for the shipped templates (Envoy, Kong, Kubernetes).
PLACEHOLDERS = {
    "L402_SECRET_HEX": SECRET, "LND_INVOICE_MACAROON_HEX": MACAROON, "API_URL": "http://api.internal:8080",
    "LND_HOST": "lnd.internal", "LND_PORT": "8080", "LND_TLS_CERT": "/etc/lnd/tls.cert",
    "CLN_HOST": "cln.internal", "CLN_PORT": "3010", "CLN_TLS_CERT": "/etc/cln/tls.cert",
    "LISTEN_PORT": "8000", "UPSTREAM_PORT": "8001", "ADMIN_PORT": "9901", "LNBITS_PORT": "5000",
    "WASM": "/etc/envoy/l402.wasm", "FUNCTION_HOST": "fn.example.run.app", "FUNCTION_PORT": "443",
    "FUNCTION_CA": "/etc/ssl/certs/ca-certificates.crt", "AWS_REGION": "us-east-1",
    "LAMBDA_ARN": "arn:aws:lambda:us-east-1:123456789012:function:weather",
}


def fill(text: str, where: str = "") -> str:
    unknown = set(re.findall(r"\$\{([A-Z0-9_]+)\}", text)) - set(PLACEHOLDERS)
    assert not unknown, f"{where}: placeholders without a test value: {unknown}"
    return Envoy.render(text, PLACEHOLDERS)


# -- the two verdicts -------------------------------------------------------------------------------

def schema() -> dict[str, Any]:
    return json.loads(META.read_text())["config_schema"]


VALIDATOR = Draft4Validator(schema())


def schema_accepts(cfg: Any) -> bool:
    return VALIDATOR.is_valid(cfg)


_built = False


def parser(cfg: Any, tmp: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`l402 config check --json` on cfg: {"valid": bool, "field"?, "message"?}."""
    global _built
    if not _built:
        cli("token", "inspect", "x")  # builds target/debug/l402 once
        _built = True
    path = tmp / "config.json"
    path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    r = subprocess.run([str(CLI), "config", "check", str(path), "--json"], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", **(ENV if env is None else env)}, timeout=30)
    assert r.returncode in (0, 1), r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] == (r.returncode == 0)
    return out


# -- valid examples ---------------------------------------------------------------------------------

def full() -> dict[str, Any]:
    """Every field the parser knows, set to a non-default value."""
    return {
        "secrets": [SECRET, f" {SECRET2} "],
        "node": {"kind": "lnd", "upstream": "lnd", "authority": "lnd.internal:8080", "tls": True,
                 "credential": MACAROON, "timeout_ms": 60000, "strict": True, "macaroon_only": True},
        "invoice": {"expiry_s": 86400, "memo": "{service} via l402"},
        "routes": [
            {"match": {"path": "/health", "methods": ["GET", "head"]}, "free": True},
            {"match": {"path_prefix": "/v1/", "methods": ["GET"], "host": "api.example.com"},
             "service": "weather", "price_sat": 10, "lifetime_s": 3600, "capabilities": ["read", "v1.x-y"],
             "restrict": {"path_prefix": "/v1/", "methods": ["GET"]}, "uses": 100,
             "freebies": {"requests": 3, "period_s": 86400}, "dry_run": False, "public": False,
             "browser": {"cookie": True, "cookie_secure": False}},
            # L402 alone: the top-level default offers Payment too, which prices in whole satoshis.
            {"match": {"path_glob": "/files/**/*.json", "host": "*.example.com"}, "service": "files",
             "price_msat": 1500, "free": False, "schemes": ["l402"]},
            {"match": {"path_prefix": "/llm/"}, "service": "llm", "price_sat": 5, "dynamic_price": True},
            # The page alone serves any dialect.
            {"match": {"path_prefix": "/pay/"}, "service": "pay", "price_msat": 2000, "schemes": ["payment"],
             "browser": {}},
            # Metered: L402 alone (a Payment charge buys one request, not a balance).
            {"match": {"path_prefix": "/chat/"}, "service": "chat", "price_sat": 100, "schemes": ["l402"],
             "metered": {"reserve_msat": 20000, "max_cost_msat": 50000, "cost_header": "X-Usage-Msat"}},
        ],
        "unmatched": "free",
        "challenge": {"lsat_header": False, "invalid_credential_status": 401},
        "upstream_headers": {"strip_credential": False, "token_id": "X-Token", "service": None,
                             "price_msat": "x-paid-msat", "reserved_msat": "X-Held-Msat", "balance_msat": "x-left-msat"},
        "revoked": ["ab" * 32, "CD" * 32],
        "challenge_limit": {"burst": 20, "per_minute": 60},
        "client_network": {"ipv4_prefix": 32, "ipv6_prefix": 0},
        "pricing": {"upstream": "pricer", "authority": "pricer.internal:8080", "path": "/price", "tls": True,
                    "timeout_ms": 250, "cache_s": 30, "headers": ["x-model"], "on_error": "static"},
        "fleet": {"upstream": "etcd", "authority": "etcd.internal:2379", "tls": True, "timeout_ms": 300,
                  "prefix": "/gateways/l402/", "revocation_poll_s": 10},
        "on_store_error": "fail_open",
        "paths": {"encoded_slashes": "allow"},
        "schemes": ["l402", "payment"],
        "payment": {"realm": "api.example.com"},
        "dry_run": True,
        "access_log_fields": True,
        "discovery": {"enabled": True, "path": "/.well-known/services", "max_age_s": 60,
                      "service": {"name": "Weather API", "description": "forecasts", "operator": "npub1example",
                                  "contact": "ops@example.com"}},
    }


def minimal(kind: str = "cln") -> dict[str, Any]:
    return {"secrets": {"env": "L402_SECRETS"},
            "node": {"kind": kind, "upstream": "node", "authority": "node:3010",
                     "credential": {"env": "CLN_RUNE" if kind == "cln" else "LND_INVOICE_MACAROON_HEX"}},
            "routes": [{"match": {}, "service": "api", "price_sat": 1}]}


HAND_WRITTEN: dict[str, Any] = {
    "full": full(),
    "minimal-env-sources": minimal(),
    "lnd-env-credential": minimal("lnd"),
    "dynamic-price-without-static": {**minimal(), "pricing": {"upstream": "p", "authority": "p:80", "path": "/q"},
                                     "routes": [{"match": {}, "service": "llm", "dynamic_price": True}]},
    "lnbits-whole-sats": {**minimal(), "node": {"kind": "lnbits", "upstream": "lnbits", "authority": "lnbits:5000",
                                                "credential": "0123456789abcdef"},
                          "routes": [{"match": {"path": "/a"}, "service": "a", "price_msat": 21000}]},
    "nulls-where-optional": {**minimal(), "challenge_limit": None,
                             "upstream_headers": {"token_id": None, "service": None, "price_msat": None},
                             "routes": [{"match": {"path": None, "path_prefix": "/x", "path_glob": None, "methods": None,
                                                   "host": None},
                                         "service": "x", "price_sat": None, "price_msat": 5, "lifetime_s": None,
                                         "uses": None, "freebies": None, "dry_run": None, "public": None,
                                         "browser": None, "restrict": {"path_prefix": None, "methods": None}}],
                             "discovery": {"service": {"name": None, "description": None, "operator": None,
                                                       "contact": None}}},
    # The parser checks lifetime, capabilities, restrict, uses and freebies only on paid routes.
    "free-route-ignores-paid-fields": {**minimal(), "routes": [
        {"match": {}, "free": True, "lifetime_s": 0, "capabilities": ["a b"], "uses": 0, "dynamic_price": True,
         "restrict": {"path_prefix": "no-slash", "methods": ["G ET"]}, "freebies": {"requests": 0, "period_s": 0}}]},
    # pricing.on_error static: every dynamically priced route has a static price (a free one needs none).
    "static-fallback-with-prices": {**minimal(), "pricing": {"upstream": "p", "authority": "p:80", "path": "/q",
                                                             "on_error": "static"},
                                    "routes": [{"match": {"path": "/f"}, "free": True, "dynamic_price": True},
                                               {"match": {}, "service": "llm", "dynamic_price": True,
                                                "price_msat": 2500}]},
    # One trailing dot is the same host name; the paths section's default written out.
    "host-trailing-dot": {**minimal(), "paths": {"encoded_slashes": "reject"}, "routes": [
        {"match": {"host": "api.example.com."}, "service": "a", "price_sat": 1},
        {"match": {"host": "*.example.com."}, "service": "a", "price_sat": 1}]},
    "macaroon-only-with-strict": {**minimal(), "node": {**minimal()["node"], "strict": True, "macaroon_only": True}},
    "max-values": {**minimal(), "invoice": {"expiry_s": 4294967295, "memo": "m" * 639},
                   "routes": [{"match": {"path_glob": "/" + "/".join(["*"] * 31)}, "service": "s" * 64,
                               "price_sat": 18446744073709551, "lifetime_s": 1},
                              {"match": {"path_glob": "/**"}, "service": "t", "price_msat": 18446744073709551615}],
                   "client_network": {"ipv4_prefix": 0, "ipv6_prefix": 128},
                   # 1024 characters (2048 bytes): the limit counts characters, as JSON Schema does.
                   "discovery": {"enabled": False, "path": "/", "max_age_s": 31536000,
                                 "service": {"description": "é" * 1024}}},
    "unicode-memo-and-credential": {**minimal(), "node": {**minimal()["node"], "credential": "rune ü ok"},
                                    "invoice": {"memo": "café ☕ {service}"}},
    # schemes: null is the default (L402 alone): any msat price, and uses.
    "schemes-null-l402-msat": {**minimal(), "schemes": None,
                               "routes": [{"match": {}, "service": "api", "price_msat": 1500, "uses": 2}]},
    # Payment alone by default; a route's schemes: null takes the default; the realm null.
    "payment-default": {**minimal(), "schemes": ["payment"], "payment": {"realm": None},
                        "challenge": {"invalid_credential_status": 402},
                        "routes": [{"match": {}, "service": "api", "price_msat": 3000, "schemes": None}]},
    # A route that names L402 alone leaves the Payment default: sub-satoshi price and uses; a free
    # route may write schemes: null.
    "payment-default-route-overrides": {**minimal(), "schemes": ["payment"], "routes": [
        {"match": {"path": "/t"}, "service": "t", "price_msat": 1, "uses": 5, "schemes": ["l402"]},
        {"match": {}, "free": True, "schemes": None}]},
    # Every character a realm may hold, 255 of them; the two schemes in the other order; payment {}
    # is the default written out.
    "realm-edges": {**minimal(), "schemes": ["payment", "l402"], "payment": {
        "realm": (" !#$%&'()*+,-./09:;<=>?@AZ[]^_`az{}~" * 8)[:255]},
        "routes": [{"match": {}, "service": "api", "price_sat": 1, "uses": 1, "schemes": ["payment", "l402"]}]},
    # The cookie by default Secure, under a glob's literal prefix; a page-only route may have a ; in
    # its path; a free route may write browser: null.
    "browser-defaults": {**minimal(), "routes": [
        {"match": {"path_glob": "/files/*/**"}, "service": "files", "price_sat": 1,
         "browser": {"cookie": True, "cookie_secure": None}},
        {"match": {"path": "/page;v=1"}, "service": "page", "price_sat": 2, "browser": {"cookie": False}},
        {"match": {}, "free": True, "browser": None}]},
    # Metered routes: the defaults (max_cost_msat = reserve_msat, x-l402-cost-msat), every field, the
    # nulls, a reserve equal to the price; the metering headers renamed; a free route may write
    # metered: null.
    "metered": {**minimal(), "upstream_headers": {"reserved_msat": "X-Held-Msat", "balance_msat": "x-left-msat"},
                "routes": [
        {"match": {"path": "/health"}, "free": True, "metered": None},
        {"match": {"path_prefix": "/chat/"}, "service": "chat", "price_sat": 100, "metered": {"reserve_msat": 20000}},
        {"match": {"path_prefix": "/embed/"}, "service": "embed", "price_msat": 50000, "schemes": ["l402"],
         "lifetime_s": 3600, "metered": {"reserve_msat": 500, "max_cost_msat": 50000, "cost_header": "X-Usage-Msat"}},
        {"match": {"path_prefix": "/img/"}, "service": "img", "price_sat": 10,
         "metered": {"reserve_msat": 10000, "max_cost_msat": None, "cost_header": None}},
        {"match": {}, "service": "plain", "price_sat": 1, "metered": None, "uses": 3}]},
    # The metering headers turned off; the Payment default left by the metered route alone.
    "metered-headers-null": {**minimal(), "schemes": ["l402", "payment"],
                             "upstream_headers": {"reserved_msat": None, "balance_msat": None},
                             "routes": [{"match": {"path": "/pay"}, "service": "pay", "price_sat": 1},
                                        {"match": {}, "service": "chat", "price_sat": 5, "schemes": ["l402"],
                                         "metered": {"reserve_msat": 1, "max_cost_msat": 5000}}]},
    "payment-empty-object": {**minimal(), "payment": {}, "routes": [
        {"match": {}, "service": "api", "price_sat": 1, "schemes": ["payment"]}]},
}


def shipped_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        yield f"envoy/{path.name}", plugin_config(fill(path.read_text(), path.name))
    for cfg_id, cfg in kong_configs():
        yield cfg_id, cfg


def kong_configs() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in ("kong.yml", "kong-plugin.yml"):
        doc = yaml.safe_load(fill((ROOT / "kong" / name).read_text(), name))
        for service in doc["services"]:
            for route in service.get("routes", []):
                for chain in route.get("filter_chains", []):
                    for f in chain["filters"]:
                        yield f"kong/{name}:{route['name']}", f["config"]
                for plugin in route.get("plugins", []):
                    yield f"kong/{name}:{route['name']}", plugin["config"]


VALID = list(HAND_WRITTEN.items()) + list(shipped_configs())


@pytest.mark.parametrize("cfg", [c for _, c in VALID], ids=[i for i, _ in VALID])
def test_valid_configs_pass_both(cfg, tmp_path):
    errors = [e.message for e in VALIDATOR.iter_errors(cfg)]
    assert not errors, errors
    verdict = parser(cfg, tmp_path)
    assert verdict["valid"], verdict


def test_schema_is_draft4_and_valid():
    doc = json.loads(META.read_text())
    assert set(doc) == {"config_schema"}
    assert doc["config_schema"]["$schema"] == "http://json-schema.org/draft-04/schema#"
    Draft4Validator.check_schema(doc["config_schema"])
    # Only draft-4 keywords (Kong's validator supports draft 4 alone).
    draft6_on = {"const", "contains", "propertyNames", "if", "then", "else", "exclusiveMinimum", "examples"}
    assert not draft6_on & set(_keywords(doc["config_schema"]))


def _keywords(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            if k == "properties":
                for sub in v.values():
                    yield from _keywords(sub)
            elif k not in ("enum", "required"):
                yield from _keywords(v)
    elif isinstance(node, list):
        for v in node:
            yield from _keywords(v)


def schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path the schema names: `node.kind`, `routes[].match.path`, ..."""
    out: set[str] = set()
    for sub in [node] + node.get("oneOf", []) + node.get("anyOf", []) + node.get("allOf", []):
        for name, prop in sub.get("properties", {}).items():
            path = f"{prefix}{name}"
            out.add(path)
            out |= schema_paths(prop, path + ".")
            for alt in [prop] + prop.get("oneOf", []):
                if isinstance(alt.get("items"), dict):
                    out |= schema_paths(alt["items"], path + "[].")
    return out


def config_paths(value: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            out.add(prefix + k)
            out |= config_paths(v, prefix + k + ".")
    elif isinstance(value, list):
        for v in value:
            out |= config_paths(v, prefix.rstrip(".") + "[].")
    return out


def test_valid_examples_cover_every_schema_field():
    covered = set().union(*(config_paths(c) for _, c in VALID))
    missing = schema_paths(schema()) - covered
    assert not missing, f"schema fields no valid example uses: {sorted(missing)}"


# -- invalid configs: one mutation each ------------------------------------------------------------

DELETE = object()


def mutate(cfg: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    target = out
    for k in keys[:-1]:
        target = target[k]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return out


def LND() -> dict[str, Any]:
    return minimal("lnd")


def LNBITS() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["lnbits-whole-sats"])


def DYNAMIC() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["dynamic-price-without-static"])


def L402_MSAT() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["schemes-null-l402-msat"])


def PAYMENT_DEFAULT() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["payment-default"])


def PAYMENT_OVERRIDES() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["payment-default-route-overrides"])


def REALM_EDGES() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["realm-edges"])


def BROWSER() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["browser-defaults"])


def METERED() -> dict[str, Any]:
    return copy.deepcopy(HAND_WRITTEN["metered"])


# (id, base, path, new value, the field the parser names)
INVALID: list[tuple[str, Callable[[], dict[str, Any]], str, Any, str]] = [
    # unknown fields, at every level
    ("unknown-top", full, "colour", "red", "colour"),
    ("unknown-node", full, "node.colour", "red", "node.colour"),
    ("unknown-invoice", full, "invoice.colour", 1, "invoice.colour"),
    ("unknown-route", full, "routes.1.colour", 1, "routes[1].colour"),
    ("unknown-match", full, "routes.1.match.query", "a", "routes[1].match.query"),
    ("unknown-restrict", full, "routes.1.restrict.host", "a", "routes[1].restrict.host"),
    ("unknown-freebies", full, "routes.1.freebies.burst", 1, "routes[1].freebies.burst"),
    ("unknown-challenge", full, "challenge.lsat", True, "challenge.lsat"),
    ("unknown-upstream-headers", full, "upstream_headers.extra", "x", "upstream_headers.extra"),
    ("unknown-challenge-limit", full, "challenge_limit.rate", 1, "challenge_limit.rate"),
    ("unknown-client-network", full, "client_network.prefix", 1, "client_network.prefix"),
    ("on-node-error-not-a-field", full, "on_node_error", "fail_closed", "on_node_error"),
    # missing required
    ("missing-secrets", full, "secrets", DELETE, "secrets"),
    ("missing-node", full, "node", DELETE, "node"),
    ("missing-routes", full, "routes", DELETE, "routes"),
    ("missing-node-kind", full, "node.kind", DELETE, "node.kind"),
    ("missing-node-upstream", full, "node.upstream", DELETE, "node.upstream"),
    ("missing-node-authority", full, "node.authority", DELETE, "node.authority"),
    ("missing-node-credential", full, "node.credential", DELETE, "node.credential"),
    ("missing-match", full, "routes.1.match", DELETE, "routes[1].match"),
    ("missing-service", full, "routes.1.service", DELETE, "routes[1].service"),
    ("missing-price", full, "routes.1.price_sat", DELETE, "routes[1].price_sat"),
    ("missing-env-name", full, "secrets", {}, "secrets"),
    ("missing-freebies-period", full, "routes.1.freebies", {"requests": 1}, "routes[1].freebies.period_s"),
    ("missing-limit-burst", full, "challenge_limit", {"per_minute": 1}, "challenge_limit.burst"),
    # wrong types
    ("secrets-string", full, "secrets", SECRET, "secrets"),
    ("secrets-number", full, "secrets", [1], "secrets[0]"),
    ("kind-number", full, "node.kind", 1, "node.kind"),
    ("tls-string", full, "node.tls", "yes", "node.tls"),
    ("timeout-string", full, "node.timeout_ms", "3000", "node.timeout_ms"),
    ("timeout-float", full, "node.timeout_ms", 3000.5, "node.timeout_ms"),
    ("credential-number", full, "node.credential", 1234, "node.credential"),
    ("strict-string", full, "node.strict", "true", "node.strict"),
    ("routes-object", full, "routes", {}, "routes"),
    ("free-null", full, "routes.0.free", None, "routes[0].free"),
    ("methods-string", full, "routes.1.match.methods", "GET", "routes[1].match.methods"),
    ("capabilities-null", full, "routes.1.capabilities", None, "routes[1].capabilities"),
    ("restrict-null", full, "routes.1.restrict", None, "routes[1].restrict"),
    ("price-string", full, "routes.1.price_sat", "10", "routes[1].price_sat"),
    ("memo-number", full, "invoice.memo", 5, "invoice.memo"),
    ("invoice-null", full, "invoice", None, "invoice"),
    ("lsat-header-string", full, "challenge.lsat_header", "no", "challenge.lsat_header"),
    ("strip-credential-null", full, "upstream_headers.strip_credential", None, "upstream_headers.strip_credential"),
    ("header-number", full, "upstream_headers.token_id", 7, "upstream_headers.token_id"),
    ("revoked-string", full, "revoked", "ab" * 32, "revoked"),
    ("client-network-null", full, "client_network", None, "client_network"),
    ("config-array", lambda: [full()], "0.node.kind", "lnd", "config"),
    # bad enums
    ("kind-eclair", full, "node.kind", "eclair", "node.kind"),
    ("kind-upper", full, "node.kind", "LND", "node.kind"),
    ("unmatched-allow", full, "unmatched", "allow", "unmatched"),
    # negative numbers
    ("timeout-negative", full, "node.timeout_ms", -1, "node.timeout_ms"),
    ("expiry-negative", full, "invoice.expiry_s", -5, "invoice.expiry_s"),
    ("price-negative", full, "routes.1.price_sat", -10, "routes[1].price_sat"),
    ("msat-negative", full, "routes.2.price_msat", -1, "routes[2].price_msat"),
    ("lifetime-negative", full, "routes.1.lifetime_s", -1, "routes[1].lifetime_s"),
    ("ipv4-negative", full, "client_network.ipv4_prefix", -1, "client_network.ipv4_prefix"),
    # zero (or too much) where the parser wants 1..
    ("timeout-zero", full, "node.timeout_ms", 0, "node.timeout_ms"),
    ("timeout-too-long", full, "node.timeout_ms", 60001, "node.timeout_ms"),
    ("expiry-zero", full, "invoice.expiry_s", 0, "invoice.expiry_s"),
    ("expiry-over-u32", full, "invoice.expiry_s", 4294967296, "invoice.expiry_s"),
    ("price-zero", full, "routes.1.price_sat", 0, "routes[1].price_sat"),
    ("price-sat-overflows-msat", full, "routes.1.price_sat", 18446744073709552, "routes[1].price_sat"),
    ("msat-zero", full, "routes.2.price_msat", 0, "routes[2].price_sat"),
    ("lifetime-zero", full, "routes.1.lifetime_s", 0, "routes[1].lifetime_s"),
    ("uses-zero", full, "routes.1.uses", 0, "routes[1].uses"),
    ("freebies-zero", full, "routes.1.freebies.requests", 0, "routes[1].freebies"),
    ("freebies-period-zero", full, "routes.1.freebies.period_s", 0, "routes[1].freebies"),
    ("limit-burst-zero", full, "challenge_limit.burst", 0, "challenge_limit"),
    ("limit-rate-zero", full, "challenge_limit.per_minute", 0, "challenge_limit"),
    ("ipv4-33", full, "client_network.ipv4_prefix", 33, "client_network.ipv4_prefix"),
    ("ipv6-129", full, "client_network.ipv6_prefix", 129, "client_network.ipv6_prefix"),
    ("no-secrets", full, "secrets", [], "secrets"),
    ("no-routes", full, "routes", [], "routes"),
    # patterns
    ("secret-not-hex", full, "secrets.0", "zz" * 32, "secrets[0]"),
    ("secret-odd-hex", full, "secrets.0", "a" * 65, "secrets[0]"),
    ("secret-too-short", full, "secrets.1", "ab" * 31, "secrets"),
    ("lnd-credential-not-hex", full, "node.credential", "not hex", "node.credential"),
    ("lnd-credential-odd", LND, "node.credential", "abc", "node.credential"),
    ("credential-empty", minimal, "node.credential", "", "node.credential"),
    ("credential-control", minimal, "node.credential", "rune\n", "node.credential"),
    ("upstream-blank", full, "node.upstream", "  ", "node.upstream"),
    ("authority-space", full, "node.authority", "lnd internal:8080", "node.authority"),
    ("authority-empty", full, "node.authority", "", "node.authority"),
    ("env-name-empty", minimal, "node.credential", {"env": ""}, "node.credential"),
    ("service-comma", full, "routes.1.service", "a,b", "routes[1].service"),
    ("service-empty", full, "routes.1.service", "", "routes[1].service"),
    ("service-65", full, "routes.1.service", "s" * 65, "routes[1].service"),
    ("service-space", full, "routes.1.service", "my api", "routes[1].service"),
    ("capability-equals", full, "routes.1.capabilities.0", "a=b", "routes[1].capabilities[0]"),
    ("path-relative", full, "routes.0.match.path", "health", "routes[0].match.path"),
    ("prefix-relative", full, "routes.1.match.path_prefix", "v1/", "routes[1].match.path_prefix"),
    ("prefix-space", full, "routes.1.match.path_prefix", "/v1 /", "routes[1].match.path_prefix"),
    ("prefix-comma", full, "routes.1.match.path_prefix", "/a,b", "routes[1].match.path_prefix"),
    ("glob-double-star-inside", full, "routes.2.match.path_glob", "/a/x**", "routes[2].match.path_glob"),
    ("glob-two-double-stars", full, "routes.2.match.path_glob", "/a/**/b/**", "routes[2].match.path_glob"),
    ("glob-33-segments", full, "routes.2.match.path_glob", "/" + "/".join(["a"] * 32), "routes[2].match.path_glob"),
    ("glob-relative", full, "routes.2.match.path_glob", "*.json", "routes[2].match.path_glob"),
    ("two-path-matchers", full, "routes.1.match.path", "/v1/x", "routes[1].match"),
    ("method-space", full, "routes.1.match.methods.0", "G ET", "routes[1].match.methods[0]"),
    ("method-empty", full, "routes.1.match.methods.0", "", "routes[1].match.methods[0]"),
    ("host-port", full, "routes.1.match.host", "api.example.com:443", "routes[1].match.host"),
    ("host-star-only", full, "routes.1.match.host", "*.", "routes[1].match.host"),
    ("host-inner-star", full, "routes.1.match.host", "api.*.com", "routes[1].match.host"),
    ("restrict-prefix-relative", full, "routes.1.restrict.path_prefix", "v1", "routes[1].restrict.path_prefix"),
    ("restrict-method-digit", full, "routes.1.restrict.methods.0", "GET1", "routes[1].restrict.methods[0]"),
    ("header-space", full, "upstream_headers.token_id", "x token", "upstream_headers.token_id"),
    ("header-empty", full, "upstream_headers.price_msat", "", "upstream_headers.price_msat"),
    ("header-underscore", full, "upstream_headers.price_msat", "x_paid", "upstream_headers.price_msat"),
    ("header-authorization", full, "upstream_headers.token_id", "AUTHORIZATION", "upstream_headers.token_id"),
    ("header-macaroon", full, "upstream_headers.service", "Grpc-Metadata-Macaroon", "upstream_headers.service"),
    ("revoked-short", full, "revoked.0", "ab" * 31, "revoked[0]"),
    ("revoked-not-hex", full, "revoked.1", "zz" * 32, "revoked[1]"),
    # combinations the parser refuses
    ("free-with-price", full, "routes.0.price_sat", 1, "routes[0].free"),
    ("free-with-service", full, "routes.0.service", "x", "routes[0].free"),
    ("both-prices", full, "routes.1.price_msat", 10000, "routes[1].price_sat"),
    ("paid-free-false-no-service", full, "routes.0.free", False, "routes[0].service"),
    ("macaroon-only-without-strict", full, "node.strict", False, "node.macaroon_only"),
    ("macaroon-only-strict-absent", full, "node.strict", DELETE, "node.macaroon_only"),
    ("lnbits-msat-not-whole-sats", LNBITS, "routes.0.price_msat", 21500, "routes[0].price_msat"),
    ("lnbits-sat-route-msat-not-whole", LNBITS, "routes.0", {"match": {}, "service": "a", "price_msat": 1},
     "routes[0].price_msat"),
    # cross-field rules about the pricing endpoint
    ("dynamic-price-without-pricing", minimal, "routes.0.dynamic_price", True, "routes[0].dynamic_price"),
    ("dynamic-price-pricing-removed", full, "pricing", DELETE, "routes[3].dynamic_price"),
    ("dynamic-price-pricing-null", DYNAMIC, "pricing", None, "routes[0].dynamic_price"),
    ("static-fallback-without-price", DYNAMIC, "pricing.on_error", "static", "routes[0].price_sat"),
    ("static-fallback-price-removed", full, "routes.3.price_sat", DELETE, "routes[3].price_sat"),
    ("dynamic-price-not-boolean", DYNAMIC, "routes.0.dynamic_price", "yes", "routes[0].dynamic_price"),
    # node: what the parser refuses after trimming, and the other node fields
    ("credential-tab", minimal, "node.credential", "rune\tx", "node.credential"),
    ("credential-env-number", minimal, "node.credential", {"env": 5}, "node.credential"),
    ("lnd-credential-inner-space", LND, "node.credential", "ab cd", "node.credential"),
    ("lnd-credential-tab-padded", LND, "node.credential", "\tabcd", "node.credential"),
    ("authority-tab", full, "node.authority", "lnd\t:8080", "node.authority"),
    ("authority-del", full, "node.authority", "lnd\x7f:8080", "node.authority"),
    ("authority-trailing-newline", full, "node.authority", "lnd:8080\n", "node.authority"),
    ("upstream-empty", full, "node.upstream", "", "node.upstream"),
    ("upstream-number", full, "node.upstream", 8080, "node.upstream"),
    ("macaroon-only-string", full, "node.macaroon_only", "true", "node.macaroon_only"),
    ("timeout-over-u32", full, "node.timeout_ms", 4294967296, "node.timeout_ms"),
    ("env-source-name-number", full, "secrets", {"env": 1}, "secrets"),
    ("secret-inner-space", full, "secrets.0", "5f" * 16 + " " + "5f" * 16, "secrets[0]"),
    ("secret-trailing-newline-only-hex", full, "secrets.0", "zz\n", "secrets[0]"),
    # invoice
    ("memo-640-ascii", full, "invoice.memo", "m" * 640, "invoice.memo"),
    ("expiry-float", full, "invoice.expiry_s", 600.5, "invoice.expiry_s"),
    ("expiry-integral-float", full, "invoice.expiry_s", 600.0, "invoice.expiry_s"),
    # routes: more single-field rules
    ("path-space", full, "routes.0.match.path", "/he alth", "routes[0].match.path"),
    ("path-comma", full, "routes.0.match.path", "/a,b", "routes[0].match.path"),
    ("path-control", full, "routes.0.match.path", "/a\x01", "routes[0].match.path"),
    ("path-trailing-newline", full, "routes.0.match.path", "/health\n", "routes[0].match.path"),
    ("path-number", full, "routes.0.match.path", 5, "routes[0].match.path"),
    ("glob-space", full, "routes.2.match.path_glob", "/files/* x", "routes[2].match.path_glob"),
    ("glob-triple-star", full, "routes.2.match.path_glob", "/a/***", "routes[2].match.path_glob"),
    ("prefix-and-glob", full, "routes.2.match.path_prefix", "/files/", "routes[2].match"),
    ("path-and-glob", full, "routes.2.match.path", "/files/a.json", "routes[2].match"),
    ("method-dash", full, "routes.0.match.methods.0", "M-SEARCH", "routes[0].match.methods[0]"),
    ("method-number", full, "routes.0.match.methods.0", 1, "routes[0].match.methods[0]"),
    ("host-underscore", full, "routes.1.match.host", "api_x.example.com", "routes[1].match.host"),
    ("host-empty", full, "routes.1.match.host", "", "routes[1].match.host"),
    ("host-dot-only", full, "routes.1.match.host", ".", "routes[1].match.host"),
    ("host-star-dot-dot", full, "routes.1.match.host", "*..", "routes[1].match.host"),
    ("host-star-star", full, "routes.2.match.host", "*.*.example.com", "routes[2].match.host"),
    ("free-route-bad-method", full, "routes.0.match.methods.0", "G ET", "routes[0].match.methods[0]"),
    ("free-string", full, "routes.0.free", "true", "routes[0].free"),
    ("free-with-msat", full, "routes.0.price_msat", 1000, "routes[0].free"),
    ("service-null-paid", full, "routes.1.service", None, "routes[1].service"),
    ("service-number", full, "routes.1.service", 7, "routes[1].service"),
    ("service-underscore", full, "routes.1.service", "my_api", "routes[1].service"),
    ("service-unicode", full, "routes.1.service", "wéather", "routes[1].service"),
    ("service-trailing-newline", full, "routes.1.service", "weather\n", "routes[1].service"),
    ("both-prices-msat-route", full, "routes.2.price_sat", 2, "routes[2].price_sat"),
    ("msat-price-null-no-price", full, "routes.2.price_msat", None, "routes[2].price_sat"),
    ("price-float", full, "routes.1.price_sat", 1.5, "routes[1].price_sat"),
    ("price-sat-over-u64", full, "routes.1.price_sat", 18446744073709551616, "routes[1].price_sat"),
    ("msat-over-u64", full, "routes.2.price_msat", 18446744073709551616, "routes[2].price_msat"),
    ("lifetime-string", full, "routes.1.lifetime_s", "3600", "routes[1].lifetime_s"),
    ("capability-space", full, "routes.1.capabilities.0", "read all", "routes[1].capabilities[0]"),
    ("capability-empty", full, "routes.1.capabilities.0", "", "routes[1].capabilities[0]"),
    ("capability-comma", full, "routes.1.capabilities.0", "a,b", "routes[1].capabilities[0]"),
    ("capability-number", full, "routes.1.capabilities.0", 1, "routes[1].capabilities[0]"),
    ("restrict-prefix-space", full, "routes.1.restrict.path_prefix", "/v1 x", "routes[1].restrict.path_prefix"),
    ("restrict-prefix-comma", full, "routes.1.restrict.path_prefix", "/v1,", "routes[1].restrict.path_prefix"),
    ("restrict-methods-string", full, "routes.1.restrict.methods", "GET", "routes[1].restrict.methods"),
    ("restrict-method-empty", full, "routes.1.restrict.methods.0", "", "routes[1].restrict.methods[0]"),
    ("uses-negative", full, "routes.1.uses", -1, "routes[1].uses"),
    ("uses-string", full, "routes.1.uses", "1", "routes[1].uses"),
    ("freebies-requests-negative", full, "routes.1.freebies.requests", -1, "routes[1].freebies.requests"),
    ("freebies-missing-requests", full, "routes.1.freebies", {"period_s": 60}, "routes[1].freebies.requests"),
    ("route-not-object", full, "routes.0", "free", "routes[0]"),
    # top level
    ("unmatched-upper", full, "unmatched", "DENY", "unmatched"),
    ("unmatched-null", full, "unmatched", None, "unmatched"),
    ("challenge-null", full, "challenge", None, "challenge"),
    ("upstream-headers-null", full, "upstream_headers", None, "upstream_headers"),
    ("header-comma", full, "upstream_headers.service", "x,y", "upstream_headers.service"),
    ("header-colon", full, "upstream_headers.token_id", "x:y", "upstream_headers.token_id"),
    ("header-macaroon-lower", full, "upstream_headers.price_msat", "macaroon", "upstream_headers.price_msat"),
    ("header-trailing-newline", full, "upstream_headers.token_id", "x-token\n", "upstream_headers.token_id"),
    ("revoked-uppercase-too-long", full, "revoked.0", "AB" * 33, "revoked[0]"),
    ("revoked-number", full, "revoked.0", 5, "revoked[0]"),
    ("revoked-padded", full, "revoked.0", " " + "ab" * 32, "revoked[0]"),
    ("limit-burst-negative", full, "challenge_limit.burst", -1, "challenge_limit.burst"),
    ("limit-string", full, "challenge_limit", "20/min", "challenge_limit"),
    ("ipv6-negative", full, "client_network.ipv6_prefix", -1, "client_network.ipv6_prefix"),
    ("ipv4-over-u8", full, "client_network.ipv4_prefix", 256, "client_network.ipv4_prefix"),
    ("on-store-error-bad", full, "on_store_error", "fail_sideways", "on_store_error"),
    ("on-store-error-null", full, "on_store_error", None, "on_store_error"),
    # paths
    ("unknown-paths", full, "paths.merge_slashes", True, "paths.merge_slashes"),
    ("encoded-slashes-decode", full, "paths.encoded_slashes", "decode", "paths.encoded_slashes"),
    ("encoded-slashes-upper", full, "paths.encoded_slashes", "ALLOW", "paths.encoded_slashes"),
    ("encoded-slashes-bool", full, "paths.encoded_slashes", True, "paths.encoded_slashes"),
    ("paths-null", full, "paths", None, "paths"),
    ("paths-as-array", full, "paths", ["allow"], "paths"),
    # pricing
    ("unknown-pricing", full, "pricing.colour", "red", "pricing.colour"),
    ("pricing-missing-path", full, "pricing.path", DELETE, "pricing.path"),
    ("pricing-missing-upstream", full, "pricing.upstream", DELETE, "pricing.upstream"),
    ("pricing-missing-authority", full, "pricing.authority", DELETE, "pricing.authority"),
    ("pricing-upstream-blank", full, "pricing.upstream", " ", "pricing.upstream"),
    ("pricing-authority-space", full, "pricing.authority", "p q:80", "pricing.authority"),
    ("pricing-authority-empty", full, "pricing.authority", "", "pricing.authority"),
    ("pricing-path-relative", full, "pricing.path", "price", "pricing.path"),
    ("pricing-path-space", full, "pricing.path", "/pri ce", "pricing.path"),
    ("pricing-path-newline", full, "pricing.path", "/price\n", "pricing.path"),
    ("pricing-tls-string", full, "pricing.tls", "yes", "pricing.tls"),
    ("pricing-timeout-zero", full, "pricing.timeout_ms", 0, "pricing.timeout_ms"),
    ("pricing-timeout-too-long", full, "pricing.timeout_ms", 60001, "pricing.timeout_ms"),
    ("pricing-cache-negative", full, "pricing.cache_s", -1, "pricing.cache_s"),
    ("pricing-cache-string", full, "pricing.cache_s", "60", "pricing.cache_s"),
    ("pricing-headers-string", full, "pricing.headers", "x-model", "pricing.headers"),
    ("pricing-header-space", full, "pricing.headers.0", "x model", "pricing.headers[0]"),
    ("pricing-header-empty", full, "pricing.headers.0", "", "pricing.headers[0]"),
    ("pricing-header-authorization", full, "pricing.headers.0", "Authorization", "pricing.headers[0]"),
    ("pricing-header-grpc-macaroon", full, "pricing.headers.0", "grpc-metadata-macaroon", "pricing.headers[0]"),
    ("pricing-on-error-bad", full, "pricing.on_error", "allow", "pricing.on_error"),
    ("pricing-as-array", full, "pricing", ["pricer", "pricer.internal:8080", "/price"], "pricing"),
    # fleet
    ("unknown-fleet", full, "fleet.colour", "red", "fleet.colour"),
    ("fleet-missing-upstream", full, "fleet.upstream", DELETE, "fleet.upstream"),
    ("fleet-missing-authority", full, "fleet.authority", DELETE, "fleet.authority"),
    ("fleet-upstream-blank", full, "fleet.upstream", "\t", "fleet.upstream"),
    ("fleet-authority-space", full, "fleet.authority", "etcd :2379", "fleet.authority"),
    ("fleet-tls-string", full, "fleet.tls", "on", "fleet.tls"),
    ("fleet-timeout-zero", full, "fleet.timeout_ms", 0, "fleet.timeout_ms"),
    ("fleet-timeout-too-long", full, "fleet.timeout_ms", 60001, "fleet.timeout_ms"),
    ("fleet-prefix-relative", full, "fleet.prefix", "l402/", "fleet.prefix"),
    ("fleet-prefix-space", full, "fleet.prefix", "/l 402/", "fleet.prefix"),
    ("fleet-prefix-empty", full, "fleet.prefix", "", "fleet.prefix"),
    ("fleet-poll-zero", full, "fleet.revocation_poll_s", 0, "fleet.revocation_poll_s"),
    ("fleet-poll-too-long", full, "fleet.revocation_poll_s", 3601, "fleet.revocation_poll_s"),
    ("fleet-poll-negative", full, "fleet.revocation_poll_s", -5, "fleet.revocation_poll_s"),
    # schemes, top level and per route
    ("scheme-unknown", full, "schemes.1", "lsat", "schemes[1]"),
    ("scheme-upper", full, "schemes.0", "L402", "schemes[0]"),
    ("scheme-number", full, "schemes.0", 402, "schemes[0]"),
    ("route-scheme-unknown", full, "routes.4.schemes.0", "bitcoin", "routes[4].schemes[0]"),
    ("schemes-empty", full, "schemes", [], "schemes"),
    ("route-schemes-empty", full, "routes.4.schemes", [], "routes[4].schemes"),
    ("scheme-twice", full, "schemes", ["l402", "payment", "l402"], "schemes[2]"),
    ("route-scheme-twice", full, "routes.4.schemes", ["payment", "payment"], "routes[4].schemes[1]"),
    ("schemes-string", full, "schemes", "l402", "schemes"),
    ("schemes-object", full, "schemes", {"l402": True}, "schemes"),
    ("route-schemes-string", full, "routes.4.schemes", "payment", "routes[4].schemes"),
    ("free-with-schemes", full, "routes.0.schemes", ["l402"], "routes[0].free"),
    ("free-with-payment-scheme", PAYMENT_OVERRIDES, "routes.1.schemes", ["payment"], "routes[1].free"),
    # the Payment scheme prices in whole satoshis: the route's own schemes or the top-level default
    ("payment-route-msat-not-whole", full, "routes.4.price_msat", 2500, "routes[4].price_msat"),
    ("payment-both-route-msat-not-whole", PAYMENT_OVERRIDES, "routes.0.schemes", ["l402", "payment"],
     "routes[0].price_msat"),
    ("payment-default-msat-not-whole", full, "routes.2.schemes", DELETE, "routes[2].price_msat"),
    ("payment-default-route-schemes-null", full, "routes.2.schemes", None, "routes[2].price_msat"),
    ("payment-default-added-msat-not-whole", L402_MSAT, "schemes", ["l402", "payment"], "routes[0].price_msat"),
    ("payment-default-msat-sub-sat", PAYMENT_DEFAULT, "routes.0.price_msat", 999, "routes[0].price_msat"),
    # uses counts L402 token uses: not on a route without L402
    ("uses-on-payment-route", full, "routes.4.uses", 5, "routes[4].uses"),
    ("uses-on-payment-default", PAYMENT_DEFAULT, "routes.0.uses", 5, "routes[0].uses"),
    ("uses-route-drops-l402", REALM_EDGES, "routes.0.schemes", ["payment"], "routes[0].uses"),
    ("uses-top-schemes-payment-only", full, "schemes", ["payment"], "routes[1].uses"),
    # payment
    ("unknown-payment", full, "payment.scheme", "lightning", "payment.scheme"),
    ("payment-null", full, "payment", None, "payment"),
    ("payment-string", full, "payment", "api.example.com", "payment"),
    ("payment-as-array", full, "payment", ["api.example.com"], "payment"),
    ("realm-pipe", full, "payment.realm", "api|example", "payment.realm"),
    ("realm-quote", full, "payment.realm", 'api"example', "payment.realm"),
    ("realm-backslash", full, "payment.realm", "api\\example", "payment.realm"),
    ("realm-empty", full, "payment.realm", "", "payment.realm"),
    ("realm-trailing-newline", full, "payment.realm", "api.example.com\n", "payment.realm"),
    ("realm-256", full, "payment.realm", "r" * 256, "payment.realm"),
    ("realm-tab", full, "payment.realm", "api\texample", "payment.realm"),
    ("realm-del", full, "payment.realm", "api\x7f", "payment.realm"),
    ("realm-unicode", full, "payment.realm", "café", "payment.realm"),
    ("realm-number", full, "payment.realm", 5, "payment.realm"),
    # dry run: explicit booleans only, never on a free route
    ("dry-run-string", full, "dry_run", "true", "dry_run"),
    ("dry-run-number", full, "dry_run", 1, "dry_run"),
    ("dry-run-null", full, "dry_run", None, "dry_run"),
    ("route-dry-run-string", full, "routes.1.dry_run", "false", "routes[1].dry_run"),
    ("free-with-dry-run", full, "routes.0.dry_run", False, "routes[0].free"),
    # access_log_fields
    ("access-log-fields-string", full, "access_log_fields", "yes", "access_log_fields"),
    ("access-log-fields-null", full, "access_log_fields", None, "access_log_fields"),
    # discovery, and the routes it lists
    ("free-with-public", full, "routes.0.public", True, "routes[0].free"),
    ("route-public-string", full, "routes.1.public", "no", "routes[1].public"),
    ("unknown-discovery", full, "discovery.url", "x", "discovery.url"),
    ("discovery-null", full, "discovery", None, "discovery"),
    ("discovery-as-array", full, "discovery", [True], "discovery"),
    ("discovery-enabled-string", full, "discovery.enabled", "true", "discovery.enabled"),
    ("discovery-path-relative", full, "discovery.path", "services", "discovery.path"),
    ("discovery-path-query", full, "discovery.path", "/services?x=1", "discovery.path"),
    ("discovery-path-fragment", full, "discovery.path", "/services#x", "discovery.path"),
    ("discovery-path-space", full, "discovery.path", "/a b", "discovery.path"),
    ("discovery-path-null", full, "discovery.path", None, "discovery.path"),
    ("discovery-max-age-negative", full, "discovery.max_age_s", -1, "discovery.max_age_s"),
    ("discovery-max-age-over-a-year", full, "discovery.max_age_s", 31536001, "discovery.max_age_s"),
    ("discovery-max-age-float", full, "discovery.max_age_s", 60.5, "discovery.max_age_s"),
    ("discovery-service-null", full, "discovery.service", None, "discovery.service"),
    ("discovery-service-unknown", full, "discovery.service.url", "x", "discovery.service.url"),
    ("discovery-service-name-empty", full, "discovery.service.name", "", "discovery.service.name"),
    ("discovery-service-contact-long", full, "discovery.service.contact", "c" * 1025, "discovery.service.contact"),
    ("discovery-service-operator-number", full, "discovery.service.operator", 5, "discovery.service.operator"),
    # browser
    ("unknown-browser", full, "routes.1.browser.page", True, "routes[1].browser.page"),
    ("browser-string", full, "routes.1.browser", "cookie", "routes[1].browser"),
    ("browser-true", full, "routes.1.browser", True, "routes[1].browser"),
    ("browser-as-array", full, "routes.1.browser", [True, False], "routes[1].browser"),
    ("browser-cookie-string", full, "routes.1.browser.cookie", "true", "routes[1].browser.cookie"),
    ("browser-cookie-null", full, "routes.1.browser.cookie", None, "routes[1].browser.cookie"),
    ("cookie-secure-string", full, "routes.1.browser.cookie_secure", "no", "routes[1].browser.cookie_secure"),
    ("cookie-secure-without-cookie", full, "routes.1.browser.cookie", False, "routes[1].browser.cookie_secure"),
    ("cookie-secure-cookie-absent", full, "routes.1.browser.cookie", DELETE, "routes[1].browser.cookie_secure"),
    ("free-with-browser", full, "routes.0.browser", {}, "routes[0].free"),
    ("free-with-browser-cookie", BROWSER, "routes.2.browser", {"cookie": True}, "routes[2].free"),
    # the cookie carries the L402 token: not on a route without L402
    ("cookie-on-payment-route", full, "routes.4.browser.cookie", True, "routes[4].browser.cookie"),
    ("cookie-route-drops-l402", BROWSER, "routes.0.schemes", ["payment"], "routes[0].browser.cookie"),
    ("cookie-top-schemes-payment-only", BROWSER, "schemes", ["payment"], "routes[0].browser.cookie"),
    # a cookie's Path cannot carry a ;
    ("cookie-path-semicolon-prefix", full, "routes.1.match.path_prefix", "/v1;x/", "routes[1].browser.cookie"),
    ("cookie-path-semicolon-glob", BROWSER, "routes.0.match.path_glob", "/files;v2/**", "routes[0].browser.cookie"),
    ("cookie-path-semicolon-exact", BROWSER, "routes.1.browser.cookie", True, "routes[1].browser.cookie"),
    # metered: its shape
    ("unknown-metered", METERED, "routes.1.metered.surprise", 1, "routes[1].metered.surprise"),
    ("metered-number", METERED, "routes.1.metered", 20000, "routes[1].metered"),
    ("metered-string", METERED, "routes.1.metered", "20000", "routes[1].metered"),
    ("metered-true", METERED, "routes.1.metered", True, "routes[1].metered"),
    ("metered-as-array", METERED, "routes.1.metered", [20000], "routes[1].metered"),
    ("metered-empty", METERED, "routes.1.metered", {}, "routes[1].metered.reserve_msat"),
    ("metered-missing-reserve", METERED, "routes.2.metered.reserve_msat", DELETE, "routes[2].metered.reserve_msat"),
    ("reserve-zero", METERED, "routes.1.metered.reserve_msat", 0, "routes[1].metered.reserve_msat"),
    ("reserve-negative", METERED, "routes.1.metered.reserve_msat", -1, "routes[1].metered.reserve_msat"),
    ("reserve-null", METERED, "routes.1.metered.reserve_msat", None, "routes[1].metered.reserve_msat"),
    ("reserve-string", METERED, "routes.1.metered.reserve_msat", "20000", "routes[1].metered.reserve_msat"),
    ("reserve-float", METERED, "routes.1.metered.reserve_msat", 20000.5, "routes[1].metered.reserve_msat"),
    ("reserve-over-u64", METERED, "routes.1.metered.reserve_msat", 18446744073709551616,
     "routes[1].metered.reserve_msat"),
    ("max-cost-zero", METERED, "routes.2.metered.max_cost_msat", 0, "routes[2].metered.max_cost_msat"),
    ("max-cost-negative", METERED, "routes.2.metered.max_cost_msat", -1, "routes[2].metered.max_cost_msat"),
    ("max-cost-string", METERED, "routes.2.metered.max_cost_msat", "50000", "routes[2].metered.max_cost_msat"),
    ("max-cost-float", METERED, "routes.3.metered.max_cost_msat", 20000.5, "routes[3].metered.max_cost_msat"),
    ("cost-header-space", METERED, "routes.2.metered.cost_header", "x usage", "routes[2].metered.cost_header"),
    ("cost-header-empty", METERED, "routes.2.metered.cost_header", "", "routes[2].metered.cost_header"),
    ("cost-header-underscore", METERED, "routes.2.metered.cost_header", "x_usage", "routes[2].metered.cost_header"),
    ("cost-header-colon", METERED, "routes.3.metered.cost_header", "x:cost", "routes[3].metered.cost_header"),
    ("cost-header-trailing-newline", METERED, "routes.2.metered.cost_header", "x-usage\n",
     "routes[2].metered.cost_header"),
    ("cost-header-unicode", METERED, "routes.2.metered.cost_header", "x-coût", "routes[2].metered.cost_header"),
    ("cost-header-number", METERED, "routes.2.metered.cost_header", 5, "routes[2].metered.cost_header"),
    # metered: a free route has none (its shape is checked first), nor a paid route with uses or
    # dynamic_price
    ("free-with-metered", METERED, "routes.0.metered", {"reserve_msat": 1}, "routes[0].free"),
    ("free-with-metered-full", full, "routes.0.metered", {"reserve_msat": 1000, "cost_header": "x-cost"},
     "routes[0].free"),
    ("free-with-metered-no-reserve", METERED, "routes.0.metered", {"max_cost_msat": 1}, "routes[0].metered.reserve_msat"),
    ("metered-with-uses", METERED, "routes.1.uses", 5, "routes[1].uses"),
    ("metered-with-uses-full", full, "routes.5.uses", 1, "routes[5].uses"),
    ("uses-route-gets-metered", METERED, "routes.4.metered", {"reserve_msat": 1}, "routes[4].uses"),
    ("metered-with-dynamic-price", full, "routes.5.dynamic_price", True, "routes[5].dynamic_price"),
    ("dynamic-route-gets-metered", DYNAMIC, "routes.0.metered", {"reserve_msat": 1}, "routes[0].dynamic_price"),
    # metered needs L402 tokens: not where the route's schemes, or the top-level ones, offer Payment
    ("metered-route-schemes-payment", METERED, "routes.2.schemes", ["payment"], "routes[2].metered"),
    ("metered-route-schemes-both", METERED, "routes.2.schemes", ["l402", "payment"], "routes[2].metered"),
    ("metered-top-schemes-both", METERED, "schemes", ["l402", "payment"], "routes[1].metered"),
    ("metered-top-schemes-payment-only", METERED, "schemes", ["payment"], "routes[1].metered"),
    ("metered-route-schemes-removed", full, "routes.5.schemes", DELETE, "routes[5].metered"),
    ("metered-route-schemes-null", full, "routes.5.schemes", None, "routes[5].metered"),
    # the metering headers
    ("reserved-header-space", METERED, "upstream_headers.reserved_msat", "x held", "upstream_headers.reserved_msat"),
    ("reserved-header-number", METERED, "upstream_headers.reserved_msat", 5, "upstream_headers.reserved_msat"),
    ("reserved-header-macaroon", METERED, "upstream_headers.reserved_msat", "Macaroon",
     "upstream_headers.reserved_msat"),
    ("balance-header-empty", METERED, "upstream_headers.balance_msat", "", "upstream_headers.balance_msat"),
    ("balance-header-authorization", full, "upstream_headers.balance_msat", "authorization",
     "upstream_headers.balance_msat"),
    ("balance-header-trailing-newline", METERED, "upstream_headers.balance_msat", "x-left\n",
     "upstream_headers.balance_msat"),
    # without a metered route the filter sets neither header, but their names are checked all the same
    ("balance-header-bad-unmetered", minimal, "upstream_headers", {"balance_msat": "x left"},
     "upstream_headers.balance_msat"),
    # challenge.invalid_credential_status
    ("invalid-status-403", full, "challenge.invalid_credential_status", 403, "challenge.invalid_credential_status"),
    ("invalid-status-400", full, "challenge.invalid_credential_status", 400, "challenge.invalid_credential_status"),
    ("invalid-status-string", full, "challenge.invalid_credential_status", "401",
     "challenge.invalid_credential_status"),
    ("invalid-status-null", full, "challenge.invalid_credential_status", None, "challenge.invalid_credential_status"),
    ("invalid-status-float", full, "challenge.invalid_credential_status", 401.0, "challenge.invalid_credential_status"),
    ("invalid-status-negative", full, "challenge.invalid_credential_status", -401,
     "challenge.invalid_credential_status"),
]


@pytest.mark.parametrize("case", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_configs_fail_both(case, tmp_path):
    _, base, path, value, field = case
    cfg = mutate(base(), path, value)
    assert not schema_accepts(cfg), "the schema accepts it"
    verdict = parser(cfg, tmp_path)
    assert not verdict["valid"], "the parser accepts it"
    assert verdict["field"] == field, verdict


def test_invalid_cases_start_from_valid_bases(tmp_path):
    """Each mutation is the only thing wrong: its base is valid for both."""
    for base in {id(b): b for _, b, *_ in INVALID}.values():
        cfg = base()
        if isinstance(cfg, list):  # the "config is not an object" case
            continue
        assert schema_accepts(cfg) and parser(cfg, tmp_path)["valid"], cfg


def test_scheme_rules_agree_with_the_parser(tmp_path):
    """The rules that join a route's schemes with the top-level default (Payment prices in whole
    satoshis, uses and metered only with L402, a free route has no schemes), over every combination:
    the schema and the parser give the same verdict."""
    lists = [DELETE, None, ["l402"], ["payment"], ["l402", "payment"], ["payment", "l402"]]
    paid = [{"price_sat": 2}, {"price_msat": 2000}, {"price_msat": 2500}, {"price_msat": 2500, "uses": 3},
            {"price_sat": 2, "uses": 3}, {"price_sat": 2, "uses": None}, {"price_sat": 2, "metered": {"reserve_msat": 1}},
            {"price_msat": 2500, "metered": {"reserve_msat": 1}}, {"price_sat": 2, "metered": None}]
    disagree, verdicts = [], set()
    for top in lists:
        for own in lists:
            for route in [{"free": True}] + [{"service": "api", **p} for p in paid]:
                cfg = minimal()
                cfg["routes"] = [{"match": {"path": "/ok"}, "service": "ok", "price_sat": 1},
                                 {"match": {}, **route}]
                if top is not DELETE:
                    cfg["schemes"] = top
                if own is not DELETE:
                    cfg["routes"][1]["schemes"] = own
                verdict = parser(cfg, tmp_path)["valid"]
                verdicts.add(verdict)
                if schema_accepts(cfg) != verdict:
                    disagree.append((top, own, route, verdict))
    assert verdicts == {True, False}
    assert not disagree, f"(top-level schemes, route schemes, route, parser's verdict): {disagree}"


# -- what a schema cannot check ---------------------------------------------------------------------

def _dup_price() -> dict[str, Any]:
    return mutate(full(), "routes.2", {"match": {"path": "/w"}, "service": "weather", "price_sat": 11})


# Configs the schema accepts and the parser refuses (Kong accepts them, then the filter refuses the
# config when it starts): documented in docs/kong.md and the schema's description. Draft 4 compares
# no two values: a metered route's reserve against its price and its max_cost_msat, its cost_header
# against the upstream_headers names (nor those names against each other). (id, config, environment, field).
SCHEMA_CANNOT_CHECK = [
    ("service-priced-twice", _dup_price(), ENV, "routes[2].service"),
    ("memo-over-639-bytes", mutate(full(), "invoice.memo", "é" * 320), ENV, "invoice.memo"),
    ("env-variable-not-set", minimal(), {k: v for k, v in ENV.items() if k != "CLN_RUNE"}, "node.credential"),
    ("env-credential-not-hex", minimal("lnd"), {**ENV, "LND_INVOICE_MACAROON_HEX": "not hex"}, "node.credential"),
    ("env-secret-too-short", minimal(), {**ENV, "L402_SECRETS": "abcd"}, "secrets"),
    # An authority of non-ASCII white space only: the parser trims it (Rust's str::trim) to nothing;
    # the schema's patterns use ASCII classes (as Kong's byte-wise PCRE sees them).
    ("authority-only-unicode-space", mutate(minimal(), "node.authority", "\u3000"), ENV, "node.authority"),
    ("metered-reserve-over-sat-price", mutate(METERED(), "routes.1.metered.reserve_msat", 100001), ENV,
     "routes[1].metered.reserve_msat"),
    ("metered-reserve-over-price-by-1", mutate(METERED(), "routes.3.metered.reserve_msat", 10001), ENV,
     "routes[3].metered.reserve_msat"),
    ("metered-max-cost-under-reserve", mutate(METERED(), "routes.2.metered.max_cost_msat", 499), ENV,
     "routes[2].metered.max_cost_msat"),
    # The names compare case-insensitively: a configured one, and the defaults.
    ("metered-cost-header-configured-name", mutate(METERED(), "routes.2.metered.cost_header", "x-held-msat"), ENV,
     "routes[2].metered.cost_header"),
    ("metered-cost-header-full", mutate(full(), "routes.5.metered.cost_header", "x-token"), ENV,
     "routes[5].metered.cost_header"),
    ("metered-cost-header-default-name", mutate(METERED(), "routes.1.metered.cost_header", "X-L402-Token-Id"), ENV,
     "routes[1].metered.cost_header"),
    ("metered-cost-header-default-balance",
     mutate(mutate(METERED(), "upstream_headers", DELETE), "routes.3.metered.cost_header", "X-L402-Balance-Msat"),
     ENV, "routes[3].metered.cost_header"),
    # A header the answer cannot lose (the cost header is removed from every answer).
    ("metered-cost-header-grpc-status", mutate(METERED(), "routes.2.metered.cost_header", "Grpc-Status"), ENV,
     "routes[2].metered.cost_header"),
    ("metered-cost-header-framing", mutate(METERED(), "routes.2.metered.cost_header", "content-length"), ENV,
     "routes[2].metered.cost_header"),
    # One service metered on one route and not on another (its bundle would open the other).
    ("service-metered-on-one-route-only",
     mutate(METERED(), "routes.4", {"match": {"path": "/chat-plain"}, "service": "chat", "price_sat": 100}), ENV,
     "routes[4].metered"),
    # One header, two values.
    ("upstream-headers-same-name", mutate(full(), "upstream_headers.service", "x-token"), ENV,
     "upstream_headers.service"),
]


@pytest.mark.parametrize("case", SCHEMA_CANNOT_CHECK, ids=[c[0] for c in SCHEMA_CANNOT_CHECK])
def test_semantic_checks_only_the_parser_makes(case, tmp_path):
    _, cfg, env, field = case
    assert schema_accepts(cfg)
    verdict = parser(cfg, tmp_path, env)
    assert not verdict["valid"] and verdict["field"] == field, verdict


# Shapes serde alone would accept (extra keys beside `env` in an untagged enum, an object written as
# a list of its fields in order): the parser refuses them like the schema, naming the field.
SHAPES_BOTH_REFUSE = [
    ("env-source-extra-keys", mutate(minimal(), "secrets", {"env": "L402_SECRETS", "note": "x"}), "secrets"),
    ("node-as-array", mutate(minimal(), "node", ["cln", "node", "node:3010", False, "rune"]), "node"),
    ("freebies-as-array", mutate(full(), "routes.1.freebies", [3, 86400]), "routes[1].freebies"),
]


@pytest.mark.parametrize("case", SHAPES_BOTH_REFUSE, ids=[c[0] for c in SHAPES_BOTH_REFUSE])
def test_object_shapes_refused_by_both(case, tmp_path):
    _, cfg, field = case
    assert not schema_accepts(cfg)
    verdict = parser(cfg, tmp_path)
    assert not verdict["valid"] and verdict["field"] == field, verdict


def test_docs_list_the_exceptions():
    doc = (ROOT / "docs" / "kong.md").read_text()
    for phrase in ("priced differently", "639 bytes", "environment variable", "white space", "1.0", "2^53"):
        assert phrase in doc, phrase


# -- the Kong files ---------------------------------------------------------------------------------

def test_kong_declarative_files(tmp_path):
    seen = {}
    for name in ("kong.yml", "kong-plugin.yml"):
        text = (ROOT / "kong" / name).read_text()
        doc = yaml.safe_load(fill(text, name))
        assert doc["_format_version"] == "3.0"
        (service,) = doc["services"]
        assert service["url"].startswith("http")
        (route,) = service["routes"]
        if name == "kong.yml":
            (chain,) = route["filter_chains"]
            assert set(chain) == {"name", "enabled", "filters"} and chain["enabled"] is True
            (f,) = chain["filters"]
            assert set(f) == {"name", "enabled", "config"}
            assert f["name"] == "l402" and f["enabled"] is True
            cfg = f["config"]
        else:
            (plugin,) = route["plugins"]
            assert plugin["name"] == "l402" and plugin["enabled"] is True
            cfg = plugin["config"]
        # Under Kong the node is dialled as host:port, and TLS means `:scheme: https`.
        assert re.fullmatch(r"[a-z0-9.-]+:\d+", cfg["node"]["upstream"]), cfg["node"]["upstream"]
        assert cfg["node"]["tls"] is True
        # The authority is the TLS server name: a host name (Kong derives no SNI from an IP address).
        assert "${LND_HOST}:" in text and not _is_ip(cfg["node"]["authority"].rsplit(":", 1)[0])
        # Kong's host passes no environment to filters: no {"env": ...} sources in a Kong config.
        assert "env" not in json.dumps(cfg)
        assert schema_accepts(cfg), [e.message for e in VALIDATOR.iter_errors(cfg)]
        assert parser(cfg, tmp_path, env={})["valid"]
        # Unfilled, the secret placeholders are refused by both (nobody deploys the template as is).
        raw = yaml.safe_load(text)
        raw_cfg = (raw["services"][0]["routes"][0].get("filter_chains") or [{"filters": raw["services"][0]["routes"][0]["plugins"]}])[0]["filters"][0]["config"]
        assert not schema_accepts(raw_cfg) and not parser(raw_cfg, tmp_path, env={})["valid"]
        seen[name] = cfg
    assert seen["kong.yml"] == seen["kong-plugin.yml"], "the two Kong forms configure different paywalls"


def _is_ip(host: str) -> bool:
    import ipaddress
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def test_kong_plugin_form_is_never_global():
    """Kong 3.9's Wasm plugin needs a service or a route: the plugin sits on one, and the file does not
    offer a global form."""
    text = (ROOT / "kong" / "kong-plugin.yml").read_text()
    doc = yaml.safe_load(fill(text, "kong-plugin.yml"))
    assert "plugins" not in doc, "a top-level (global) plugin"
    assert not any("plugins" in s for s in doc["services"])
    assert [p["name"] for s in doc["services"] for r in s["routes"] for p in r.get("plugins", [])] == ["l402"]
    assert "globally" not in text and "no global" in text


def test_kong_docs_state_versions_and_host_facts():
    doc = (ROOT / "docs" / "kong.md").read_text()
    texts = {name: (ROOT / name).read_text() for name in
             ("README.md", "docs/kong.md", "kong/kong.conf", "kong/kong.yml", "kong/kong-plugin.yml", "src/metrics.rs")}
    for name, text in texts.items():
        assert "pw.l402" not in text, f"{name}: Kong stores metrics as pw:l402:<name>"
        assert "3.4-3.9" not in text and "3.4–3.9" not in text, f"{name}: 3.4-3.8 are not supported"
    assert "pw:l402:" in doc and "pw:l402:" in texts["README.md"]
    # The table per version: engine, verdict, properties.
    table = [l for l in doc.splitlines() if l.startswith("| 3.") or l.startswith("| Enterprise")]
    rows = {l.split("|")[1].strip(): l for l in table}
    assert {"3.4", "3.5, 3.6", "3.7, 3.8", "3.9.0–3.9.3", "Enterprise 3.10", "3.11 and later"} <= set(rows)
    assert "9136e463" in rows["3.9.0–3.9.3"] and "26.0.0" in rows["3.9.0–3.9.3"] and "**supported**" in rows["3.9.0–3.9.3"]
    assert "**supported**" in rows["Enterprise 3.10"]
    for v in ("3.4", "3.5, 3.6", "3.7, 3.8"):
        assert "**unsupported**" in rows[v] and "receives the unpaid request" in rows[v], v
    assert "removed" in doc and "in front of Kong" in doc and "behind Kong" in doc
    assert "`nginx_wasm_shm_kv = 16m`" in doc and "host name" in doc and "only as a JSON *string*" in doc


def test_kong_conf():
    settings = {}
    for line in (ROOT / "kong" / "kong.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings["wasm"] == "on"
    assert settings["wasm_filters_path"].startswith("/")
    assert settings["nginx_wasm_tls_verify_cert"] == "on"
    assert settings["nginx_wasm_tls_verify_host"] == "on"
    assert settings["nginx_wasm_tls_trusted_certificate"].startswith("/")
    assert settings["declarative_config"].endswith("kong.yml")
    # The default shared-memory zone the filter's counters need (Kong 3.7+ makes `shm_kv *` from it).
    assert settings["nginx_wasm_shm_kv"] == "16m"
    # Every key is one of Kong's (or an nginx_wasm_* injected directive).
    known = {"wasm", "wasm_filters_path", "database", "declarative_config"}
    for key in settings:
        assert key in known or key.startswith("nginx_wasm_"), key


def test_config_check_finds_a_missing_shared_memory_zone(tmp_path):
    """Kong's engine traps the module on every shared-data call without a default zone, and the
    module cannot tell beforehand: `l402 config check --kong-conf` names the property instead."""
    cfg = mutate(minimal("lnd"), "routes.0.uses", 1)
    conf = (ROOT / "kong" / "kong.conf").read_text()
    without = tmp_path / "without.conf"
    without.write_text("\n".join(line for line in conf.splitlines() if not line.startswith("nginx_wasm_shm_kv")))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))

    def check(kong_conf: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLI), "config", "check", str(config), "--kong-conf", str(kong_conf), "--json"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **ENV}, timeout=30)

    parser(cfg, tmp_path)  # builds the CLI
    assert check(ROOT / "kong" / "kong.conf").returncode == 0
    refused = check(without)
    assert refused.returncode == 1, refused.stdout
    out = json.loads(refused.stdout)
    assert out["field"] == "routes[0].uses" and "nginx_wasm_shm_kv = 16m" in out["message"]
    # Without anything kept in shared data, no zone is needed.
    config.write_text(json.dumps(minimal("lnd")))
    assert check(without).returncode == 0
