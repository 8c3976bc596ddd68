"""Host-call budgets of the operator features (test_host_calls.py has the default paths, which they
leave unchanged): `access_log_fields` costs one call per request, the discovery manifest is answered
from the calls a request makes anyway plus `If-None-Match`, and dry run sets its header instead of
handing off. Each budget is exact, as in test_host_calls.py."""

from __future__ import annotations

import json
import secrets

from attacks import credential, py_mint, token_id
from test_host_calls import BASE, CONFIG, FREE, PAID, READ, REMOVE, SECRET, SET, TIME, paid_credential
from wasm_host import Host

SET_PROPERTY, RESPOND = "proxy_set_property", "proxy_send_local_response"
# A local response reads the content type (for the gRPC form), then sends.
LOCAL = [READ, RESPOND]


def host(wasm, **top) -> Host:
    h = Host(str(wasm), json.dumps({**CONFIG, **top}))
    assert h.configured
    h.request(BASE + [(":path", "/health")])  # the first request of a worker also learns the host
    return h


def test_access_log_fields_cost_one_call(wasm):
    h = host(wasm, access_log_fields=True)
    auth = paid_credential()
    request, calls = h.request(BASE + [(":path", "/v1/forecast"), ("authorization", auth)])
    assert calls == PAID[:4] + [SET_PROPERTY] + PAID[4:], calls
    record = f"outcome=paid service=weather price_msat=10000 token_id={token_id(auth)}"
    assert request.set_properties == {"l402_decision": record.encode()}
    request, calls = h.request(BASE + [(":path", "/health")])
    assert calls == FREE[:2] + [SET_PROPERTY] + FREE[2:], calls
    assert request.set_properties == {"l402_decision": b"outcome=free"}
    request, calls = h.request(BASE + [(":path", "/nowhere")])
    assert calls == [READ] * 2 + [SET_PROPERTY] + LOCAL, calls
    assert request.set_properties == {"l402_decision": b"outcome=no_route"}
    # Off, nothing is set (test_host_calls.py pins the calls).
    _, calls = host(wasm).request(BASE + [(":path", "/v1/forecast"), ("authorization", auth)])
    assert SET_PROPERTY not in calls


def test_discovery_costs_the_paid_path_nothing(wasm):
    h = host(wasm, discovery={"enabled": True})
    request, calls = h.request(BASE + [(":path", "/.well-known/l402-services")])
    assert calls == [READ] * 3 + LOCAL, calls  # method, path, If-None-Match
    assert request.response[0] == 200 and json.loads(request.response[2])["routes"]
    _, calls = h.request(BASE + [(":path", "/v1/forecast"), ("authorization", paid_credential())])
    assert calls == PAID, calls


def test_dry_run_sets_its_header_instead_of_handing_off(wasm):
    routes = CONFIG["routes"] + [{"match": {"path_prefix": "/v2/"}, "service": "enforced", "price_sat": 1,
                                  "dry_run": False}]
    h = host(wasm, dry_run=True, routes=routes)
    auth = paid_credential()
    request, calls = h.request(BASE + [(":path", "/v1/forecast"), ("authorization", auth)])
    assert request.continued and not request.callouts
    # The header set, the client's copies of the metering headers removed, the credential kept.
    assert calls == [READ] * 3 + [TIME, SET] + [REMOVE] * 3, calls
    sent = dict(request.headers)
    assert sent["x-l402-dry-run"] == f"paid; service=weather; price_msat=10000; token_id={token_id(auth)}"
    assert sent["authorization"] == auth and "x-l402-token-id" not in sent
    request, calls = h.request(BASE + [(":path", "/v1/forecast")])
    assert request.continued and not request.callouts
    assert dict(request.headers)["x-l402-dry-run"] == "challenge; reason=no_credential; service=weather; price_msat=10000"
    # An enforced route of a dry-run config: the client's copy of the header is removed first.
    preimage = secrets.token_bytes(32)
    mac, _ = py_mint(SECRET, ["services=enforced:0"], preimage=preimage)
    request, calls = h.request(BASE + [(":path", "/v2/x"), ("authorization", credential(mac, preimage)),
                                       ("x-l402-dry-run", "paid")])
    assert calls == PAID[:4] + [REMOVE] + PAID[4:], calls
    assert "x-l402-dry-run" not in dict(request.headers)
