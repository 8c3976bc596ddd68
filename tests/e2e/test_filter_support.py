"""Shared pieces of the filter's end-to-end tests (test_filter_*.py), and tests of those pieces.

* the project's ``l402`` CLI (``cargo build --bin l402``) to mint and inspect tokens with the
  secret a test Envoy runs with;
* an independent credential check (pymacaroons + the published key derivation) used to prove
  that every request that reached the upstream on a paid route carried a valid credential;
* rendering of the shipped Envoy templates under envoy/ with another plugin configuration;
* the Node client script (tests/e2e/clients/l402_client.mjs, @getalby/lightning-tools).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from pymacaroons import Verifier
from pymacaroons.serializers.binary_serializer import BinarySerializer

from harness import ROOT, Envoy, http

CLI = ROOT / "target" / "debug" / "l402"
CLIENT_JS = Path(__file__).resolve().parent / "clients" / "l402_client.mjs"
CLIENTS_DIR = ROOT / "tests" / "clients"
ENVOY_DIR = ROOT / "envoy"

_cli_built = False


def new_secret() -> str:
    return secrets.token_hex(32)


# -- the project's CLI ---------------------------------------------------------------------------

def cli(*args: str, secret: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``target/debug/l402`` (built once per session with cargo)."""
    global _cli_built
    if not _cli_built:
        subprocess.run(["cargo", "build", "-q", "--bin", "l402"], cwd=ROOT, check=True, timeout=600)
        _cli_built = True
    env = {"PATH": "/usr/bin:/bin"}
    if secret is not None:
        env["L402_SECRETS"] = secret
    return subprocess.run([str(CLI), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=30)


def mint(secret: str, service: str, *extra: str) -> str:
    """A full credential ``L402 <macaroon>:<preimage>`` minted with ``secret`` (random preimage)."""
    r = cli("token", "mint", "--service", service, *extra, secret=secret)
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith("L402 "), out
    return out


def inspect(token: str) -> dict[str, Any]:
    r = cli("token", "inspect", token, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# -- an independent credential check -------------------------------------------------------------

def split_credential(header: str) -> tuple[str, bytes, bytes]:
    """``<scheme> <base64 macaroon>:<hex preimage>`` → (scheme, macaroon bytes, preimage)."""
    scheme, _, rest = header.strip().partition(" ")
    mac_b64, _, pre_hex = rest.strip().rpartition(":")
    raw = base64.b64decode(mac_b64 + "=" * (-len(mac_b64) % 4), altchars=b"-_" if "-" in mac_b64 or "_" in mac_b64 else None)
    return scheme, raw, bytes.fromhex(pre_hex)


def credential_valid(header: str | None, secret: str, service: str, capabilities: tuple[str, ...] = (),
                     now: int | None = None) -> bool:
    """True when ``header`` is an L402/LSAT credential that pymacaroons verifies with the root key
    HMAC-SHA256(secret, identifier), whose preimage hashes to the identifier's payment hash, and
    whose caveats grant ``service`` (and ``capabilities``) at ``now``."""
    if not header:
        return False
    try:
        scheme, raw, preimage = split_credential(header)
        mac = BinarySerializer().deserialize_raw(raw)
    except Exception:
        return False
    if scheme.upper() not in ("L402", "LSAT"):
        return False
    ident = mac.identifier_bytes
    if len(ident) != 66 or ident[:2] != b"\0\0" or hashlib.sha256(preimage).digest() != ident[2:34]:
        return False
    now = int(time.time()) if now is None else now

    def check(predicate: str) -> bool:
        key, sep, value = predicate.partition("=")
        if not sep:
            return False
        if key == "services":
            return service in [e.split(":")[0] for e in value.split(",")]
        if key == f"{service}_capabilities":
            return all(c in value.split(",") for c in capabilities)
        if key == f"{service}_valid_until":
            return value.isdigit() and now <= int(value)
        return False

    v = Verifier()
    v.satisfy_general(check)
    key = hmac.new(bytes.fromhex(secret.split(",")[0]), ident, hashlib.sha256).digest()
    try:
        return bool(v.verify(mac, key))
    except Exception:
        return False


def token_id_of(header: str) -> str:
    """Hex token id (identifier bytes 34..66) of a credential, read with pymacaroons."""
    _, raw, _ = split_credential(header)
    return BinarySerializer().deserialize_raw(raw).identifier_bytes[34:66].hex()


def assert_upstream_saw_only_paid(requests: list[dict[str, Any]], secret: str, paid_prefixes: Mapping[str, str],
                                  credentials: list[str],
                                  capabilities: Mapping[str, tuple[str, ...]] | None = None) -> int:
    """Every upstream request whose path starts with a paid prefix came with one of ``credentials``
    that verifies independently for that prefix's service: the filter strips the credential and
    hands the upstream ``x-l402-token-id`` / ``x-l402-service`` instead. Returns how many paid
    requests were checked."""
    checked = 0
    for req in requests:
        for prefix, service in paid_prefixes.items():
            if not req["path"].startswith(prefix):
                continue
            headers = req["headers"]
            assert "authorization" not in headers, f"the credential reached the upstream: {req}"
            tid = headers.get("x-l402-token-id")
            caps = (capabilities or {}).get(prefix, ())
            valid = [c for c in credentials if token_id_of(c) == tid and credential_valid(c, secret, service, caps)]
            assert valid, f"unpaid request reached the upstream: {req}"
            assert headers.get("x-l402-service") == service, req
            checked += 1
    return checked


# -- Envoy templates -----------------------------------------------------------------------------

_BLOCK = re.compile(r"^(?P<indent>[ ]*)value: \|\n(?P<body>(?:(?P=indent)[ ]+.*\n|[ ]*\n)+)", re.M)


def plugin_config(template: str) -> dict[str, Any]:
    """The plugin's JSON configuration in a (rendered) Envoy template."""
    m = _BLOCK.search(template)
    assert m, "no `value: |` block in the template"
    return json.loads(m.group("body"))


def with_plugin_config(template: str, config: Mapping[str, Any] | str) -> str:
    """``template`` with its plugin configuration replaced (a dict is dumped as JSON; a str is
    used as is, so invalid JSON can be tested too)."""
    m = _BLOCK.search(template)
    assert m, "no `value: |` block in the template"
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    pad = m.group("indent") + "  "
    body = "".join(pad + line + "\n" for line in text.splitlines())
    return template[:m.start("body")] + body + template[m.end("body"):]


def shipped(name: str) -> str:
    return (ENVOY_DIR / name).read_text()


def render(template: str, vars: Mapping[str, Any]) -> str:
    """Fill every placeholder but ADMIN_PORT and WASM (the harness fills those)."""
    return Envoy.render(template, {k: v for k, v in vars.items() if k not in ("ADMIN_PORT", "WASM")})


# -- the Node client -----------------------------------------------------------------------------

def node_client(command: str, **request: Any) -> Any:
    r = subprocess.run(["node", str(CLIENT_JS), command], input=json.dumps(request), capture_output=True,
                       text=True, timeout=60, cwd=CLIENTS_DIR)
    assert r.returncode == 0, f"l402_client.mjs {command} failed:\n{r.stderr}"
    return json.loads(r.stdout)


# -- small assertions ----------------------------------------------------------------------------

def assert_challenge(r, reason: str, service: str | None = None) -> dict[str, Any]:
    """A 402 with both challenges and the JSON ``reason``; returns the body."""
    assert r.status == 402, (r.status, r.text)
    body = r.json()
    assert body["error"] == "payment_required" and body["reason"] == reason, body
    if service:
        assert body["service"] == service, body
    schemes = [v.split(" ", 1)[0] for v in r.header_values("www-authenticate")]
    assert schemes == ["LSAT", "L402"], r.header_values("www-authenticate")
    assert r.headers.get("cache-control") == "no-store"
    return body


def challenge_parts(r) -> tuple[str, str]:
    """(macaroon base64, invoice) of the L402 challenge of a 402."""
    (l402,) = [v for v in r.header_values("www-authenticate") if v.startswith("L402 ")]
    mac = re.search(r'macaroon="([^"]+)"', l402).group(1)
    inv = re.search(r'invoice="([^"]+)"', l402).group(1)
    return mac, inv


def get(url: str, authorization: str | None = None, **kw: Any):
    headers = {"Authorization": authorization} if authorization else {}
    return http("GET", url, headers=headers, **kw)


# -- tests of the pieces above -------------------------------------------------------------------

def test_credential_check_agrees_with_the_cli():
    secret = new_secret()
    good = mint(secret, "weather", "--capability", "read", "--lifetime-s", "600")
    assert credential_valid(good, secret, "weather", ("read",))
    assert credential_valid(good.replace("L402 ", "LSAT ", 1), secret, "weather")
    assert not credential_valid(good, secret, "other")
    assert not credential_valid(good, secret, "weather", ("write",))
    assert not credential_valid(good, new_secret(), "weather")
    assert not credential_valid(good, secret, "weather", now=int(time.time()) + 3600)
    mac, pre = good.split(" ", 1)[1].split(":")
    assert not credential_valid(f"L402 {mac}:{'00' * 32}", secret, "weather")
    assert not credential_valid(f"Bearer {mac}:{pre}", secret, "weather")
    assert not credential_valid(None, secret, "weather")
    info = inspect(good)
    assert hashlib.sha256(bytes.fromhex(pre)).hexdigest() == info["identifier"]["payment_hash"]


def test_plugin_config_roundtrip():
    text = shipped("demo.yaml")
    cfg = plugin_config(render(text, {"LNBITS_PORT": 5000}))
    assert cfg["node"]["kind"] == "lnbits"
    cfg["node"]["timeout_ms"] = 7
    again = plugin_config(with_plugin_config(text, cfg))
    assert again == cfg
    assert "${ADMIN_PORT}" in with_plugin_config(text, cfg)



def test_token_id_of_agrees_with_the_cli():
    cred = mint(new_secret(), "weather")
    assert token_id_of(cred) == inspect(cred)["identifier"]["token_id"]
