"""The Payment HTTP authentication scheme beside L402, in a real Envoy, on the real LNbits and on the
LND simulator: one invoice for both dialects, a charge that buys one request and is refused when
replayed, receipts, problem details, and every kind of refused charge, none of which reaches the
upstream. mppx (the npm client of the Machine Payments Protocol) pays through Envoy with a Lightning
method plugged into its own flow."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from typing import Any, Iterator

import pytest

from harness import ROOT
from payment_support import (
    assert_problem, b64url, challenges, credential, decoded, payment_challenge, receipt, unb64url,
)
from test_filter_support import Backend, Gateway, challenge_parts, cli, inspect

ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 600,
     "schemes": ["l402", "payment"]},
    {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
    {"match": {"path_prefix": "/once/"}, "service": "once", "price_sat": 3, "uses": 1, "schemes": ["l402", "payment"]},
    {"match": {"path_prefix": "/legacy/"}, "service": "legacy", "price_sat": 2},
]
MPP_CLIENT = ROOT / "tests" / "e2e" / "clients" / "mpp_client.mjs"


@pytest.fixture(scope="module", params=["lnbits", "lnd"])
def gw(request, upstream) -> Iterator[Gateway]:
    lnbits = request.getfixturevalue("lnbits") if request.param == "lnbits" else None
    backend = Backend(request.param, lnbits)
    gateway = Gateway(backend, upstream.port, ROUTES)
    try:
        yield gateway
    finally:
        gateway.stop()
        backend.stop()


def buy(gw: Gateway, path: str) -> tuple[dict[str, str], str, Any]:
    """Ask for `path`, pay its invoice: (the Payment challenge, the preimage, the 402)."""
    r = gw.request(path)
    assert r.status == 402, (r.status, r.text)
    challenge = payment_challenge(r)
    preimage = gw.backend.pay(decoded(challenge["request"])["methodDetails"]["invoice"])
    return challenge, preimage, r


def test_one_invoice_for_both_dialects(gw, clean_upstream):
    before = time.time()
    r = gw.request("/v1/forecast")
    assert r.status == 402 and r.json()["reason"] == "payment_required"
    found = challenges(r.header_values("www-authenticate"))
    assert [s for s, _ in found] == ["LSAT", "L402", "Payment"]
    assert r.headers["cache-control"] == "no-store"
    p = payment_challenge(r)
    assert (p["method"], p["intent"], p["realm"]) == ("lightning", "charge", "weather")
    assert set(p) == {"id", "realm", "method", "intent", "request", "expires", "opaque"}
    assert len(unb64url(p["id"])) == 32

    # The request: canonical JSON (sorted members, no whitespace), unpadded base64url.
    request = decoded(p["request"])
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert p["request"] == b64url(canonical.encode())
    mac_b64, invoice = challenge_parts(r)
    assert request["amount"] == "10" and request["currency"] == "sat"
    assert request["description"] == gw.config["invoice"]["memo"].replace("{service}", "weather")
    assert request["methodDetails"]["invoice"] == invoice
    mac = inspect(mac_b64)
    assert request["methodDetails"]["paymentHash"] == mac["identifier"]["payment_hash"]

    # Bound to the service and to the purchase's token id, the L402 token's.
    assert decoded(p["opaque"]) == {"service": "weather", "token_id": mac["identifier"]["token_id"]}
    expires = time.mktime(time.strptime(p["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 595 <= expires <= time.time() + 605
    assert clean_upstream.requests() == []


def test_a_payment_only_route_answers_with_problem_details(gw, clean_upstream):
    r = gw.request("/pay/quote")
    body = assert_problem(r, "payment-required", "payment_required")
    assert [s for s, _ in challenges(r.header_values("www-authenticate"))] == ["Payment"]
    assert body["service"] == "quotes" and body["price_sat"] == 5
    assert body["invoice"] == decoded(payment_challenge(r)["request"])["methodDetails"]["invoice"]
    assert r.headers["cache-control"] == "no-store"
    assert clean_upstream.requests() == []


def test_a_charge_buys_one_request_with_a_receipt(gw, clean_upstream):
    challenge, preimage, _ = buy(gw, "/pay/quote")
    authorization = credential(challenge, preimage)
    r = gw.request("/pay/quote?n=1", authorization)
    assert r.status == 200, r.text
    payment_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    rc = receipt(r)
    assert rc["status"] == "success" and rc["method"] == "lightning"
    assert rc["reference"] == payment_hash and rc["challengeId"] == challenge["id"]
    assert abs(time.mktime(time.strptime(rc["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - time.time()) < 5
    assert r.headers["cache-control"] == "private"

    (seen,) = clean_upstream.requests()
    assert seen["path"] == "/pay/quote?n=1"
    assert "authorization" not in seen["headers"]
    assert seen["headers"]["x-l402-token-id"] == decoded(challenge["opaque"])["token_id"]
    assert seen["headers"]["x-l402-service"] == "quotes"
    assert seen["headers"]["x-l402-price-msat"] == "5000"

    # A replay is refused with a fresh challenge, and never reaches the upstream.
    again = gw.request("/pay/quote?n=2", authorization)
    assert_problem(again, "invalid-challenge", "replayed")
    assert payment_challenge(again)["id"] != challenge["id"]
    assert len(clean_upstream.requests()) == 1
    time.sleep(1.2)
    counters = gw.counters()
    assert counters.get("l402_refused_replayed", 0) >= 1


def test_one_purchase_whichever_dialect(gw, clean_upstream):
    """uses: 1 and both dialects: the charge and the L402 token of one invoice buy one request."""
    challenge, preimage, r = buy(gw, "/once/a")
    mac, _ = challenge_parts(r)
    l402 = f"L402 {mac}:{preimage}"
    assert gw.request("/once/a", credential(challenge, preimage)).status == 200
    assert gw.request("/once/a", l402).json()["reason"] == "used_up"

    challenge, preimage, r = buy(gw, "/once/b")
    mac, _ = challenge_parts(r)
    assert gw.request("/once/b", f"L402 {mac}:{preimage}").status == 200
    assert_problem(gw.request("/once/b", credential(challenge, preimage)), "invalid-challenge", "replayed")
    assert [e["path"] for e in clean_upstream.requests()] == ["/once/a", "/once/b"]


def test_the_token_of_the_same_invoice_still_opens_its_route(gw, clean_upstream):
    """Without `uses`, the L402 token is good for its lifetime; the charge adds one request."""
    challenge, preimage, r = buy(gw, "/v1/x")
    mac, _ = challenge_parts(r)
    assert gw.request("/v1/x", credential(challenge, preimage)).status == 200
    assert [gw.request("/v1/x", f"L402 {mac}:{preimage}").status for _ in range(3)] == [200] * 3
    assert len(clean_upstream.requests()) == 4


def test_a_route_without_the_payment_scheme_ignores_its_credential(gw, clean_upstream):
    challenge, preimage, _ = buy(gw, "/pay/q")
    r = gw.request("/legacy/x", credential(challenge, preimage))
    assert r.status == 402 and r.json()["reason"] == "payment_required"
    assert [s for s, _ in challenges(r.header_values("www-authenticate"))] == ["LSAT", "L402"]
    assert clean_upstream.requests() == []


def _tampered_request(c: dict[str, str]) -> dict[str, str]:
    request = decoded(c["request"])
    request["amount"] = "1"
    return {**c, "request": b64url(json.dumps(request, separators=(",", ":")).encode())}


REFUSALS = {
    # name: (how the credential is spoiled, problem type, reason)
    "forged_id": (lambda c, p: credential({**c, "id": b64url(b"\x01" * 32)}, p), "invalid-challenge", "invalid_challenge"),
    "tampered_request": (lambda c, p: credential(_tampered_request(c), p), "invalid-challenge", "invalid_challenge"),
    "pushed_expiry": (lambda c, p: credential({**c, "expires": "2099-01-01T00:00:00Z"}, p), "invalid-challenge",
                      "invalid_challenge"),
    "other_service": (lambda c, p: credential({**c, "opaque": b64url(b'{"service":"weather"}')}, p),
                      "invalid-challenge", "invalid_challenge"),
    "wrong_preimage": (lambda c, p: credential(c, "00" * 32), "verification-failed", "preimage_mismatch"),
    "short_preimage": (lambda c, p: credential(c, p[:40]), "malformed-credential", "malformed"),
    "session_intent": (lambda c, p: credential({**c, "intent": "session"}, p), "method-unsupported",
                       "method_unsupported"),
    "not_base64url": (lambda c, p: "Payment !!!" + p, "malformed-credential", "malformed"),
    "not_json": (lambda c, p: "Payment " + b64url(b"[1,2"), "malformed-credential", "malformed"),
    "no_payload": (lambda c, p: "Payment " + b64url(json.dumps({"challenge": c}).encode()), "malformed-credential",
                   "malformed"),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_charges_never_reach_the_upstream(gw, clean_upstream, name):
    spoil, problem, reason = REFUSALS[name]
    challenge, preimage, _ = buy(gw, "/pay/q")
    assert_problem(gw.request("/pay/q", spoil(challenge, preimage)), problem, reason)
    assert clean_upstream.requests() == []


def test_a_charge_for_another_route_is_refused(gw, clean_upstream):
    challenge, preimage, _ = buy(gw, "/pay/q")
    assert_problem(gw.request("/v1/x", credential(challenge, preimage)), "invalid-challenge", "wrong_service")
    assert clean_upstream.requests() == []


def test_payment_verify_agrees_with_the_gateway(gw):
    challenge, preimage, _ = buy(gw, "/pay/q")
    good = credential(challenge, preimage)
    ok = cli("payment", "verify", "--service", "quotes", "--price-sat", "5", "--json", secret=gw.secret, stdin=good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out = json.loads(ok.stdout)
    assert out["valid"] and out["challenge_id"] == challenge["id"] and out["amount_sat"] == 5
    pricier = cli("payment", "verify", "--service", "quotes", "--price-sat", "6", "--json", secret=gw.secret, stdin=good)
    assert pricier.returncode == 1 and json.loads(pricier.stdout)["reason"] == "wrong_price"
    shown = json.loads(cli("payment", "inspect", "--json", stdin=good).stdout)
    assert shown["request"]["amount"] == "5" and shown["opaque"]["service"] == "quotes"
    assert shown["challenge"]["id"] == challenge["id"]


def test_mppx_pays_and_gets_in(gw, clean_upstream):
    if gw.backend.kind != "lnbits":
        pytest.skip("mppx pays through LNbits' REST API; the LND simulator has no payer wallet for it")
    lnbits = gw.backend.lnbits
    out = subprocess.run(["node", str(MPP_CLIENT), gw.url("/pay/quote?via=mppx"), lnbits.url, lnbits.payer.adminkey],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == 200, result
    assert result["challenge"]["method"] == "lightning" and result["challenge"]["intent"] == "charge"
    assert result["receipt"]["status"] == "success"
    assert result["receipt"]["challengeId"] == result["challenge"]["id"]
    assert result["receipt"]["reference"] == result["challenge"]["request"]["methodDetails"]["paymentHash"]
    (seen,) = clean_upstream.requests()
    assert seen["path"] == "/pay/quote?via=mppx" and "authorization" not in seen["headers"]
    # mppx's credential, replayed by hand, is refused.
    assert_problem(gw.request("/pay/quote", result["authorization"]), "invalid-challenge", "replayed")
