"""Shared pieces of the filter's end-to-end tests (test_filter_*.py), and tests of those pieces.

* the project's ``l402`` CLI (``cargo build --bin l402``) to mint and inspect tokens with the
  secret a test Envoy runs with;
* an independent credential check (pymacaroons + the published key derivation) used to prove
  that every request that reached the upstream on a paid route carried a valid credential;
* rendering of the shipped Envoy templates under envoy/ with another plugin configuration;
* the Node client script (tests/e2e/clients/l402_client.mjs, @getalby/lightning-tools);
* a gateway on any node kind (LND or CLN simulator, real LNbits) with any plugin configuration.
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
                     now: int | None = None, method: str = "GET", path: str = "/") -> bool:
    """True when ``header`` is an L402/LSAT credential that pymacaroons verifies with the root key
    HMAC-SHA256(secret, identifier), whose preimage hashes to the identifier's payment hash, and
    EVERY first-party caveat of which holds for this request (stricter than the gateway's narrowing
    rules, which check the last of a group): services lists ``service``, capabilities include
    ``capabilities``, valid_until is not past, path_prefix prefixes and path equals ``path``,
    methods list ``method``. Unknown keys are skipped, as the spec says."""
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
    path = path.split("?", 1)[0]

    def check(predicate: str) -> bool:
        key, sep, value = predicate.partition("=")
        if not sep:
            return False
        items = [v.strip() for v in value.split(",")]
        if key == "services":
            return service in [i.split(":")[0] for i in items]
        if key == f"{service}_capabilities":
            return set(capabilities) <= set(items)
        if key == f"{service}_valid_until":
            return value.isdigit() and now <= int(value)
        if key == f"{service}_path_prefix":
            return path.startswith(value)
        if key == f"{service}_path":
            return path == value
        if key == f"{service}_methods":
            return method.upper() in [i.upper() for i in items]
        return True

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


# -- a gateway on any node kind, with any plugin configuration -----------------------------------

NODE_KINDS = ("lnd", "cln", "lnbits")


class Backend:
    """The node a gateway invoices on, and a wallet that pays it: the LND or Core Lightning simulator
    (tests/sim, over TLS, with the shipped envoy/<kind>-tls.yaml) or the session's real LNbits
    (``lnbits`` fixture, envoy/demo.yaml)."""

    def __init__(self, kind: str, lnbits: Any = None):
        self.kind = kind
        self.lnbits = lnbits
        self.sim: Any = None
        if kind in ("lnd", "cln"):
            from harness import _tmpdir
            from test_filter_nodes import new_credential  # puts tests/sim on the path
            from launch import start_sim
            self.sim = start_sim(kind, _tmpdir(f"{kind}sim-"), credential=new_credential(kind))
        elif kind != "lnbits" or lnbits is None:
            raise ValueError(f"no backend {kind!r} (LNbits needs the lnbits fixture)")

    @property
    def template(self) -> str:
        return shipped("demo.yaml" if self.kind == "lnbits" else f"{self.kind}-tls.yaml")

    def vars(self, upstream_port: int) -> dict[str, Any]:
        from harness import free_port
        if self.kind == "lnbits":
            return {"LISTEN_PORT": free_port(), "UPSTREAM_PORT": upstream_port, "LNBITS_PORT": self.lnbits.port}
        from test_filter_nodes import sim_vars
        return sim_vars(self.kind, self.sim, upstream_port)

    def env(self, secrets_: str) -> dict[str, str]:
        if self.kind == "lnbits":
            return {"L402_SECRETS": secrets_, "LNBITS_INVOICE_KEY": self.lnbits.gateway.inkey}
        from test_filter_nodes import sim_env
        return sim_env(self.kind, self.sim, secrets_)

    def try_pay(self, invoice: str) -> tuple[bool, Any]:
        """Pay from the client wallet: (True, preimage hex) or (False, the node's refusal)."""
        if self.kind == "lnbits":
            try:
                return True, self.lnbits.pay(self.lnbits.payer.adminkey, invoice)
            except RuntimeError as e:
                return False, str(e)
        status, body = self.sim.try_pay(invoice)
        return (True, body["payment_preimage"]) if status == 200 else (False, (status, body))

    def pay(self, invoice: str) -> str:
        ok, result = self.try_pay(invoice)
        assert ok, f"payment failed: {result}"
        return result

    def invoices_created(self) -> int:
        """Invoices the node has created (the simulators' counter; LNbits: the gateway wallet's
        incoming payments)."""
        if self.kind == "lnbits":
            payments = self.lnbits._call("GET", "/api/v1/payments?limit=100000", key=self.lnbits.gateway.inkey)
            return sum(1 for p in payments if int(p.get("amount", 0)) > 0)
        return self.sim.stats()["invoice_create"]

    def lookups(self) -> int | None:
        """Invoice lookups the node answered (simulators only; None for LNbits)."""
        return None if self.sim is None else self.sim.stats()["invoice_lookup"]

    def invoice_with_preimage(self, amount_msat: int, memo: str = "known preimage") -> tuple[str, str, str]:
        """An open invoice on the gateway's node whose preimage the test knows, created directly on
        the node: (payment hash hex, preimage hex, bolt11)."""
        import base64 as _b64
        if self.kind == "lnbits":
            d = self.lnbits.create_invoice(self.lnbits.gateway.inkey, amount_msat // 1000, memo)
            pre, bolt = d["preimage"], d.get("bolt11") or d["payment_request"]
        else:
            pre = secrets.token_hex(32)
            if self.kind == "lnd":
                status, d = self.sim.request("POST", "/v1/invoices", {
                    "value_msat": str(amount_msat), "memo": memo, "r_preimage": _b64.b64encode(bytes.fromhex(pre)).decode()})
                assert status == 200, d
                bolt = d["payment_request"]
            else:
                status, d = self.sim.request("POST", "/v1/invoice", {
                    "amount_msat": amount_msat, "label": secrets.token_hex(16), "description": memo, "preimage": pre})
                assert status == 201, d
                bolt = d["bolt11"]
        payment_hash = hashlib.sha256(bytes.fromhex(pre)).hexdigest()
        return payment_hash, pre, bolt

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()


class Gateway:
    """A real Envoy with l402.wasm in front of ``upstream_port``, invoicing on ``backend``: the shipped
    template of the backend's kind (optionally edited by ``template_edit``) with the plugin
    configuration's ``routes`` replaced, ``node`` fields overridden and top-level fields set
    (an object merges into the template's object of that name)."""

    def __init__(self, backend: Backend, upstream_port: int, routes: list[dict[str, Any]], *,
                 secrets: str | None = None, node: Mapping[str, Any] | None = None,
                 template_edit: Any = None, **top: Any):
        self.backend = backend
        self.secret = secrets or new_secret()
        self.vars = backend.vars(upstream_port)
        base = backend.template
        if template_edit is not None:
            base = template_edit(base)
        cfg = plugin_config(render(base, self.vars))
        cfg["routes"] = routes
        cfg["node"].update(node or {})
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        self.config = cfg
        self.template = with_plugin_config(base, cfg)
        self.envoy: Envoy | None = None
        self.start()

    def start(self, secrets: str | None = None) -> "Gateway":
        self.secret = secrets or self.secret
        self.envoy = Envoy(self.template, vars=self.vars, env=self.backend.env(self.secret)).start()
        return self

    def restart(self, secrets: str | None = None) -> "Gateway":
        """A new Envoy on the same ports (and with ``secrets``, if given)."""
        self.stop()
        return self.start(secrets)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()

    @property
    def port(self) -> int:
        return int(self.vars["LISTEN_PORT"])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, path: str, authorization: str | None = None, *, method: str = "GET",
                headers: Mapping[str, str] | None = None, body: bytes | None = None):
        h = dict(headers or {})
        if authorization:
            h["Authorization"] = authorization
        return http(method, self.url(path), headers=h, body=body)

    def buy(self, path: str, method: str = "GET") -> str:
        """Ask for ``path``, pay the invoice and return the credential ``L402 <macaroon>:<preimage>``."""
        r = self.request(path, method=method)
        assert r.status == 402, (r.status, r.text)
        mac, invoice = challenge_parts(r)
        return f"L402 {mac}:{self.backend.pay(invoice)}"

    def counters(self) -> dict[str, float]:
        """The plugin's ``l402_*`` counters in /stats/prometheus (published once a second)."""
        assert self.envoy is not None
        out: dict[str, float] = {}
        for line in self.envoy.stats_prometheus().splitlines():
            if line.startswith("l402_"):
                name, _, value = line.rpartition(" ")
                out[re.sub(r"\{\}$", "", name)] = float(value)
        return out


def http_from(source: str, url: str, method: str = "GET", headers: Mapping[str, str] | None = None):
    """One HTTP request sent from the local address ``source``: on Linux every 127.0.0.0/8 address
    is a loopback address, so 127.0.0.2 is another client network to a gateway grouping by /32."""
    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    from harness import _response
    u = urlsplit(url)
    conn = HTTPConnection(u.hostname, u.port, timeout=10, source_address=(source, 0))
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=dict(headers or {}))
        r = conn.getresponse()
        return _response(r.status, r.msg, r.read())
    finally:
        conn.close()
