"""Metered routes in Kong's Wasm engine (two workers, the shared data in the default zone), on the
LND simulator: a bundle bought through the 402, drawn down by the cost the API reports in the
`x-l402-cost-msat` response header (removed before the client sees the answer), the balance handed
to the API before each request and to the client after it, exact across both workers; a 5xx
without a cost charges nothing, a malformed cost charges the reservation, a cost is capped; an
exhausted bundle gets `balance_exhausted` with a fresh challenge, and a new bundle opens the route.
A client's own reservation or balance header is refused with 400 `reserved_header` (nginx cannot
remove a request header), before anything is reserved. The API is metered_support's LLM-like
upstream."""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest

from engine import ENGINES, Engine, engine_params
from kong_common import assert_joined_challenge, challenge_of, config, lnd_node
from metered_support import COST_HEADER, LlmUpstream, llm, wait_until  # llm: the upstream fixture
from test_filter_support import inspect, token_id_of

pytestmark = pytest.mark.parametrize("nginx", engine_params(ENGINES), scope="module")

BUNDLE_MSAT = 100_000
RESERVE = 20_000
MAX_COST = 50_000
BALANCE = "x-l402-balance-msat"
RESERVED = "x-l402-reserved-msat"
ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/chat"}, "service": "llm", "price_sat": 100, "lifetime_s": 3600,
     "metered": {"reserve_msat": RESERVE, "max_cost_msat": MAX_COST}},
]


@pytest.fixture(scope="module")
def engine(nginx: str, lnd: Any, llm: LlmUpstream, wasm_module: Any) -> Iterator[Engine]:
    e = Engine(nginx, llm.port, config(lnd_node(lnd, timeout_ms=5000), ROUTES)).start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def gw(request: pytest.FixtureRequest, engine: Engine, llm: LlmUpstream) -> Iterator[Engine]:
    llm.clear()
    yield engine
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        sys.stderr.write(f"\n--- {engine.dir}/logs/error.log (tail) ---\n{engine.error_log[-3000:]}\n")


_ids = itertools.count(1)


def rid(label: str = "k") -> str:
    return f"{label}{next(_ids)}"


def buy(gw: Engine, lnd: Any) -> str:
    r = gw.get("/v1/chat/completions")
    assert_joined_challenge(r, "payment_required")
    assert r.json()["price_msat"] == BUNDLE_MSAT
    mac, invoice = challenge_of(r)
    return f"L402 {mac}:{lnd.pay(invoice)['payment_preimage']}"


def chat(gw: Engine, token: str, request_id: str, headers: dict[str, str] | None = None, **query: Any):
    return gw.get(f"/v1/chat/completions?{urlencode({'id': request_id, **query})}",
                  {"Authorization": token, **(headers or {})})


def balance_of(r: Any) -> int:
    values = r.header_values(BALANCE)
    assert len(values) == 1 and values[0].isdigit(), (values, r.status, r.text[:200])
    return int(values[0])


def assert_settled(r: Any, balance: int, status: int = 200) -> None:
    assert r.status == status, (r.status, r.text[:300])
    assert not r.header_values(COST_HEADER), r.header_list
    assert balance_of(r) == balance


def told(llm: LlmUpstream, request_id: str, token: str) -> int:
    """What the API was told of one request: the token, one reservation of 20000, the bundle's price;
    returns the balance it was told (after the reservation)."""
    seen = llm.by_id(request_id)
    assert seen.copies("x-l402-token-id") == [token_id_of(token)], seen.header_list
    assert seen.copies("x-l402-service") == ["llm"] and seen.copies("x-l402-price-msat") == [str(BUNDLE_MSAT)]
    assert seen.copies(RESERVED) == [str(RESERVE)], seen.header_list
    (balance,) = seen.copies(BALANCE)
    return int(balance)


def probe(gw: Engine, llm: LlmUpstream, token: str) -> int:
    """The balance before a request that reports a zero cost (charges nothing)."""
    request_id = rid("probe")
    r = chat(gw, token, request_id, tokens=0)
    before = told(llm, request_id, token) + RESERVE
    assert_settled(r, before)
    return before


def test_the_bundle_token_carries_its_price(nginx, gw, lnd, llm):
    r = gw.get("/v1/chat/completions")
    assert_joined_challenge(r, "payment_required")
    mac, _ = challenge_of(r)
    assert f"llm_price_msat={BUNDLE_MSAT}" in inspect(mac)["caveats"]


def test_the_reported_cost_draws_the_bundle_down_exactly(nginx, gw, lnd, llm):
    token = buy(gw, lnd)
    balance = BUNDLE_MSAT
    for tokens in (1234, 0, 3500, 9000):       # the last reports 90000: capped at 50000
        request_id = rid()
        r = chat(gw, token, request_id, tokens=tokens)
        assert told(llm, request_id, token) == balance - RESERVE
        balance -= min(tokens * 10, MAX_COST, balance)
        assert_settled(r, balance)
    assert balance == BUNDLE_MSAT - 12_340 - 35_000 - 50_000
    assert len(llm.requests()) == 4


def test_failures_and_malformed_costs(nginx, gw, lnd, llm):
    """A 500 without a cost charges nothing, a 502 with one charges it, a malformed cost and a
    missing one charge the reservation."""
    token = buy(gw, lnd)
    assert chat(gw, token, rid(), status=500).status == 500
    assert probe(gw, llm, token) == BUNDLE_MSAT
    assert_settled(chat(gw, token, rid(), status=502, tokens=300), BUNDLE_MSAT - 3_000, status=502)
    r = chat(gw, token, rid(), cost="12abc")
    assert r.status == 200 and not r.header_values(COST_HEADER)
    assert probe(gw, llm, token) == BUNDLE_MSAT - 3_000 - RESERVE
    assert chat(gw, token, rid()).status == 200
    assert probe(gw, llm, token) == BUNDLE_MSAT - 3_000 - 2 * RESERVE


def test_an_exhausted_bundle_gets_a_fresh_challenge_and_a_new_bundle_opens_the_route(nginx, gw, lnd, llm):
    token = buy(gw, lnd)
    assert_settled(chat(gw, token, rid(), tokens=5_000), 50_000)
    assert_settled(chat(gw, token, rid(), tokens=3_500), 15_000)
    refused_id = rid()
    r = chat(gw, token, refused_id, tokens=1)
    assert_joined_challenge(r, "balance_exhausted")
    assert (r.json()["balance_msat"], r.json()["reserve_msat"]) == (15_000, RESERVE), r.json()
    mac, invoice = challenge_of(r)
    assert inspect(mac)["identifier"]["token_id"] != token_id_of(token)
    assert refused_id not in [s.id for s in llm.requests()]
    topped = f"L402 {mac}:{lnd.pay(invoice)['payment_preimage']}"
    request_id = rid()
    assert_settled(chat(gw, topped, request_id, tokens=100), BUNDLE_MSAT - 1_000)
    assert told(llm, request_id, topped) == BUNDLE_MSAT - RESERVE
    again = chat(gw, token, rid())
    assert_joined_challenge(again, "balance_exhausted")
    assert len(llm.requests()) == 3
    assert balance_of(r) == 15_000 and balance_of(again) == 15_000, "the old token's remaining balance"


@pytest.mark.parametrize("name", [RESERVED, BALANCE, "X-L402-Balance-Msat"])
def test_a_clients_metering_header_is_refused_and_reserves_nothing(nginx, gw, lnd, llm, name):
    token = buy(gw, lnd)
    r = chat(gw, token, rid(), headers={name: "999999999"}, tokens=0)
    assert r.status == 400 and r.json()["reason"] == "reserved_header", (r.status, r.text)
    assert llm.requests() == []
    assert probe(gw, llm, token) == BUNDLE_MSAT
    free = gw.get("/health", {name: "1"})
    assert free.status == 400 and free.json()["reason"] == "reserved_header"


def test_reservations_are_exact_across_both_workers(nginx, gw, lnd, llm):
    """Ten requests at once, held at the API: exactly five reservations of 20000 fit the bundle,
    whichever worker each lands on; the others are refused with balance 0."""
    token = buy(gw, lnd)
    gate = rid("gate")
    with ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(chat, gw, token, rid("c"), hold=gate, tokens=100) for _ in range(10)]
        ok = wait_until(lambda: len(llm.held(gate)) == 5 and sum(f.done() for f in futures) == 5, 20)
        state = (len(llm.held(gate)), sum(f.done() for f in futures))
        llm.release(gate)
        answers = [f.result(timeout=30) for f in futures]
    assert ok, state
    assert sorted(r.status for r in answers) == [200] * 5 + [402] * 5
    for r in answers:
        if r.status == 402:
            assert_joined_challenge(r, "balance_exhausted")
    assert sorted(s.copies(BALANCE)[0] for s in llm.requests()) == ["0", "20000", "40000", "60000", "80000"]
    assert probe(gw, llm, token) == BUNDLE_MSAT - 5_000
    assert [balance_of(r) for r in answers if r.status == 402] == [0] * 5


def test_a_fleet_balance_is_charged_from_the_root_context(nginx, lnd, llm, wasm_module):
    """With `fleet`, the reservation is a compare-and-swap in etcd before the API, and the charge is
    sent after the answer by the root context on its tick (Kong's engine dispatches from `on_tick`,
    not from a response phase): etcd ends at the sum of the reported costs, as `l402 balance show`
    reads it."""
    import json

    from test_filter_support import cli
    from test_fleet import Etcd
    etcd = Etcd()
    prefix = "/kong-metered/"
    fleet = {"upstream": f"127.0.0.1:{etcd.port}", "authority": f"127.0.0.1:{etcd.port}", "prefix": prefix}
    e = Engine(nginx, llm.port, config(lnd_node(lnd, timeout_ms=5000), ROUTES, fleet=fleet)).start()
    try:
        token = buy(e, lnd)
        reported = [1234, 2000, 777]                     # 12340, 20000 and 7770 msat
        for tokens in reported:
            assert chat(e, token, rid("fleet"), tokens=tokens).status == 200
        spent = sum(tokens * 10 for tokens in reported)

        def ledger() -> dict[str, Any]:
            shown = cli("balance", "show", token_id_of(token), "--etcd", etcd.url, "--prefix", prefix)
            assert shown.returncode == 0, shown.stderr
            return json.loads(shown.stdout)

        assert wait_until(lambda: ledger()["spent_msat"] == spent), ledger()
        assert "exited on signal" not in e.error_log, e.error_log[-2000:]
        assert ledger()["total_msat"] == BUNDLE_MSAT
    finally:
        e.stop()
        etcd.stop()
