"""l402.wasm in a real Envoy with invoices from a real LNbits (FakeWallet): the challenge as a
third-party client reads it, a full pay-and-reuse flow with @getalby/lightning-tools' fetchWithL402,
and every kind of refused credential, none of which may reach the upstream."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any, Iterator

import bolt11
import pytest

from harness import Envoy, free_port, http
from test_filter_support import (
    assert_challenge, assert_upstream_saw_only_paid, challenge_parts, credential_valid, get, inspect, mint,
    new_secret, node_client, plugin_config, render, shipped, token_id_of, with_plugin_config,
)

PRICE_MSAT = 10_000          # envoy/demo.yaml: weather, price_sat 10
REPORTS_PRICE_MSAT = 21_000
PAID = {"/v1/": "weather", "/reports/": "reports"}
CAPS = {"/reports/": ("write",)}


class Gate:
    def __init__(self, envoy: Envoy, secret: str):
        self.envoy = envoy
        self.secret = secret

    def url(self, path: str) -> str:
        return self.envoy.url(path)


@pytest.fixture(scope="module")
def gate(lnbits, upstream, wasm) -> Iterator[Gate]:
    """envoy/demo.yaml as shipped, plus a second paid route that requires a capability."""
    secret = new_secret()
    vars = {"LISTEN_PORT": free_port(), "UPSTREAM_PORT": upstream.port, "LNBITS_PORT": lnbits.port}
    template = shipped("demo.yaml")
    cfg = plugin_config(render(template, vars))
    cfg["routes"].append({"match": {"path_prefix": "/reports/"}, "service": "reports", "price_msat": REPORTS_PRICE_MSAT,
                          "lifetime_s": 600, "capabilities": ["write"]})
    envoy = Envoy(with_plugin_config(template, cfg), vars=vars,
                  env={"L402_SECRETS": secret, "LNBITS_INVOICE_KEY": lnbits.gateway.inkey}).start()
    try:
        yield Gate(envoy, secret)
    finally:
        envoy.stop()


def gateway_invoices(lnbits) -> list[dict[str, Any]]:
    return lnbits._call("GET", "/api/v1/payments?limit=1000", key=lnbits.gateway.inkey)


# -- the challenge --------------------------------------------------------------------------------

def test_challenge_read_by_lightning_tools_and_bolt11(gate, lnbits, clean_upstream):
    r = get(gate.url("/v1/forecast"))
    body = assert_challenge(r, "payment_required", "weather")
    assert body["price_msat"] == PRICE_MSAT and body["price_sat"] == 10
    assert r.headers["access-control-expose-headers"].lower() == "www-authenticate"
    mac_b64, invoice = challenge_parts(r)
    assert body["invoice"] == invoice

    # @getalby/lightning-tools: parseL402 on the header exactly as a browser's fetch joins it
    # (both challenges in one value), and its bolt11 decoder; npm bolt11 on the same invoice.
    joined = r.headers["www-authenticate"]
    js = node_client("parse", header=joined)
    assert js["parsed"]["token"] == mac_b64 and js["parsed"]["invoice"] == invoice
    only_l402 = node_client("parse", header=[v for v in r.header_values("www-authenticate") if v.startswith("L402")][0])
    assert only_l402["parsed"]["token"] == mac_b64

    # The payment hash in the macaroon's identifier (bytes 2..34) is the invoice's.
    ident = inspect(mac_b64)
    assert ident["identifier"]["version"] == 0 and ident["location"] == "lsat"
    payment_hash = ident["identifier"]["payment_hash"]
    assert ident["identifier_hex"][4:68] == payment_hash
    assert ident["caveats"][0] == "services=weather:0"
    assert any(c.startswith("weather_valid_until=") for c in ident["caveats"])
    assert js["lightning_tools"]["payment_hash"] == payment_hash and js["lightning_tools"]["satoshi"] == 10
    assert js["bolt11"]["payment_hash"] == payment_hash and int(js["bolt11"]["millisatoshis"]) == PRICE_MSAT
    assert js["bolt11"]["description"] == "weather API access"
    py = bolt11.decode(invoice)
    assert py.amount_msat == PRICE_MSAT and py.payment_hash == payment_hash

    # It is a real, open invoice of the gateway's LNbits wallet.
    status = lnbits.payment_status(payment_hash)
    assert status["paid"] is False
    assert payment_hash in [p["payment_hash"] for p in gateway_invoices(lnbits)]
    assert clean_upstream.requests() == []


def test_fetch_with_l402_pays_once_and_reuses(gate, lnbits, clean_upstream):
    invoices_before = len(gateway_invoices(lnbits))
    balance_before = lnbits.balance_msat(lnbits.gateway.inkey)

    out = node_client("fetch", url=gate.url("/v1/forecast?city=lisbon"), lnbits_url=lnbits.url,
                      adminkey=lnbits.payer.adminkey, reuse=3)

    assert out["first"]["status"] == 200, out
    assert out["first"]["body"]["upstream"] == "l402-test-upstream"
    assert out["payment"]["paid"] is True and out["payment"]["amountSat"] == 10
    assert len(out["paid"]) == 1, out["paid"]
    assert [x["status"] for x in out["reused"]] == [200, 200, 200]
    assert all(x["payment"]["paid"] is False and x["www_authenticate"] is None for x in out["reused"])

    # LNbits: one invoice created, paid once, for the price.
    after = gateway_invoices(lnbits)
    assert len(after) == invoices_before + 1
    paid_hash = out["paid"][0]["payment_hash"]
    assert lnbits.payment_status(paid_hash)["paid"] is True
    assert lnbits.balance_msat(lnbits.gateway.inkey) == balance_before + PRICE_MSAT

    # The upstream saw exactly the four paid requests, each with a credential that verifies
    # independently, all for the one token lightning-tools built (it kept the LSAT scheme it saw first).
    log = clean_upstream.requests()
    assert [e["path"] for e in log] == ["/v1/forecast?city=lisbon"] * 4
    cred = out["payment"]["credentials"]["value"]
    assert cred.startswith("LSAT ")
    assert credential_valid(cred, gate.secret, "weather")
    assert inspect(cred)["identifier"]["payment_hash"] == paid_hash
    assert {e["headers"]["x-l402-token-id"] for e in log} == {token_id_of(cred)}
    assert {e["headers"]["x-l402-price-msat"] for e in log} == {str(PRICE_MSAT)}
    assert assert_upstream_saw_only_paid(log, gate.secret, PAID, [cred], CAPS) == 4


def test_manual_pay_with_l402_scheme(gate, lnbits, clean_upstream):
    r = get(gate.url("/v1/forecast"))
    mac, invoice = challenge_parts(r)
    preimage = lnbits.pay(lnbits.payer.adminkey, invoice)
    cred = f"L402 {mac}:{preimage}"
    n_invoices = len(gateway_invoices(lnbits))
    for _ in range(2):
        ok = get(gate.url("/v1/forecast"), cred)
        assert ok.status == 200, ok.text
    # Upper-case preimage and scheme, URL-safe unpadded base64: the same token.
    urlsafe = base64.urlsafe_b64encode(base64.b64decode(mac)).decode().rstrip("=")
    variant = f"l402 {urlsafe}:{preimage.upper()}"
    assert get(gate.url("/v1/other"), variant).status == 200
    assert len(gateway_invoices(lnbits)) == n_invoices, "a paid request created an invoice"
    # Free and unmatched routes.
    assert get(gate.url("/health")).status == 200
    denied = get(gate.url("/admin"), cred)
    assert denied.status == 403 and denied.json()["reason"] == "no_route"
    assert [e["path"] for e in clean_upstream.requests()] == ["/v1/forecast", "/v1/forecast", "/v1/other", "/health"]
    assert assert_upstream_saw_only_paid(clean_upstream.requests(), gate.secret, PAID, [cred, variant], CAPS) == 3


def test_client_sent_metering_headers_are_replaced(gate, clean_upstream):
    forged = {"X-L402-Token-Id": "00" * 32, "X-L402-Service": "weather", "X-L402-Price-Msat": "1"}
    r = http("GET", gate.url("/v1/x"), headers=forged)
    assert_challenge(r, "payment_required", "weather")
    assert http("GET", gate.url("/health"), headers=forged).status == 200
    cred = mint(gate.secret, "weather")
    assert http("GET", gate.url("/v1/x"), headers={**forged, "Authorization": cred}).status == 200
    free, paid = clean_upstream.requests()
    assert not {"x-l402-token-id", "x-l402-service", "x-l402-price-msat"} & set(free["headers"])
    assert paid["headers"]["x-l402-token-id"] == token_id_of(cred)
    assert paid["headers"]["x-l402-price-msat"] == str(PRICE_MSAT)
    assert assert_upstream_saw_only_paid([paid], gate.secret, PAID, [cred]) == 1


# -- refusals -------------------------------------------------------------------------------------

def paid_credential(gate, lnbits) -> tuple[str, str, bytes]:
    """A real paid credential (macaroon from the filter, preimage from LNbits)."""
    mac, invoice = challenge_parts(get(gate.url("/v1/forecast")))
    preimage = lnbits.pay(lnbits.payer.adminkey, invoice)
    return mac, preimage, base64.b64decode(mac)


def field_offsets(raw: bytes) -> dict[str, int]:
    """Offsets of a byte inside the identifier's token id, the first caveat and the signature of a
    V2 macaroon as the filter mints it (location, identifier, caveats, signature)."""
    ident = raw.index(b"\x02\x42\x00\x00") + 2  # identifier field: tag 2, length 66
    caveat = raw.index(b"services=")
    return {"token_id": ident + 2 + 32 + 5, "caveat": caveat + len("services=") + 1, "signature": len(raw) - 3}


def flip(raw: bytes, offset: int) -> str:
    b = bytearray(raw)
    b[offset] ^= 0x01
    return base64.b64encode(bytes(b)).decode()


def test_tampered_macaroon(gate, lnbits, clean_upstream):
    mac, preimage, raw = paid_credential(gate, lnbits)
    assert get(gate.url("/v1/a"), f"L402 {mac}:{preimage}").status == 200  # the untouched token works
    clean_upstream.clear()
    offsets = field_offsets(raw)
    for where in ("token_id", "caveat", "signature"):
        r = get(gate.url("/v1/a"), f"L402 {flip(raw, offsets[where])}:{preimage}")
        assert_challenge(r, "bad_signature", "weather")
    # A byte of the payment hash: the preimage no longer matches it.
    r = get(gate.url("/v1/a"), f"L402 {flip(raw, offsets['token_id'] - 32)}:{preimage}")
    assert_challenge(r, "preimage_mismatch")
    # Broken structure: a field tag, a length, the version byte, a truncation.
    for bad in (flip(raw, 0), base64.b64encode(raw[:-10]).decode(), base64.b64encode(raw + b"\x00").decode()):
        r = get(gate.url("/v1/a"), f"L402 {bad}:{preimage}")
        assert_challenge(r, "malformed", "weather")
    # Identifier version 1: a different token format.
    ident_version = raw.index(b"\x02\x42\x00\x00") + 3
    r = get(gate.url("/v1/a"), f"L402 {flip(raw, ident_version)}:{preimage}")
    assert_challenge(r, "unknown_version")
    assert clean_upstream.requests() == []


def test_wrong_preimage(gate, lnbits, clean_upstream):
    mac, preimage, _ = paid_credential(gate, lnbits)
    other = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    r = get(gate.url("/v1/a"), f"L402 {mac}:{other}")
    body = assert_challenge(r, "preimage_mismatch", "weather")
    assert body["invoice"].startswith("lnbc")
    r = get(gate.url("/v1/a"), f"L402 {mac}:{'00' * 32}")
    assert_challenge(r, "preimage_mismatch")
    assert clean_upstream.requests() == []


def test_minted_tokens_expired_wrong_service_capability(gate, clean_upstream):
    secret = gate.secret
    # Positive controls: tokens minted with the gateway's secret are accepted where they apply.
    fresh = mint(secret, "weather", "--lifetime-s", "600")
    assert get(gate.url("/v1/x"), fresh).status == 200
    writer = mint(secret, "reports", "--capability", "write", "--capability", "read")
    assert get(gate.url("/reports/q1"), writer).status == 200
    assert [e["path"] for e in clean_upstream.requests()] == ["/v1/x", "/reports/q1"]
    clean_upstream.clear()

    expired = mint(secret, "weather", "--valid-until", str(int(time.time()) - 60))
    assert_challenge(get(gate.url("/v1/x"), expired), "expired", "weather")
    other = mint(secret, "other")
    assert_challenge(get(gate.url("/v1/x"), other), "wrong_service", "weather")
    # A paid weather token on the reports route, and a reports token without the capability.
    assert_challenge(get(gate.url("/reports/q1"), fresh), "wrong_service", "reports")
    reader = mint(secret, "reports", "--capability", "read")
    body = assert_challenge(get(gate.url("/reports/q1"), reader), "capability_missing", "reports")
    assert body["price_msat"] == REPORTS_PRICE_MSAT
    no_caps = mint(secret, "reports")
    assert_challenge(get(gate.url("/reports/q1"), no_caps), "capability_missing", "reports")
    # Another operator's secret.
    assert_challenge(get(gate.url("/v1/x"), mint(new_secret(), "weather")), "bad_signature")
    # The challenge for the capability route mints the capability into the new token.
    r = get(gate.url("/reports/q1"))
    mac, _ = challenge_parts(r)
    assert "reports_capabilities=write" in inspect(mac)["caveats"]
    assert clean_upstream.requests() == []


def test_garbage_and_other_schemes(gate, clean_upstream):
    for header in ("L402 xyz", "LSAT :", "L402 AgEE:zz", "L402 !!!:" + "00" * 32, "lsat xyz:"):
        assert_challenge(get(gate.url("/v1/x"), header), "malformed", "weather")
    # Another scheme, or the bare scheme name with nothing after it (the HTTP parser strips
    # trailing spaces from "L402 "), carries no credential: a plain challenge.
    for header in ("Bearer abc", "Basic dXNlcjpwYXNz", "Token L402", "L402 "):
        assert_challenge(get(gate.url("/v1/x"), header), "payment_required", "weather")
    # Non-UTF-8 bytes in the header are a malformed credential, not a missing one.
    r = http("GET", gate.url("/v1/x"), headers={"Authorization": "L402 \xff\xfe:00"})
    assert_challenge(r, "malformed")
    assert clean_upstream.requests() == []
