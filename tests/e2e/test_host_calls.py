"""The host calls l402.wasm makes per request, by outcome: each is a budget, so a change that adds a
call to the paid path fails here and not only in the bench (BENCHMARKS.md has what each costs).

The module runs in tests/e2e/wasm_host.py, a proxy-wasm host on Wasmtime that records every call.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import pytest

from attacks import credential, identifier, py_mint
from payment_support import credential as payment_credential
from payment_support import mint_charge
from wasm_host import Host

SECRET = secrets.token_hex(32)
CONFIG = {
    "secrets": [SECRET],
    "node": {"kind": "lnd", "upstream": "lnd", "authority": "lnd:8080", "credential": "0201036c6e64"},
    "routes": [
        {"match": {"path_prefix": "/health"}, "free": True},
        {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
        {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
    ],
}
BASE = [(":method", "GET"), (":authority", "api.example.com"), ("user-agent", "test")]

READ, REMOVE, SET, TIME = ("proxy_get_header_map_value", "proxy_remove_header_map_value",
                           "proxy_replace_header_map_value", "proxy_get_current_time_nanoseconds")
# The paid path with the default hand-off: the gate reads the method, the path and the credential and
# the clock; the hand-off removes the credential and sets the token id, service and price.
PAID = [READ] * 3 + [TIME] + [REMOVE] + [SET] * 3
# A free route: the method and the path (the credential and the clock are read only on a paid
# route), and the client's copies of the three metering headers removed.
FREE = [READ] * 2 + [REMOVE] * 3
# A challenge: the reads (the last one the content type, for a gRPC client's `token`), randomness
# for the token id, the callout, and the clock again for its latency.
CHALLENGE = [READ] * 6 + [TIME, "random_get", "proxy_http_call", TIME]
# A Payment-scheme charge: the paid path's calls, its single use counted in shared data (a read and
# a compare-and-swap); on the answer, the receipt (timed by the gate's clock read) set and the cache
# policy read and made private.
CHARGE = ([READ] * 3 + [TIME] + ["proxy_get_shared_data", "proxy_set_shared_data"] + [REMOVE] + [SET] * 3
          + [SET, READ, SET])


def paid_credential() -> str:
    preimage = secrets.token_bytes(32)
    mac, _ = py_mint(SECRET, ["services=weather:0"], preimage=preimage)
    return credential(mac, preimage)


@pytest.fixture
def host(wasm):
    h = Host(str(wasm), json.dumps(CONFIG))
    assert h.configured
    h.request(BASE + [(":path", "/health")])  # the first request of a worker also learns the host
    return h


def test_paid_request(host):
    auth = paid_credential()
    request, calls = host.request(BASE + [(":path", "/v1/forecast"), ("authorization", auth)])
    assert request.continued and request.response is None and not request.callouts
    assert calls == PAID, calls
    sent = dict(request.headers)
    assert "authorization" not in sent and sent["x-l402-service"] == "weather"
    # A second use of the same credential (the verified-credential cache) costs the same calls.
    _, again = host.request(BASE + [(":path", "/v1/forecast"), ("authorization", auth)])
    assert again == PAID, again


def test_paid_charge(host):
    preimage = secrets.token_bytes(32)
    challenge = mint_charge(SECRET, "quotes", 5, preimage, secrets.token_hex(32))
    auth = payment_credential(challenge, preimage.hex())
    request, calls = host.request(BASE + [(":path", "/pay/q"), ("authorization", auth)])
    assert request.continued and request.response is None and not request.callouts
    assert calls == CHARGE, calls
    # A replay: refused, and a fresh invoice asked for the challenge that answers it.
    request, _ = host.request(BASE + [(":path", "/pay/q"), ("authorization", auth)])
    assert not request.continued and len(request.callouts) == 1


def test_free_request(host):
    request, calls = host.request(BASE + [(":path", "/health"), ("x-l402-service", "spoofed")])
    assert request.continued
    assert calls == FREE, calls
    assert "x-l402-service" not in dict(request.headers)


def test_challenge(host):
    request, calls = host.request(BASE + [(":path", "/v1/forecast")])
    assert not request.continued and len(request.callouts) == 1
    assert calls == CHALLENGE, calls


def test_the_first_request_of_a_worker_learns_the_host(wasm):
    h = Host(str(wasm), json.dumps(CONFIG))
    _, calls = h.request(BASE + [(":path", "/health")])
    assert calls.count("proxy_get_property") == 1
    _, calls = h.request(BASE + [(":path", "/health")])
    assert "proxy_get_property" not in calls


# -- a route with the browser's cookie (`browser.cookie`) -------------------------------------------

BROWSER_CONFIG = {**CONFIG, "routes": [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600,
     "browser": {"cookie": True}},
]}
# The paid path reads the `Cookie` header too (one more read), whichever credential opens the route;
# a cookie credential is removed from it instead of the `Authorization` header (or the header is
# rewritten when it holds other cookies), and its request's `:scheme` is read (a Secure cookie over
# plain HTTP is not read).
BROWSER_PAID = [READ] * 4 + [TIME] + [REMOVE] + [SET] * 3
BROWSER_PAID_BY_COOKIE = [READ] * 5 + [TIME] + [REMOVE] + [SET] * 3
BROWSER_PAID_OTHER_COOKIES = [READ] * 5 + [TIME] + [SET] * 4
HTTPS = [(":scheme", "https")]
# The challenge reads the cookie too; the page's `Accept` is read with the node's answer.
BROWSER_CHALLENGE = [READ] * 7 + [TIME, "random_get", "proxy_http_call", TIME]
# A redemption: the method, the path, the fetch site, the scheme (a Secure cookie is not set over
# plain HTTP), the credential and the clock; the 303 (its sending reads the content type, for gRPC).
REDEMPTION = [READ] * 5 + [TIME, READ, "proxy_send_local_response"]


@pytest.fixture
def browser_host(wasm):
    h = Host(str(wasm), json.dumps(BROWSER_CONFIG))
    assert h.configured
    h.request(BASE + [(":path", "/health")])
    return h


def test_paid_by_cookie(browser_host):
    cookie_value = paid_credential().split(" ", 1)[1]
    request, calls = browser_host.request(BASE + HTTPS + [(":path", "/v1/x"), ("cookie", f"l402-weather={cookie_value}")])
    assert request.continued and not request.callouts
    assert calls == BROWSER_PAID_BY_COOKIE, calls
    assert "cookie" not in dict(request.headers)
    request, calls = browser_host.request(BASE + HTTPS + [(":path", "/v1/x"),
                                                          ("cookie", f"a=1; l402-weather={cookie_value}")])
    assert calls == BROWSER_PAID_OTHER_COOKIES, calls
    assert dict(request.headers)["cookie"] == "a=1"


def test_a_secure_cookie_over_plain_http_is_not_read(browser_host):
    cookie_value = paid_credential().split(" ", 1)[1]
    request, _ = browser_host.request(BASE + [(":scheme", "http"), (":path", "/v1/x"),
                                              ("cookie", f"l402-weather={cookie_value}")])
    assert not request.continued and len(request.callouts) == 1, "challenged, never passed"


def test_no_secure_cookie_is_set_over_plain_http(browser_host):
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "api.example.com"),
               (":path", "/v1/x?l402-redeem"), ("sec-fetch-site", "same-origin"), ("authorization", paid_credential())]
    request, _ = browser_host.request(headers)
    assert request.response is not None and request.response[0] == 403
    assert json.loads(request.response[2])["reason"] == "insecure_origin"
    assert not any(k == "set-cookie" for k, _ in request.response[1])


def test_paid_by_authorization_on_a_cookie_route(browser_host):
    request, calls = browser_host.request(BASE + [(":path", "/v1/x"), ("authorization", paid_credential())])
    assert request.continued and calls == BROWSER_PAID, calls


def test_challenge_on_a_cookie_route(browser_host):
    request, calls = browser_host.request(BASE + [(":path", "/v1/x")])
    assert not request.continued and len(request.callouts) == 1
    assert calls == BROWSER_CHALLENGE, calls


def test_redemption(browser_host):
    headers = [(":method", "POST"), (":scheme", "https"), (":authority", "api.example.com"),
               (":path", "/v1/x?l402-redeem"), ("sec-fetch-site", "same-origin"), ("authorization", paid_credential())]
    request, calls = browser_host.request(headers)
    assert request.response is not None and request.response[0] == 303 and not request.callouts
    assert calls == REDEMPTION, calls


# -- a metered route (`metered`) ----------------------------------------------------------------------

METERED_CONFIG = {**CONFIG, "routes": [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/llm/"}, "service": "llm", "price_sat": 100, "lifetime_s": 3600,
     "metered": {"reserve_msat": 20000, "max_cost_msat": 50000}},
]}
SHARED = ["proxy_get_shared_data", "proxy_set_shared_data"]
# The paid path's calls, the reservation (a read and a compare-and-swap of the balance in shared
# data), the reserved amount and the balance for the upstream, and a client's copy of the cost header
# removed (an upstream that echoes headers must not return it); on the answer, the cost header read
# and removed, the charge (a read and a compare-and-swap) and the client's balance set.
HANDED_METERED = [REMOVE] + [SET] * 5 + [REMOVE]
METERED_PAID = [READ] * 3 + [TIME] + SHARED + HANDED_METERED + [READ, REMOVE] + SHARED + [SET]
# No cost reported: the status (and gRPC's) decide, and whether trailers may bring the cost.
METERED_NO_COST = [READ] * 3 + [TIME] + SHARED + HANDED_METERED + [READ] * 5 + SHARED + [SET]


def metered_credential(h: Host) -> str:
    """A bundle bought as a client buys one: the challenge creates its balance (under its token id)."""
    before = set(h.shared)
    h.request(BASE + [(":path", "/llm/chat")])
    (key,) = [k for k in set(h.shared) - before if k.startswith("l402.balance.")]
    preimage = secrets.token_bytes(32)
    ident = identifier(hashlib.sha256(preimage).digest(), bytes.fromhex(key.rsplit(".", 1)[1]))
    mac, _ = py_mint(SECRET, ["services=llm:0"], preimage=preimage, ident=ident)
    return credential(mac, preimage)


def test_metered_paid_request(wasm):
    h = Host(str(wasm), json.dumps(METERED_CONFIG))
    h.request(BASE + [(":path", "/health")])
    auth = metered_credential(h)
    request, calls = h.request(BASE + [(":path", "/llm/chat"), ("authorization", auth)],
                               response=[(":status", "200"), ("x-l402-cost-msat", "7000")])
    assert request.continued and not request.callouts
    assert calls == METERED_PAID, calls
    sent = dict(request.headers)
    assert (sent["x-l402-reserved-msat"], sent["x-l402-balance-msat"]) == ("20000", "80000")
    answered = dict(request.response_headers)
    assert "x-l402-cost-msat" not in answered and answered["x-l402-balance-msat"] == "93000"
    request, calls = h.request(BASE + [(":path", "/llm/chat"), ("authorization", auth)])
    assert calls == METERED_NO_COST, calls
    assert dict(request.response_headers)["x-l402-balance-msat"] == "73000", "no cost: the reservation"
    # A bundle this gateway never sold (or sold before it restarted) is never filled from nothing.
    preimage = secrets.token_bytes(32)
    unsold = credential(py_mint(SECRET, ["services=llm:0"], preimage=preimage)[0], preimage)
    request, _ = h.request(BASE + [(":path", "/llm/chat"), ("authorization", unsold)])
    assert not request.continued and len(request.callouts) == 1, "a fresh challenge, not a fresh balance"
