"""Token lifecycle through a real Envoy, on each node kind (LND and Core Lightning simulators over TLS,
the real LNbits): use limits, revocation, the per-network challenge limit, strict settlement checks
and macaroon-only credentials, expired invoices, and secret rotation. The upstream's request log is
the ground truth for what passed; the node's own counters for what it was asked."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import bolt11
import pytest

from test_filter_support import (
    NODE_KINDS, Backend, Gateway, assert_challenge, challenge_parts, cli, http_from, inspect, mint, new_secret,
    token_id_of,
)

PRICE_MSAT = 10_000
WEATHER = {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600}
USE_ROUTES = [
    {"match": {"path_prefix": "/once/"}, "service": "once", "price_sat": 2, "uses": 1},
    {"match": {"path_prefix": "/thrice/"}, "service": "thrice", "price_sat": 3, "uses": 3},
    WEATHER,
]
LIMIT = {"burst": 5, "per_minute": 60}


@pytest.fixture(scope="module", params=NODE_KINDS)
def backend(request, wasm) -> Iterator[Backend]:
    kind = request.param
    b = Backend(kind, request.getfixturevalue("lnbits") if kind == "lnbits" else None)
    try:
        yield b
    finally:
        b.stop()


class Revocable:
    """A gateway whose revocation list names one token minted beforehand."""

    def __init__(self, backend: Backend, upstream_port: int):
        secret = new_secret()
        self.revoked = mint(secret, "weather")
        self.gate = Gateway(backend, upstream_port, USE_ROUTES, secrets=secret,
                            revoked=[token_id_of(self.revoked)])


@pytest.fixture(scope="module")
def plain(backend, upstream) -> Iterator[Revocable]:
    """Default node settings: use-limited routes and a revocation list."""
    r = Revocable(backend, upstream.port)
    try:
        yield r
    finally:
        r.gate.stop()


@pytest.fixture(scope="module")
def strict(backend, upstream) -> Iterator[Gateway]:
    """node.strict with macaroon-only credentials."""
    g = Gateway(backend, upstream.port, [WEATHER], node={"strict": True, "macaroon_only": True})
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def limited(backend, upstream) -> Iterator[Gateway]:
    """One-second invoices and a challenge limit per /32 client network."""
    g = Gateway(backend, upstream.port, [WEATHER], invoice={"expiry_s": 1}, challenge_limit=LIMIT,
                client_network={"ipv4_prefix": 32})
    try:
        yield g
    finally:
        g.stop()


def paths(upstream) -> list[str]:
    return [e["path"] for e in upstream.requests()]


def fresh_challenge(r, reason: str, service: str, used: str) -> None:
    """A 402 with ``reason`` whose challenge is a new token (not the one ``used``)."""
    assert_challenge(r, reason, service)
    mac, _ = challenge_parts(r)
    assert inspect(mac)["identifier"]["token_id"] != token_id_of(used)


# -- use limits -----------------------------------------------------------------------------------

def test_single_use_token(plain, clean_upstream):
    g = plain.gate
    cred = g.buy("/once/a")
    assert g.request("/once/a", cred).status == 200
    fresh_challenge(g.request("/once/a", cred), "used_up", "once", cred)
    fresh_challenge(g.request("/once/b", cred), "used_up", "once", cred)
    assert paths(clean_upstream) == ["/once/a"]


def test_three_use_token(plain, clean_upstream):
    g = plain.gate
    cred = g.buy("/thrice/x")
    other = g.buy("/thrice/x")
    for i in range(3):
        r = g.request(f"/thrice/{i}", cred)
        assert r.status == 200, (i, r.status, r.text)
    fresh_challenge(g.request("/thrice/3", cred), "used_up", "thrice", cred)
    # Each token has its own count.
    assert g.request("/thrice/other", other).status == 200
    assert paths(clean_upstream) == ["/thrice/0", "/thrice/1", "/thrice/2", "/thrice/other"]
    assert [e["headers"]["x-l402-token-id"] for e in clean_upstream.requests()] == [token_id_of(cred)] * 3 + [
        token_id_of(other)]


# -- revocation -----------------------------------------------------------------------------------

def test_revoked_token(plain, clean_upstream):
    g = plain.gate
    fresh_challenge(g.request("/v1/x", plain.revoked), "revoked", "weather", plain.revoked)
    other = mint(g.secret, "weather")
    bought = g.buy("/v1/x")
    assert g.request("/v1/x", other).status == 200
    assert g.request("/v1/y", bought).status == 200
    fresh_challenge(g.request("/v1/z", plain.revoked), "revoked", "weather", plain.revoked)
    assert paths(clean_upstream) == ["/v1/x", "/v1/y"]
    assert token_id_of(plain.revoked) not in [e["headers"]["x-l402-token-id"] for e in clean_upstream.requests()]


# -- strict settlement and macaroon-only credentials ----------------------------------------------

def test_strict_checks_settlement_once(strict, clean_upstream):
    backend = strict.backend
    payment_hash, preimage, invoice = backend.invoice_with_preimage(PRICE_MSAT, "weather API access")
    r = cli("token", "mint", "--service", "weather", "--payment-hash", payment_hash, secret=strict.secret)
    assert r.returncode == 0, r.stderr
    cred = f"L402 {r.stdout.strip()}:{preimage}"
    lookups = backend.lookups()
    # The right preimage, but the node has not been paid: refused.
    fresh_challenge(strict.request("/v1/x", cred), "unsettled", "weather", cred)
    if lookups is not None:
        assert backend.lookups() == lookups + 1
    backend.pay(invoice)
    assert strict.request("/v1/x", cred).status == 200
    assert strict.request("/v1/y", cred).status == 200
    if lookups is not None:
        assert backend.lookups() == lookups + 2, "a settled invoice was looked up again"
    assert paths(clean_upstream) == ["/v1/x", "/v1/y"]


def test_macaroon_only_needs_the_node(strict, clean_upstream):
    backend = strict.backend
    r = strict.request("/v1/x")
    assert_challenge(r, "payment_required", "weather")
    mac, invoice = challenge_parts(r)
    lookups = backend.lookups()
    fresh_challenge(strict.request("/v1/x", f"L402 {mac}"), "unsettled", "weather", f"L402 {mac}:")
    backend.pay(invoice)
    for path in ("/v1/a", "/v1/b"):
        r = strict.request(path, f"L402 {mac}")
        assert r.status == 200, (r.status, r.text)
    if lookups is not None:
        assert backend.lookups() == lookups + 2
    log = clean_upstream.requests()
    assert [e["path"] for e in log] == ["/v1/a", "/v1/b"]
    assert all("authorization" not in e["headers"] for e in log)
    assert {e["headers"]["x-l402-token-id"] for e in log} == {inspect(mac)["identifier"]["token_id"]}


# -- expired invoices -----------------------------------------------------------------------------

def test_expired_invoice(limited, clean_upstream):
    # From 127.0.0.3: the flood test below has 127.0.0.1's challenge allowance to itself.
    r = http_from("127.0.0.3", limited.url("/v1/x"))
    body = assert_challenge(r, "payment_required", "weather")
    mac, invoice = challenge_parts(r)
    decoded = bolt11.decode(invoice)
    assert body["invoice"] == invoice and body["price_msat"] == PRICE_MSAT == decoded.amount_msat
    assert body["price_sat"] == 10
    assert decoded.expiry_time - decoded.date == 1
    time.sleep(2.1)
    # Without the preimage there is no credential.
    guess = {"Authorization": f"L402 {mac}:{'00' * 32}"}
    assert_challenge(http_from("127.0.0.3", limited.url("/v1/x"), headers=guess), "preimage_mismatch", "weather")
    ok, result = limited.backend.try_pay(invoice)
    if limited.backend.kind != "lnbits":
        assert not ok, "an expired invoice was paid"
        assert result[0] == 410 and result[1]["error"] == "invoice expired", result
        assert clean_upstream.requests() == []
        return
    # LNbits 1.6.2 does not check the expiry of an invoice paid from another wallet of the same
    # instance (services/payments.py _pay_internal_invoice): the payment goes through and its
    # preimage is a valid credential. Only the node can enforce an invoice's expiry.
    assert ok, result
    assert limited.backend.lnbits.payment_status(decoded.payment_hash)["paid"] is True
    assert http_from("127.0.0.3", limited.url("/v1/late"), headers={"Authorization": f"L402 {mac}:{result}"}).status == 200
    assert [e["path"] for e in clean_upstream.requests()] == ["/v1/late"]


# -- the challenge limit --------------------------------------------------------------------------

def test_challenge_flood_is_limited_per_network(limited, clean_upstream):
    backend = limited.backend
    before = backend.invoices_created()
    with ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(lambda i: limited.request(f"/v1/flood/{i}"), range(30)))
    created = backend.invoices_created() - before
    challenged = [r for r in answers if r.status == 402]
    limited_ = [r for r in answers if r.status == 429]
    assert len(challenged) + len(limited_) == 30, [r.status for r in answers]
    # A full bucket: exactly the burst gets invoices, all at once; none refills in the meantime.
    assert len(challenged) == created == LIMIT["burst"], (len(challenged), created)
    for r in limited_:
        assert r.json()["reason"] == "challenge_rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        assert "www-authenticate" not in r.headers
    # Another network still gets challenges.
    assert_challenge(http_from("127.0.0.2", limited.url("/v1/x")), "payment_required", "weather")
    assert backend.invoices_created() - before == created + 1
    # After Retry-After this network gets a challenge again.
    time.sleep(max(int(r.headers["retry-after"]) for r in limited_) + 0.2)
    assert_challenge(limited.request("/v1/again"), "payment_required", "weather")
    assert clean_upstream.requests() == []


# -- secret rotation ------------------------------------------------------------------------------

def verifies(cred: str, secret: str) -> bool:
    r = cli("token", "verify", "--service", "weather", "--secret-env", "L402_SECRETS", secret=secret, stdin=cred)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def test_secret_rotation(upstream, clean_upstream, wasm):
    a, b = new_secret(), new_secret()
    backend = Backend("lnd")
    gate = Gateway(backend, upstream.port, [WEATHER], secrets=a)
    try:
        old = gate.buy("/v1/x")
        assert gate.request("/v1/old-under-a", old).status == 200

        gate.restart(f"{b},{a}")
        assert gate.request("/v1/old-under-b-a", old).status == 200
        new = gate.buy("/v1/x")
        assert verifies(new, b) and not verifies(new, a)
        assert verifies(old, a) and not verifies(old, b)
        assert gate.request("/v1/new-under-b-a", new).status == 200

        gate.restart(b)
        assert_challenge(gate.request("/v1/old-under-b", old), "bad_signature", "weather")
        assert gate.request("/v1/new-under-b", new).status == 200
    finally:
        gate.stop()
        backend.stop()
    assert paths(clean_upstream) == ["/v1/old-under-a", "/v1/old-under-b-a", "/v1/new-under-b-a", "/v1/new-under-b"]
    assert [e["headers"]["x-l402-token-id"] for e in clean_upstream.requests()] == [
        token_id_of(old), token_id_of(old), token_id_of(new), token_id_of(new)]
