"""`access_log_fields` in a real Envoy (envoy/access-log.yaml, the LND simulator): one access-log
line per request with the filter's outcome and its reason, service, price and token id, as
`%FILTER_STATE(wasm.l402_decision:PLAIN)%` prints them."""

from __future__ import annotations

import time

from attacks import credential, py_mint, token_id
from ops_support import LoggingGateway
from test_filter_support import Backend, challenge_parts

ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
]


def test_a_line_per_outcome(wasm, clean_upstream):
    backend = Backend("lnd")
    g = LoggingGateway(backend, clean_upstream.port, ROUTES)
    try:
        assert g.config["access_log_fields"] is True
        assert g.request("/health").status == 200
        challenge = g.request("/v1/forecast")
        mac, invoice = challenge_parts(challenge)
        offered = token_id(f"L402 {mac}:00")
        paid = f"L402 {mac}:{backend.pay(invoice)}"
        assert g.request("/v1/forecast", paid).status == 200
        expired, preimage = py_mint(g.secret, ["services=weather:0", f"weather_valid_until={int(time.time()) - 10}"])
        refused = g.request("/v1/forecast", credential(expired, preimage))
        assert refused.status == 402
        reoffered = token_id(f"L402 {challenge_parts(refused)[0]}:00")
        assert g.request("/nowhere").status == 403
        assert g.request("/v1;x/forecast").status == 400
        backend.sim.set_fault("error500")
        try:
            assert g.request("/v1/forecast").status == 503
        finally:
            backend.sim.set_fault("none")
        weather = {"service": "weather", "price_msat": "10000"}
        assert g.log(7) == [
            {"method": "GET", "path": "/health", "status": 200, "outcome": "free"},
            {"method": "GET", "path": "/v1/forecast", "status": 402, "outcome": "challenge", "reason": "no_credential",
             **weather, "token_id": offered},
            {"method": "GET", "path": "/v1/forecast", "status": 200, "outcome": "paid", **weather, "token_id": offered},
            {"method": "GET", "path": "/v1/forecast", "status": 402, "outcome": "refused", "reason": "expired",
             **weather, "token_id": reoffered},
            {"method": "GET", "path": "/nowhere", "status": 403, "outcome": "no_route"},
            {"method": "GET", "path": "/v1;x/forecast", "status": 400, "outcome": "ambiguous_path"},
            {"method": "GET", "path": "/v1/forecast", "status": 503, "outcome": "error", "reason": "node_error_status"},
        ]
    finally:
        g.stop()
        backend.stop()
