"""Serverless functions behind the paywall (envoy/serverless-*.yaml).

The plain-HTTPS-function config runs end to end in the real Envoy: the shipped file with only the
function's host, port and CA bundle swapped for a local HTTPS "function" (self-signed certificate made
here, trusted by the cluster), and the LND simulator as the node. The AWS Lambda config cannot reach
AWS from the test environment: `envoy --mode validate` (test_shipped_configs.py) and the checks below
are what covers it."""

from __future__ import annotations

import json
import re
import secrets
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from harness import ROOT, Envoy, _tmpdir, free_port, self_signed_cert
from test_filter_support import (
    assert_challenge, challenge_parts, credential_valid, get, new_secret, plugin_config, token_id_of,
)

sys.path.insert(0, str(ROOT / "tests" / "sim"))
from launch import start_sim  # noqa: E402

FUNCTION = ROOT / "envoy" / "serverless-function.yaml"
LAMBDA = ROOT / "envoy" / "serverless-lambda.yaml"
# What the shipped function config names, and what the test puts in its place.
SHIPPED_HOST = "weather-7f3a2b9c1d-uc.a.run.app"
SHIPPED_PORT = "port_value: 443"
SHIPPED_CA = "/etc/ssl/certs/ca-certificates.crt"


class Function:
    """A local HTTPS "serverless function": answers JSON and logs every request it gets."""

    def __init__(self, cert: Path, key: Path):
        self.log: list[dict[str, Any]] = []
        log = self.log

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                log.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                body = json.dumps({"function": "weather", "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def function_template(port: int, cert: Path) -> str:
    """envoy/serverless-function.yaml pointed at the local function (host, port and CA replaced)."""
    text = FUNCTION.read_text()
    for literal in (SHIPPED_HOST, SHIPPED_PORT, SHIPPED_CA):
        assert literal in text, f"serverless-function.yaml no longer names {literal!r}: update this test"
    return (text.replace(SHIPPED_HOST, "localhost").replace(SHIPPED_PORT, f"port_value: {port}")
            .replace(SHIPPED_CA, str(cert)))


class Gate:
    def __init__(self, envoy: Envoy, function: Function, sim: Any, secret: str):
        self.envoy, self.function, self.sim, self.secret = envoy, function, sim, secret


@pytest.fixture(scope="module")
def gate(wasm) -> Iterator[Gate]:
    work = _tmpdir("serverless-")
    cert, key = self_signed_cert(work, "function")
    function = Function(cert, key)
    sim = start_sim("lnd", work / "lnd", credential=secrets.token_hex(48))
    secret = new_secret()
    envoy = Envoy(function_template(function.port, cert),
                  vars={"LISTEN_PORT": free_port(), "LND_HOST": "127.0.0.1", "LND_PORT": sim.port,
                        "LND_TLS_CERT": sim.cert_path},
                  env={"L402_SECRETS": secret, "LND_INVOICE_MACAROON_HEX": sim.credential})
    try:
        envoy.start()
        yield Gate(envoy, function, sim, secret)
    finally:
        envoy.stop()
        sim.stop()
        function.stop()


def test_unpaid_request_never_reaches_the_function(gate):
    gate.function.log.clear()
    r = get(gate.envoy.url("/v1/forecast"))
    body = assert_challenge(r, "payment_required", "weather")
    assert body["price_msat"] == 10_000
    forged = get(gate.envoy.url("/v1/forecast"), f"L402 {challenge_parts(r)[0]}:{secrets.token_hex(32)}")
    assert_challenge(forged, "preimage_mismatch", "weather")
    assert gate.function.log == []


def test_paid_request_reaches_the_function_over_tls_without_the_credential(gate):
    gate.function.log.clear()
    r = get(gate.envoy.url("/v1/forecast?city=oslo"))
    mac, invoice = challenge_parts(r)
    assert gate.function.log == []
    paid = gate.sim.pay(invoice)
    cred = f"L402 {mac}:{paid['payment_preimage']}"
    assert credential_valid(cred, gate.secret, "weather")
    for _ in range(2):
        ok = get(gate.envoy.url("/v1/forecast?city=oslo"), cred)
        assert ok.status == 200, ok.text
        assert ok.json() == {"function": "weather", "path": "/v1/forecast?city=oslo"}
    assert len(gate.function.log) == 2
    for seen in gate.function.log:
        headers = seen["headers"]
        assert "authorization" not in headers, "the function saw the L402 credential"
        assert headers["host"] == "localhost", "Host was not rewritten to the function's name"
        assert headers["x-l402-token-id"] == token_id_of(cred)
        assert headers["x-l402-service"] == "weather"
    # A free route passes unpaid; an unmatched one is denied before the function.
    assert get(gate.envoy.url("/health")).status == 200
    assert get(gate.envoy.url("/admin")).status == 403
    assert [e["path"] for e in gate.function.log[2:]] == ["/health"]
    stats = gate.envoy.stats()
    assert stats.get("cluster.function.ssl.handshake", 0) >= 1
    assert stats.get("cluster.function.ssl.fail_verify_error", 0) == 0


def test_function_with_an_untrusted_certificate_is_not_called(gate, tmp_path, wasm):
    """The cluster really verifies the function: trusting another certificate gives Envoy's 503."""
    other, _ = self_signed_cert(tmp_path, "other")
    template = function_template(gate.function.port, other)
    cfg = plugin_config(Envoy.render(template, {"LND_HOST": "127.0.0.1", "LND_PORT": gate.sim.port}))
    cfg["routes"] = [{"match": {}, "free": True}]
    from test_filter_support import with_plugin_config
    envoy = Envoy(with_plugin_config(template, cfg),
                  vars={"LISTEN_PORT": free_port(), "LND_HOST": "127.0.0.1", "LND_PORT": gate.sim.port,
                        "LND_TLS_CERT": gate.sim.cert_path},
                  env={"L402_SECRETS": new_secret(), "LND_INVOICE_MACAROON_HEX": gate.sim.credential}).start()
    try:
        gate.function.log.clear()
        r = get(envoy.url("/v1/forecast"))
        assert r.status == 503
        assert gate.function.log == []
        assert envoy.stats().get("cluster.function.ssl.fail_verify_error", 0) >= 1
    finally:
        envoy.stop()


def _listener_filters(doc: dict[str, Any]) -> list[dict[str, Any]]:
    (listener,) = doc["static_resources"]["listeners"]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def test_lambda_config_shape():
    doc = yaml.safe_load(Envoy.render(LAMBDA.read_text(), {"LISTEN_PORT": 1, "ADMIN_PORT": 2, "WASM": "/x",
                                                           "LND_HOST": "h", "LND_PORT": 3, "LND_TLS_CERT": "/c"}))
    names = [f["name"] for f in _listener_filters(doc)]
    # l402 decides first: an unpaid request never invokes (or bills) the function.
    assert names == ["envoy.filters.http.wasm", "envoy.filters.http.aws_lambda", "envoy.filters.http.router"]
    lam = _listener_filters(doc)[1]["typed_config"]
    assert lam["@type"].endswith("aws_lambda.v3.Config")
    (listener,) = doc["static_resources"]["listeners"]
    route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]
    per_route = route["typed_per_filter_config"]["envoy.filters.http.aws_lambda"]
    assert per_route["@type"].endswith("aws_lambda.v3.PerRouteConfig")
    arn = per_route["invoke_config"]["arn"]
    m = re.fullmatch(r"arn:aws:lambda:([a-z0-9-]+):\d{12}:function:[A-Za-z0-9_-]+", arn)
    assert m and lam["arn"] == arn
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    cluster = clusters[route["route"]["cluster"]]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint["address"] == f"lambda.{m.group(1)}.amazonaws.com" and endpoint["port_value"] == 443
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == endpoint["address"] and tls["common_tls_context"]["validation_context"]["trusted_ca"]
    # No AWS credential is written in the file: Envoy takes them from its environment.
    assert not re.search(r"AKIA[0-9A-Z]{16}|secret_access_key\s*:", LAMBDA.read_text(), re.I)
    assert "AWS_ACCESS_KEY_ID" in LAMBDA.read_text()
