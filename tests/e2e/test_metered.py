"""Metered routes in a real Envoy (two workers) with invoices from the real LNbits: a bundle bought
through a 402 and drawn down by the cost the upstream reports in `x-l402-cost-msat` (a response
header, an HTTP/1.1 trailer, or gRPC trailing metadata), with the balance reported to the upstream
before each request and to the client after it, exactly. A 5xx or no answer without a cost charges
nothing, a malformed or missing cost charges the reservation, a cost is capped at `max_cost_msat`
and at what the balance holds, a client that hangs up mid-stream pays the reservation, an exhausted
bundle is refused with a fresh challenge (`balance_exhausted`) and a new bundle opens the route
again, and a restart does not refill it. gRPC server
errors are charged like 5xx. The per-service paid value is what was charged. Every invalid `metered`
configuration is refused at load. Attacks (forged metering headers, an exhausted token reused,
forged top-ups) neither change a balance nor reach the upstream.

The upstreams are metered_support's LLM-like HTTP server and its gRPC streaming server; their
records of what they received are the ground truth for what passed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import bolt11
import grpc
import pytest

from attacks import b64, credential as py_credential, extend, py_mint, raw_request, split
from harness import Envoy, free_port, http
from metered_support import (
    COST_HEADER, GRPC_METHOD, MSAT_PER_TOKEN, GrpcLlm, LlmUpstream, grpc_request, llm, raw_get, wait_until,
)
from test_filter_config import FIELD_LINE, demo_env, demo_vars, mutated, refused, run_to_exit
from test_filter_support import (
    Backend, Gateway, assert_challenge, challenge_parts, inspect, new_secret, token_id_of,
)
from test_grpc import challenge_of as grpc_challenge_of

BUNDLE_MSAT = 100_000    # llm: price_sat 100
RESERVE = 20_000
MAX_COST = 50_000
EMBED_MSAT = 50_000      # embed: price_sat 50, reserve 5000, max = reserve, its own cost header
EMBED_RESERVE = 5_000
EMBED_COST_HEADER = "x-usage-msat"
BALANCE = "x-l402-balance-msat"
RESERVED = "x-l402-reserved-msat"

ROUTES: list[dict[str, Any]] = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/chat"}, "service": "llm", "price_sat": 100, "lifetime_s": 3600,
     "metered": {"reserve_msat": RESERVE, "max_cost_msat": MAX_COST, "cost_header": COST_HEADER}},
    {"match": {"path_prefix": "/v1/embed"}, "service": "embed", "price_sat": 50, "lifetime_s": 3600,
     "metered": {"reserve_msat": EMBED_RESERVE, "cost_header": EMBED_COST_HEADER}},
    {"match": {"path_prefix": "/l402.test.Llm/"}, "service": "grpcllm", "price_sat": 100, "lifetime_s": 3600,
     "metered": {"reserve_msat": RESERVE, "max_cost_msat": MAX_COST}},
]


# -- the gateway ---------------------------------------------------------------------------------

def metered_envoy(grpc_port: int, dead_port: int) -> Callable[[str], str]:
    """envoy/demo.yaml edited for these tests: the listener speaks HTTP/1.1 and h2c (gRPC), HTTP/1.1
    trailers pass both ways, `/l402.test.Llm/` goes to the gRPC server over HTTP/2 and
    `/v1/chat/dead` to a port nothing listens on (Envoy answers 503 itself)."""
    def edit(template: str) -> str:
        stat = "          stat_prefix: api\n"
        assert stat in template
        template = template.replace(stat, stat + "          codec_type: AUTO\n"
                                    "          http_protocol_options: { enable_trailers: true }\n", 1)
        route = '              - match: { prefix: "/" }\n                route: { cluster: api }\n'
        assert route in template
        template = template.replace(route, (
            '              - match: { prefix: "/l402.test.Llm/" }\n                route: { cluster: grpc }\n'
            '              - match: { prefix: "/v1/chat/dead" }\n                route: { cluster: dead }\n') + route, 1)
        api = "  - name: api\n    type: STATIC\n    connect_timeout: 1s\n"
        assert api in template
        template = template.replace(api, api + (
            "    typed_extension_protocol_options:\n"
            "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
            '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
            "        explicit_http_config: { http_protocol_options: { enable_trailers: true } }\n"), 1)
        extra = ""
        for name, port, h2 in (("grpc", grpc_port, True), ("dead", dead_port, False)):
            extra += (f"  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n")
            if h2:
                extra += ("    typed_extension_protocol_options:\n"
                          "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
                          '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
                          "        explicit_http_config: { http2_protocol_options: {} }\n")
            extra += (f"    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n"
                      f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n")
        return template.replace("  clusters:\n", "  clusters:\n" + extra, 1)
    return edit


class MeteredGateway(Gateway):
    """test_filter_support's Gateway with two Envoy workers: one gateway's balances must be exact
    across its workers."""

    def start(self, secrets: str | None = None) -> "MeteredGateway":
        self.secret = secrets or self.secret
        self.envoy = Envoy(self.template, vars=self.vars, env=self.backend.env(self.secret), concurrency=2).start()
        return self


@pytest.fixture(scope="module")
def grpc_llm() -> Iterator[GrpcLlm]:
    with GrpcLlm() as server:
        yield server


@pytest.fixture(scope="module")
def gw(lnbits, llm, grpc_llm, wasm) -> Iterator[MeteredGateway]:
    backend = Backend("lnbits", lnbits)
    gateway = MeteredGateway(backend, llm.port, ROUTES, template_edit=metered_envoy(grpc_llm.port, free_port()))
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def up(llm: LlmUpstream, grpc_llm: GrpcLlm) -> LlmUpstream:
    llm.clear()
    grpc_llm.clear()
    return llm


_ids = itertools.count(1)


def rid(label: str = "r") -> str:
    return f"{label}{next(_ids)}"


def chat(gw: Gateway, token: str | None, request_id: str, path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None, **query: Any):
    """One request to a metered route; the upstream answers as ``query`` says (metered_support)."""
    h = dict(headers or {})
    return gw.request(f"{path}?{urlencode({'id': request_id, **query})}", token, headers=h)


def balance_of(r) -> int:
    """The one `x-l402-balance-msat` header of a response, as a number."""
    values = r.header_values(BALANCE)
    assert len(values) == 1, (values, r.status, r.text[:200])
    assert values[0].isdigit(), values
    return int(values[0])


def assert_settled(r, balance: int, status: int = 200) -> None:
    """The client got the upstream's answer with the remaining balance, and no cost header."""
    assert r.status == status, (r.status, r.text[:300])
    assert not r.header_values(COST_HEADER) and not r.header_values(EMBED_COST_HEADER), r.header_list
    assert balance_of(r) == balance, (balance_of(r), balance)


def assert_upstream_saw(up: LlmUpstream, request_id: str, token: str, balance: int, reserved: int = RESERVE,
                        service: str = "llm", price: int = BUNDLE_MSAT) -> None:
    """The request reached the upstream once, without the credential, with one copy of each
    metering header: the token id, the service, the bundle's price, the reservation and the balance
    left after it."""
    seen = up.by_id(request_id)
    assert "authorization" not in seen.headers
    for name, value in (("x-l402-token-id", token_id_of(token)), ("x-l402-service", service),
                        ("x-l402-price-msat", str(price)), (RESERVED, str(reserved)), (BALANCE, str(balance))):
        assert seen.copies(name) == [value], (name, seen.header_list)


def buy(gw: Gateway, path: str = "/v1/chat/completions") -> str:
    return gw.buy(path)


def next_balance(gw: Gateway, up: LlmUpstream, token: str, path: str = "/v1/chat/completions",
                 reserved: int = RESERVE) -> int:
    """The balance before a probe request, read from what the upstream is told (the reservation
    added back); the probe reports a zero cost, so it charges nothing."""
    request_id = rid("probe")
    r = chat(gw, token, request_id, path, tokens=0) if path.startswith("/v1/chat") else \
        chat(gw, token, request_id, path, cost="0", header=EMBED_COST_HEADER)
    assert r.status == 200, (r.status, r.text[:300])
    seen = up.by_id(request_id)
    assert seen.copies(RESERVED) == [str(reserved)], seen.header_list
    before = int(seen.copies(BALANCE)[0]) + reserved
    assert balance_of(r) == before, "a zero cost charges nothing"
    return before


# -- the pieces, standalone (no Envoy) ------------------------------------------------------------

def test_the_llm_upstream_answers_as_told():
    """metered_support's upstream: a cost from tokens, a raw cost, none, a 5xx with a cost, a
    trailer, a stream cut off by the client (recorded), a reset, and a held request."""
    up = LlmUpstream().start()
    try:
        base = f"http://127.0.0.1:{up.port}"
        r = http("GET", f"{base}/v1/chat?id=a&tokens=123", headers={RESERVED: "1"})
        assert r.status == 200 and r.headers[COST_HEADER] == str(123 * MSAT_PER_TOKEN)
        assert up.by_id("a").copies(RESERVED) == ["1"]
        assert http("GET", f"{base}/x?id=b&cost=12abc").headers[COST_HEADER] == "12abc"
        assert COST_HEADER not in http("GET", f"{base}/x?id=c").headers
        r = http("GET", f"{base}/x?id=d&status=502&tokens=7&header=x-usage-msat")
        assert r.status == 502 and r.headers["x-usage-msat"] == "70" and COST_HEADER not in r.headers

        t = raw_get(up.port, "/x?id=e&where=trailer&tokens=5&chunks=3")
        assert t.complete and len(t.chunks) == 3 and t.header("trailer") == COST_HEADER
        assert t.header(COST_HEADER) is None and t.trailer(COST_HEADER) == "50"

        cut = raw_get(up.port, "/x?id=f&where=trailer&tokens=5&chunks=50&delay=0.05", hang_up_after=1)
        assert not cut.complete and len(cut.chunks) == 1
        assert wait_until(lambda: up.by_id("f").finished is False), "the upstream saw the hang-up"

        with pytest.raises(OSError):
            http("GET", f"{base}/x?id=g&reset=1")
        assert up.by_id("g").status is None

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(http, "GET", f"{base}/x?id=h&hold=H&tokens=1")
            assert wait_until(lambda: up.held("H"))
            assert not held.done()
            up.release("H")
            assert held.result(timeout=10).status == 200
    finally:
        up.stop()


def test_the_grpc_upstream_streams_then_reports_its_cost():
    """metered_support's gRPC server: n messages, the cost in trailing or initial metadata, and a
    cancelled call recorded as cancelled."""
    server = GrpcLlm().start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stream = channel.unary_stream(GRPC_METHOD)
        call = stream(grpc_request(n=4, cost=1234), metadata=[(RESERVED, "9")], timeout=10)
        assert list(call) == [f"token-{i}".encode() for i in range(4)]
        assert dict(call.trailing_metadata())[COST_HEADER] == "1234"
        assert server.calls[0].metadata[RESERVED] == "9" and server.calls[0].sent == 4
        call = stream(grpc_request(n=2, cost=77, where="header"), timeout=10)
        assert len(list(call)) == 2 and dict(call.initial_metadata())[COST_HEADER] == "77"
        assert COST_HEADER not in dict(call.trailing_metadata())
        call = stream(grpc_request(n=100, cost=5, delay=0.05), timeout=10)
        assert next(call) == b"token-0"
        call.cancel()
        assert wait_until(lambda: server.calls[2].done.is_set() and server.calls[2].cancelled)
        assert server.calls[2].sent < 100
    finally:
        channel.close()
        server.stop()


# -- buying a bundle ------------------------------------------------------------------------------

def test_a_bundle_is_bought_through_a_402(gw, up, lnbits):
    """The challenge invoices the bundle's price; the token carries it as `llm_price_msat`."""
    r = gw.request("/v1/chat/completions")
    body = assert_challenge(r, "payment_required", "llm")
    assert body["price_msat"] == BUNDLE_MSAT
    mac, invoice = challenge_parts(r)
    assert bolt11.decode(invoice).amount_msat == BUNDLE_MSAT
    token = f"L402 {mac}:{gw.backend.pay(invoice)}"
    request_id = rid()
    r = chat(gw, token, request_id, tokens=100)
    assert_settled(r, BUNDLE_MSAT - 100 * MSAT_PER_TOKEN)
    assert_upstream_saw(up, request_id, token, BUNDLE_MSAT - RESERVE)
    assert [s.id for s in up.requests()] == [request_id]
    assert f"llm_price_msat={BUNDLE_MSAT}" in inspect(mac)["caveats"]


def test_the_balance_after_each_request_is_exact(gw, up):
    """Each request reserves 20000 (the upstream is told the balance after the reservation), then
    is charged what the upstream reports; the client is told the balance left."""
    token = buy(gw)
    balance = BUNDLE_MSAT
    for tokens in (1234, 0, 2000, 3500, 1, 999):
        request_id = rid()
        r = chat(gw, token, request_id, tokens=tokens)
        assert_upstream_saw(up, request_id, token, balance - RESERVE)
        balance -= tokens * MSAT_PER_TOKEN
        assert_settled(r, balance)
    assert balance == BUNDLE_MSAT - 77_340
    assert len(up.requests()) == 6


def test_a_missing_cost_charges_the_reservation(gw, up):
    token = buy(gw)
    r = chat(gw, token, rid())
    assert r.status == 200
    assert next_balance(gw, up, token) == BUNDLE_MSAT - RESERVE


# -- exhaustion and top-up ------------------------------------------------------------------------

def test_an_exhausted_bundle_gets_a_fresh_challenge_and_a_new_bundle_opens_the_route(gw, up):
    token = buy(gw)
    r1 = chat(gw, token, rid(), tokens=4500)
    assert_settled(r1, 55_000)
    r2 = chat(gw, token, rid(), tokens=4500)
    assert_settled(r2, 10_000)
    assert len(up.requests()) == 2

    # 10000 left, less than the reservation: refused before the upstream, with a fresh challenge.
    refused_id = rid()
    r = chat(gw, token, refused_id, tokens=1)
    body = assert_challenge(r, "balance_exhausted", "llm")
    assert body["price_msat"] == BUNDLE_MSAT
    assert (body["balance_msat"], body["reserve_msat"]) == (10_000, RESERVE), body  # the README's body fields
    mac, invoice = challenge_parts(r)
    assert inspect(mac)["identifier"]["token_id"] != token_id_of(token), "a new bundle, a new token"
    assert bolt11.decode(invoice).amount_msat == BUNDLE_MSAT
    assert refused_id not in [s.id for s in up.requests()]

    # The top-up: pay the new challenge; the new token has its own full balance.
    topped = f"L402 {mac}:{gw.backend.pay(invoice)}"
    request_id = rid()
    assert_settled(chat(gw, topped, request_id, tokens=300), BUNDLE_MSAT - 3_000)
    assert_upstream_saw(up, request_id, topped, BUNDLE_MSAT - RESERVE)
    # The old token stays exhausted, its balance untouched.
    again = chat(gw, token, rid(), tokens=1)
    assert_challenge(again, "balance_exhausted", "llm")
    assert len(up.requests()) == 3
    assert balance_of(r) == 10_000 and balance_of(again) == 10_000, "the old token's remaining balance"


def test_balance_exhausted_is_counted_as_a_refusal(gw, up):
    token = buy(gw)
    assert_settled(chat(gw, token, rid(), tokens=5000), 50_000)
    assert_settled(chat(gw, token, rid(), tokens=5000), 0)

    def exhausted() -> float:  # the refusal counter of the reason (published once a second)
        return sum(v for k, v in gw.counters().items() if k.endswith("balance_exhausted"))

    before = exhausted()
    assert_challenge(chat(gw, token, rid()), "balance_exhausted", "llm")
    assert wait_until(lambda: exhausted() >= before + 1, 5), gw.counters()


def test_the_per_service_value_is_what_was_charged(lnbits, llm, grpc_llm, wasm):
    """On a fresh gateway: `l402_service_paid_msat{service="llm"}` is the sum of the charges (capped,
    nothing for a 5xx), not the bundle's price per request; `l402_service_paid_requests` counts the
    requests that passed."""
    llm.clear()
    gateway = Gateway(Backend("lnbits", lnbits), llm.port, ROUTES[:2])
    try:
        token = gateway.buy("/v1/chat/x")
        assert_settled(chat(gateway, token, rid(), path="/v1/chat/x", tokens=1_234), BUNDLE_MSAT - 12_340)
        assert chat(gateway, token, rid(), path="/v1/chat/x", status=500).status == 500
        assert_settled(chat(gateway, token, rid(), path="/v1/chat/x", tokens=9_000), BUNDLE_MSAT - 12_340 - MAX_COST)

        def llm_counters() -> tuple[float | None, float | None]:
            c = gateway.counters()
            return c.get('l402_service_paid_requests{service="llm"}'), c.get('l402_service_paid_msat{service="llm"}')

        assert wait_until(lambda: llm_counters() == (3, 12_340 + MAX_COST), 5), llm_counters()
    finally:
        gateway.stop()


# -- what is charged ------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["status=500", "status=502", "status=503", "reset", "dead"])
def test_a_failure_without_a_cost_charges_nothing(gw, up, how):
    """A 5xx from the upstream, a connection reset before any answer, or Envoy's own 503 for a
    dead upstream, with no cost reported: the reservation is released whole."""
    token = buy(gw)
    assert_settled(chat(gw, token, rid(), tokens=100), BUNDLE_MSAT - 1_000)
    if how == "dead":
        r = chat(gw, token, rid(), path="/v1/chat/dead/completions")
        assert r.status == 503, (r.status, r.text)
    elif how == "reset":
        request_id = rid()
        r = chat(gw, token, request_id, reset=1)
        assert r.status == 503, (r.status, r.text)
        assert up.by_id(request_id).status is None
    else:
        status = int(how.split("=")[1])
        r = chat(gw, token, rid(), status=status)
        assert r.status == status and r.json()["status"] == status, (r.status, r.text)
    assert not r.header_values(COST_HEADER)
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 1_000


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_with_a_reported_cost_charges_it(gw, up, status):
    token = buy(gw)
    r = chat(gw, token, rid(), status=status, tokens=700)
    assert_settled(r, BUNDLE_MSAT - 7_000, status=status)
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 7_000


@pytest.mark.parametrize("cost", ["12abc", "-5", "1.5", "+7", "0x10", "1e3", "", "12 13"])
def test_a_malformed_cost_charges_the_reservation(gw, up, cost):
    token = buy(gw)
    r = chat(gw, token, rid(), cost=cost)
    assert r.status == 200, (r.status, r.text)
    assert not r.header_values(COST_HEADER), "the cost header, even malformed, never reaches the client"
    if r.header_values(BALANCE):
        assert balance_of(r) == BUNDLE_MSAT - RESERVE
    assert next_balance(gw, up, token) == BUNDLE_MSAT - RESERVE


def test_a_cost_is_capped_at_max_cost_and_at_what_the_balance_holds(gw, up):
    token = buy(gw)
    assert_settled(chat(gw, token, rid(), tokens=9_000), BUNDLE_MSAT - MAX_COST)      # 90000 → 50000
    assert_settled(chat(gw, token, rid(), tokens=3_000), 20_000)
    # 20000 left = the reservation, nothing more: a reported 50000 is charged 20000.
    request_id = rid()
    assert_settled(chat(gw, token, request_id, tokens=5_000), 0)
    assert_upstream_saw(up, request_id, token, 0)
    r = chat(gw, token, rid())
    assert_challenge(r, "balance_exhausted", "llm")
    assert len(up.requests()) == 3
    assert balance_of(r) == 0


def test_a_route_with_its_own_cost_header_and_the_default_cap(gw, up):
    """`embed`: the cost in `x-usage-msat` (removed from the answer), max_cost_msat = reserve_msat
    by default; the default-named header is no cost header there."""
    token = buy(gw, "/v1/embed/x")
    request_id = rid()
    r = chat(gw, token, request_id, path="/v1/embed/x", cost="1200", header=EMBED_COST_HEADER)
    assert_settled(r, EMBED_MSAT - 1_200)
    assert_upstream_saw(up, request_id, token, EMBED_MSAT - EMBED_RESERVE, reserved=EMBED_RESERVE, service="embed",
                        price=EMBED_MSAT)
    assert_settled(chat(gw, token, rid(), path="/v1/embed/x", cost="9000", header=EMBED_COST_HEADER),
                   EMBED_MSAT - 1_200 - EMBED_RESERVE)
    # A cost in x-l402-cost-msat is not this route's cost header: the reservation is charged.
    chat(gw, token, rid(), path="/v1/embed/x", tokens=1)
    assert next_balance(gw, up, token, "/v1/embed/x", EMBED_RESERVE) == EMBED_MSAT - 1_200 - 2 * EMBED_RESERVE


def test_a_token_of_one_metered_service_does_not_open_another(gw, up):
    token = buy(gw, "/v1/embed/x")
    r = chat(gw, token, rid(), tokens=1)
    body = assert_challenge(r, "wrong_service", "llm")
    assert body["service"] == "llm"
    assert up.requests() == []
    assert next_balance(gw, up, token, "/v1/embed/x", EMBED_RESERVE) == EMBED_MSAT


# -- trailers and streams (HTTP/1.1) --------------------------------------------------------------

def test_a_cost_in_an_http1_trailer_is_settled_from_the_trailers(gw, up):
    """A chunked answer announcing `Trailer: x-l402-cost-msat`: the cost trailer is removed and the
    client gets the balance as a trailer."""
    token = buy(gw)
    request_id = rid()
    r = raw_get(gw.port, f"/v1/chat/completions?{urlencode({'id': request_id, 'where': 'trailer', 'tokens': 450, 'chunks': 3})}",
                {"Authorization": token})
    assert r.status == 200 and r.complete and len(r.chunks) >= 1, r
    assert b'"chunk": 2' in r.body
    assert r.header(COST_HEADER) is None and r.trailer(COST_HEADER) is None, (r.headers, r.trailers)
    assert r.trailer(BALANCE) == str(BUNDLE_MSAT - 4_500), r.trailers
    assert_upstream_saw(up, request_id, token, BUNDLE_MSAT - RESERVE)
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 4_500


def test_an_unannounced_cost_trailer_never_reaches_the_client(gw, up):
    """Without a `Trailer` header the answer is settled at its headers (the reservation: no cost
    there); a cost trailer that comes anyway is still the gateway's, never the client's."""
    token = buy(gw)
    query = {"id": rid(), "where": "trailer", "announce": 0, "tokens": 450, "chunks": 2}
    r = raw_get(gw.port, f"/v1/chat/completions?{urlencode(query)}", {"Authorization": token})
    assert r.status == 200 and r.complete and r.header("trailer") is None
    assert next_balance(gw, up, token) == BUNDLE_MSAT - RESERVE
    assert r.trailer(COST_HEADER) is None, r.trailers


def test_a_stream_with_its_cost_in_the_headers_is_charged_at_once(gw, up):
    """An event stream whose headers carry the cost: the balance header comes with the headers."""
    token = buy(gw)
    r = raw_get(gw.port, f"/v1/chat/completions?{urlencode({'id': rid(), 'tokens': 120, 'chunks': 4})}",
                {"Authorization": token})
    assert r.status == 200 and r.complete and len(r.chunks) >= 1
    assert r.header(COST_HEADER) is None
    assert r.header(BALANCE) == str(BUNDLE_MSAT - 1_200)
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 1_200


def test_a_client_hanging_up_mid_stream_is_charged_the_reservation(gw, up):
    """The stream would report 3000 in its trailer, read to the end; a client that reads the first
    chunk and hangs up pays the 20000 reserved instead."""
    token = buy(gw)
    query = {"where": "trailer", "tokens": 300, "chunks": 40, "delay": 0.05}
    whole = raw_get(gw.port, f"/v1/chat/completions?{urlencode({'id': rid(), **query, 'chunks': 3})}",
                    {"Authorization": token})
    assert whole.complete and whole.trailer(BALANCE) == str(BUNDLE_MSAT - 3_000), whole.trailers

    request_id = rid("cut")
    cut = raw_get(gw.port, f"/v1/chat/completions?{urlencode({'id': request_id, **query})}", {"Authorization": token},
                  hang_up_after=1)
    assert cut.status == 200 and not cut.complete
    # Envoy closes the upstream's connection once it sees the client gone: the upstream's write fails.
    assert wait_until(lambda: up.by_id(request_id).finished is False, 15), up.by_id(request_id)
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 3_000 - RESERVE


# -- gRPC: the cost in trailing metadata ----------------------------------------------------------

@pytest.fixture
def grpc_stream(gw) -> Iterator[Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{gw.port}")
    try:
        yield channel.unary_stream(GRPC_METHOD)
    finally:
        channel.close()


def grpc_buy(gw: Gateway, stream: Any) -> str:
    """An unpaid call fails with INTERNAL and the challenge in its trailing metadata; pay it."""
    with pytest.raises(grpc.RpcError) as info:
        list(stream(grpc_request(), timeout=10))
    assert info.value.code() == grpc.StatusCode.INTERNAL, info.value
    mac, invoice = grpc_challenge_of(info.value)
    assert bolt11.decode(invoice).amount_msat == BUNDLE_MSAT
    return f"L402 {mac}:{gw.backend.pay(invoice)}"


def test_grpc_stream_settled_from_trailing_metadata(gw, up, grpc_llm, grpc_stream):
    """Five messages, then the cost in trailing metadata: balance after = before - cost, the balance
    in the trailers, the cost trailer removed; the server was told the reservation and the balance."""
    token = grpc_buy(gw, grpc_stream)
    balance = BUNDLE_MSAT
    for cost in (15_000, 2_500, 0):
        call = grpc_stream(grpc_request(n=5, cost=cost), metadata=[("authorization", token)], timeout=10)
        assert list(call) == [f"token-{i}".encode() for i in range(5)]
        md = grpc_llm.calls[-1].metadata
        assert md[RESERVED] == str(RESERVE) and md[BALANCE] == str(balance - RESERVE), md
        assert md["x-l402-token-id"] == token_id_of(token) and "authorization" not in md
        balance -= cost
        trailers = dict(call.trailing_metadata())
        assert COST_HEADER not in trailers, trailers
        assert trailers.get(BALANCE) == str(balance), trailers
        assert call.code() == grpc.StatusCode.OK
    assert len(grpc_llm.calls) == 3 and up.requests() == []


def test_grpc_cost_in_initial_metadata_is_charged_at_once(gw, grpc_llm, grpc_stream):
    token = grpc_buy(gw, grpc_stream)
    call = grpc_stream(grpc_request(n=2, cost=4_000, where="header"), metadata=[("authorization", token)], timeout=10)
    assert len(list(call)) == 2
    initial = dict(call.initial_metadata())
    assert COST_HEADER not in initial and initial.get(BALANCE) == str(BUNDLE_MSAT - 4_000), initial
    call = grpc_stream(grpc_request(n=1, cost=0), metadata=[("authorization", token)], timeout=10)
    assert len(list(call)) == 1
    assert grpc_llm.calls[-1].metadata[BALANCE] == str(BUNDLE_MSAT - 4_000 - RESERVE)


def test_grpc_stream_without_a_cost_charges_the_reservation(gw, grpc_llm, grpc_stream):
    token = grpc_buy(gw, grpc_stream)
    assert len(list(grpc_stream(grpc_request(n=2, where="none"), metadata=[("authorization", token)], timeout=10))) == 2
    call = grpc_stream(grpc_request(n=1, cost=0), metadata=[("authorization", token)], timeout=10)
    assert len(list(call)) == 1
    assert grpc_llm.calls[-1].metadata[BALANCE] == str(BUNDLE_MSAT - RESERVE - RESERVE)
    assert dict(call.trailing_metadata()).get(BALANCE) == str(BUNDLE_MSAT - RESERVE)


@pytest.mark.parametrize("code,n,cost,charged", [
    ("UNAVAILABLE", 3, None, 0), ("INTERNAL", 0, None, 0), ("UNKNOWN", 2, None, 0),
    ("NOT_FOUND", 0, None, RESERVE), ("INTERNAL", 2, 3_000, 3_000),
], ids=["unavailable_after_messages", "internal_trailers_only", "unknown", "not_found_is_the_clients",
        "internal_with_a_cost"])
def test_grpc_errors_are_charged_like_http(gw, grpc_llm, grpc_stream, code, n, cost, charged):
    """gRPC errors come as HTTP 200: a server error in grpc-status (UNKNOWN, INTERNAL, UNAVAILABLE…)
    without a cost charges nothing, like a 5xx; a client error charges the reservation; a reported
    cost is charged whatever the status."""
    token = grpc_buy(gw, grpc_stream)
    call = grpc_stream(grpc_request(n=n, cost=cost, code=code), metadata=[("authorization", token)], timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == getattr(grpc.StatusCode, code), info.value
    assert COST_HEADER not in dict(info.value.trailing_metadata() or ())
    call = grpc_stream(grpc_request(n=1, cost=0), metadata=[("authorization", token)], timeout=10)
    assert len(list(call)) == 1
    assert grpc_llm.calls[-1].metadata[BALANCE] == str(BUNDLE_MSAT - charged - RESERVE)


def test_grpc_client_cancelling_mid_stream_is_charged_the_reservation(gw, grpc_llm, grpc_stream):
    """The stream would report 1000 in its trailers; the client reads one message and cancels: the
    next call (same connection) is told the reservation was charged."""
    token = grpc_buy(gw, grpc_stream)
    call = grpc_stream(grpc_request(n=200, cost=1_000, delay=0.05), metadata=[("authorization", token)], timeout=30)
    assert next(call) == b"token-0"
    call.cancel()
    assert wait_until(lambda: grpc_llm.calls[-1].done.is_set() and grpc_llm.calls[-1].cancelled, 15)
    assert grpc_llm.calls[-1].sent < 200
    call = grpc_stream(grpc_request(n=1, cost=0), metadata=[("authorization", token)], timeout=10)
    assert len(list(call)) == 1
    assert grpc_llm.calls[-1].metadata[BALANCE] == str(BUNDLE_MSAT - RESERVE - RESERVE)
    assert dict(call.trailing_metadata()).get(BALANCE) == str(BUNDLE_MSAT - RESERVE)


# -- concurrency on one gateway (two workers) -----------------------------------------------------

def test_concurrent_requests_never_reserve_more_than_the_balance(gw, up):
    """Twelve requests at once on a 100000 bundle, held at the upstream: exactly five reservations
    of 20000 pass, seven are refused with balance 0; released, each is charged its 1000."""
    token = buy(gw)
    gate = rid("gate")
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(chat, gw, token, rid("c"), hold=gate, tokens=100) for _ in range(12)]
        settled = wait_until(lambda: len(up.held(gate)) == 5 and sum(f.done() for f in futures) == 7, 20)
        held, done = len(up.held(gate)), sum(f.done() for f in futures)
        up.release(gate)
        answers = [f.result(timeout=30) for f in futures]
    assert settled, (held, done)
    statuses = sorted(r.status for r in answers)
    assert statuses == [200] * 5 + [402] * 7, statuses
    for r in answers:
        if r.status == 402:
            assert_challenge(r, "balance_exhausted", "llm")
        else:
            assert not r.header_values(COST_HEADER)
    assert sorted(s.copies(BALANCE)[0] for s in up.requests()) == ["0", "20000", "40000", "60000", "80000"]
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 5 * 1_000
    assert [balance_of(r) for r in answers if r.status == 402] == [0] * 7


# -- attacks --------------------------------------------------------------------------------------

FORGED_METERING = [(RESERVED, "0"), (BALANCE, "999999999"), ("X-L402-Balance-Msat", "1"), (RESERVED, "-1"),
                   (COST_HEADER, "0")]


def test_client_metering_headers_never_reach_the_upstream_nor_change_the_balance(gw, up):
    """A client's own reservation and balance headers are replaced by the gateway's (one copy each);
    a client's cost header charges nothing less: the upstream's report decides."""
    token = buy(gw)
    request_id = rid()
    status, hdrs, _ = raw_request(gw.port, "GET", f"/v1/chat/completions?id={request_id}&tokens=2500",
                                  [("Authorization", token), *FORGED_METERING])
    assert status == 200
    assert_upstream_saw(up, request_id, token, BUNDLE_MSAT - RESERVE)
    assert [v for k, v in hdrs if k == BALANCE] == [str(BUNDLE_MSAT - 25_000)]
    # A request the upstream reports no cost for: the client's "0" does not stand in for one.
    request_id = rid()
    status, _, _ = raw_request(gw.port, "GET", f"/v1/chat/completions?id={request_id}",
                               [("Authorization", token), *FORGED_METERING])
    assert status == 200
    assert_upstream_saw(up, request_id, token, BUNDLE_MSAT - 25_000 - RESERVE)
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 25_000 - RESERVE
    # On a free route they are removed too.
    status, _, _ = raw_request(gw.port, "GET", "/health?id=free", FORGED_METERING)
    assert status == 200
    seen = up.by_id("free")
    assert not seen.copies(RESERVED) and not seen.copies(BALANCE), seen.header_list


def test_an_exhausted_token_reused_never_reaches_the_upstream(gw, up):
    token = buy(gw)
    assert_settled(chat(gw, token, rid(), tokens=5_000), 50_000)
    assert_settled(chat(gw, token, rid(), tokens=3_500), 15_000)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(gw, token, rid("again"), tokens=0), range(8)))
    for r in answers:
        assert_challenge(r, "balance_exhausted", "llm")
    assert len(up.requests()) == 2
    # LSAT spelling, and a holder-appended caveat, of the same token: still exhausted.
    for variant in (token.replace("L402 ", "LSAT ", 1), extend(token, "llm_capabilities=extra")):
        r = chat(gw, variant, rid(), tokens=0)
        assert r.status == 402 and r.json()["reason"] in ("balance_exhausted", "capability_missing"), r.text
    assert len(up.requests()) == 2
    assert [balance_of(r) for r in answers] == [15_000] * 8


def _tampered_price(token: str) -> str:
    """The token's `llm_price_msat=100000` caveat rewritten to 900000 in place (same length); a
    token minted without one gets it appended first (signed), then rewritten."""
    if b"llm_price_msat=100000" not in split(token)[1]:
        token = extend(token, "llm_price_msat=100000")
    scheme, raw, pre = split(token)
    i = raw.find(b"llm_price_msat=100000")
    assert i > 0
    raw = raw[:i] + b"llm_price_msat=900000" + raw[i + len(b"llm_price_msat=100000"):]
    return py_credential(raw, pre, scheme)


def test_forged_top_ups_change_no_balance_and_never_reach_the_upstream(gw, up):
    """A bundle minted with a wrong secret, a tampered price caveat, the victim's token id under
    another key, a wrong preimage, a token of another service: refused, no upstream request, the
    real token's balance unchanged."""
    token = buy(gw)
    assert_settled(chat(gw, token, rid(), tokens=1_000), BUNDLE_MSAT - 10_000)
    other_secret = new_secret()
    victim_id = bytes.fromhex(token_id_of(token))
    _, raw, preimage = split(token)
    forged_same_id, _ = py_mint(other_secret, ["services=llm:0", "llm_price_msat=100000000"], preimage=preimage,
                                ident=b"\0\0" + hashlib.sha256(preimage).digest() + victim_id)
    wrong_secret, wrong_pre = py_mint(other_secret, ["services=llm:0", "llm_price_msat=100000000"])
    other_service = buy(gw, "/v1/embed/x")
    attempts = {
        "wrong_secret": py_credential(wrong_secret, wrong_pre),
        "victim_id_other_key": py_credential(forged_same_id, preimage),
        "tampered_price": _tampered_price(token),
        "wrong_preimage": f"L402 {b64(raw)}:{'00' * 32}",
        "other_service": other_service,
    }
    for name, cred in attempts.items():
        r = chat(gw, cred, rid(name), tokens=0)
        assert r.status == 402, (name, r.status, r.text)
        assert r.json()["reason"] != "balance_exhausted", (name, r.text)
        assert up.requests()[-1].id != name
    assert len(up.requests()) == 1
    assert next_balance(gw, up, token) == BUNDLE_MSAT - 10_000
    assert next_balance(gw, up, other_service, "/v1/embed/x", EMBED_RESERVE) == EMBED_MSAT


def test_an_appended_price_caveat_does_not_raise_the_balance(gw, up):
    """A holder can append caveats; a second `llm_price_msat` one is no top-up: the balance is the
    ledger's, and the price reported upstream is the bundle's."""
    token = buy(gw)
    bigger = extend(token, "llm_price_msat=100000000")
    request_id = rid()
    r = chat(gw, bigger, request_id, tokens=1_000)
    if r.status == 402:  # refusing the widened token is as good
        assert up.requests() == []
    else:
        assert_settled(r, BUNDLE_MSAT - 10_000)
        assert_upstream_saw(up, request_id, token, BUNDLE_MSAT - RESERVE)
    spent = 10_000 if r.status == 200 else 0
    assert next_balance(gw, up, token) == BUNDLE_MSAT - spent


# -- upstream header names ------------------------------------------------------------------------

def test_upstream_header_names_are_configurable(lnbits, llm, grpc_llm, wasm):
    """`upstream_headers.reserved_msat` / `.balance_msat` rename the two headers; a client's copies of
    the new names are removed, and the default names are no longer the filter's."""
    llm.clear()
    backend = Backend("lnbits", lnbits)
    gateway = Gateway(backend, llm.port, ROUTES[:2], upstream_headers={"reserved_msat": "x-res", "balance_msat": "x-bal"})
    try:
        token = gateway.buy("/v1/chat/x")
        request_id = rid()
        r = chat(gateway, token, request_id, path="/v1/chat/x", tokens=10,
                 headers={"x-res": "1", "x-bal": "2"})
        assert r.status == 200
        seen = llm.by_id(request_id)
        assert seen.copies("x-res") == [str(RESERVE)] and seen.copies("x-bal") == [str(BUNDLE_MSAT - RESERVE)]
        assert not seen.copies(RESERVED)
    finally:
        gateway.stop()


# -- the ledger outlives nothing it should not -----------------------------------------------------

def test_a_restart_does_not_refill_a_spent_bundle(lnbits, llm, grpc_llm, wasm):
    """The spec's ledger: the balance is created when the challenge is issued and redemption only
    compare-and-swaps. A token spent to exhaustion, presented to the same gateway restarted (same
    secret, shared data gone), must not find a fresh bundle."""
    llm.clear()
    backend = Backend("lnbits", lnbits)
    gateway = Gateway(backend, llm.port, ROUTES[:2])
    try:
        token = gateway.buy("/v1/chat/x")
        for _ in range(2):
            assert chat(gateway, token, rid(), path="/v1/chat/x", tokens=5_000).status == 200
        assert_challenge(chat(gateway, token, rid(), path="/v1/chat/x"), "balance_exhausted", "llm")
        gateway.restart()
        after_id = rid("after")
        r = chat(gateway, token, after_id, path="/v1/chat/x", tokens=0)
        assert r.status != 200 and after_id not in [s.id for s in llm.requests()], \
            (r.status, r.headers.get(BALANCE), "the spent bundle was full again after the restart")
    finally:
        gateway.stop()


# -- configurations refused at load ---------------------------------------------------------------

METERED_ROUTE = {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600,
                 "metered": {"reserve_msat": 2_000, "max_cost_msat": 5_000}}


def _route(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        route = json_copy(METERED_ROUTE)
        metered = changes.pop("metered", None)
        if metered is not None:
            route["metered"] = metered
        route.update(changes)
        cfg["routes"][1] = route
    return change


def json_copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _free_metered(cfg: dict[str, Any]) -> None:
    cfg["routes"][0]["metered"] = {"reserve_msat": 1}
    cfg["routes"][1] = json_copy(METERED_ROUTE)


def _upstream_headers_clash(cfg: dict[str, Any]) -> None:
    cfg["routes"][1] = json_copy(METERED_ROUTE)
    cfg["upstream_headers"] = {"reserved_msat": "x-meter", "balance_msat": "x-meter"}


def _payment_by_default(cfg: dict[str, Any]) -> None:
    """The route names no schemes; the top-level default offers the Payment scheme."""
    cfg["routes"][1] = json_copy(METERED_ROUTE)
    cfg["schemes"] = ["l402", "payment"]


def _half_metered(cfg: dict[str, Any]) -> None:
    cfg["routes"][1] = json_copy(METERED_ROUTE)
    cfg["routes"].insert(2, {"match": {"path_prefix": "/v2/"}, "service": "weather", "price_sat": 10})


METERED_REFUSALS = [
    ("with_uses", _route(uses=3), r"routes\[1\]\.(metered|uses)"),
    ("with_payment_scheme", _route(schemes=["l402", "payment"]), r"routes\[1\]\.(metered|schemes)"),
    ("payment_only", _route(schemes=["payment"]), r"routes\[1\]\.(metered|schemes)"),
    ("reserve_zero", _route(metered={"reserve_msat": 0}), r"routes\[1\]\.metered\.reserve_msat"),
    ("reserve_missing", _route(metered={"max_cost_msat": 5_000}), r"routes\[1\]\.metered"),
    ("max_below_reserve", _route(metered={"reserve_msat": 2_000, "max_cost_msat": 1_999}),
     r"routes\[1\]\.metered\.max_cost_msat"),
    ("reserve_above_price", _route(metered={"reserve_msat": 10_001}), r"routes\[1\]\.metered\.reserve_msat"),
    ("cost_header_space", _route(metered={"reserve_msat": 1, "cost_header": "x cost"}), r"routes\[1\]\.metered\.cost_header"),
    ("cost_header_empty", _route(metered={"reserve_msat": 1, "cost_header": ""}), r"routes\[1\]\.metered\.cost_header"),
    ("cost_header_colon", _route(metered={"reserve_msat": 1, "cost_header": "x-cost:"}), r"routes\[1\]\.metered\.cost_header"),
    ("cost_header_pseudo", _route(metered={"reserve_msat": 1, "cost_header": ":status"}), r"routes\[1\]\.metered\.cost_header"),
    ("cost_header_non_ascii", _route(metered={"reserve_msat": 1, "cost_header": "x-cöst"}), r"routes\[1\]\.metered\.cost_header"),
    ("on_a_free_route", _free_metered, r"routes\[0\]\.(metered|free)"),
    # Headers the answer cannot lose (framing, gRPC's status, credentials) are no cost header.
    ("cost_header_framing", _route(metered={"reserve_msat": 1, "cost_header": "content-length"}),
     r"routes\[1\]\.metered\.cost_header"),
    ("cost_header_grpc_status", _route(metered={"reserve_msat": 1, "cost_header": "Grpc-Status"}),
     r"routes\[1\]\.metered\.cost_header"),
    ("two_headers_one_name", _upstream_headers_clash, r"upstream_headers\.balance_msat"),
    ("payment_by_the_top_level_default", _payment_by_default, r"routes\[1\]\.(metered|schemes)"),
    # A bundle has a fixed price (each request's cost is the upstream's to report).
    ("with_dynamic_price", _route(dynamic_price=True), r"routes\[1\]\.dynamic_price"),
    # The bundle's token would open the unmetered route of its service without drawing on it.
    ("metered_on_one_route_of_a_service", _half_metered, r"routes\[2\]\.metered"),
]


@pytest.mark.parametrize("change,expected", [c[1:] for c in METERED_REFUSALS], ids=[c[0] for c in METERED_REFUSALS])
def test_envoy_refuses_an_invalid_metered_route(upstream, clean_upstream, wasm, change, expected):
    """Envoy does not start, its log names the field, `envoy --mode validate` catches it too."""
    vars = demo_vars(upstream)
    env = demo_env()
    envoy = Envoy(mutated(vars, change), vars=vars, env=env)
    rc, text = run_to_exit(envoy, env)
    assert rc != 0, text
    assert re.search(re.escape(FIELD_LINE) + expected, text), text[-3000:]
    assert "Unable to create Wasm plugin l402" in text
    assert refused(vars["LISTEN_PORT"])
    assert clean_upstream.requests() == []
    res = Envoy.validate(envoy.config_path, env=env)
    assert res.returncode != 0 and re.search(re.escape(FIELD_LINE) + expected, res.stdout), res.stdout[-3000:]


@pytest.mark.parametrize("metered", [{"reserve_msat": 10_000}, {"reserve_msat": 1, "max_cost_msat": 1},
                                     {"reserve_msat": 2_000, "max_cost_msat": 10_000_000, "cost_header": "x-usage"}],
                         ids=["reserve_equals_price", "minimal", "max_above_price"])
def test_valid_metered_routes_load(upstream, wasm, metered):
    """The control of the refusals: the same base with a valid `metered` loads."""
    vars = demo_vars(upstream)
    res = Envoy.validate(Envoy(mutated(vars, _route(metered=metered)), vars=vars, env=demo_env()).config_path,
                         env=demo_env())
    assert res.returncode == 0, res.stdout[-3000:]
