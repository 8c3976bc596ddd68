"""The revised L402 specification (lightninglabs/L402, 2026-03) on a live gateway: the challenge's
`version` and `token` parameters, and `challenge.invalid_credential_status`, the choice between the
spec's 401 for a refused credential and the 402 clients recover from (docs/l402-spec.md)."""

from __future__ import annotations

from typing import Iterator

import pytest

from payment_support import challenges
from test_filter_support import Backend, Gateway, challenge_parts

ROUTES = [{"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10}]


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend("lnd")
    yield b
    b.stop()


@pytest.fixture(scope="module", params=[402, 401])
def gw(request, backend, upstream) -> Iterator[Gateway]:
    g = Gateway(backend, upstream.port, ROUTES, challenge={"invalid_credential_status": request.param})
    g.status = request.param
    yield g
    g.stop()


def test_the_challenge_carries_version_and_token(gw, clean_upstream):
    r = gw.request("/v1/x")
    assert r.status == 402
    found = dict(challenges(r.header_values("www-authenticate")))
    mac, invoice = challenge_parts(r)
    assert found["L402"] == {"macaroon": mac, "invoice": invoice, "version": "0", "token": mac}
    assert found["LSAT"] == {"macaroon": mac, "invoice": invoice}


def test_a_refused_credential_gets_the_configured_status_with_a_fresh_challenge(gw, clean_upstream):
    mac, invoice = challenge_parts(gw.request("/v1/x"))
    for authorization, reason in [(f"L402 {mac}:{'11' * 32}", "preimage_mismatch"), ("L402 garbage", "malformed")]:
        r = gw.request("/v1/x", authorization)
        assert r.status == gw.status, r.text
        assert r.json()["reason"] == reason
        assert [s for s, _ in challenges(r.header_values("www-authenticate"))] == ["LSAT", "L402"]
    # No credential at all is always 402, and a paid one passes.
    assert gw.request("/v1/x").status == 402
    assert gw.request("/v1/x", f"L402 {mac}:{gw.backend.pay(invoice)}").status == 200
    assert len(clean_upstream.requests()) == 1
