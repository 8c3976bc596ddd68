"""Metered routes across a fleet: two real Envoys sharing a secret and a real etcd (test_fleet's
Etcd), invoices from the real LNbits, one bundle drawn on both gateways at once. The balance lives
in etcd (`<prefix>balance/<token id>`, `{"total_msat", "spent_msat"}`): a reservation made on one
gateway is seen by the other, the sum charged equals the sum of the costs the upstream reported for
the requests that passed, the balance never goes below zero, requests beyond it are refused with
`balance_exhausted` (never a store error: etcd is only contended, and with `fail_open` no contended
request passes uncharged), an etcd outage fails closed before the upstream, and `l402 balance show` /
`l402 balance credit` (or a credit written to etcd) read and top up the same record."""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator
from urllib.parse import urlencode

import pytest

from metered_support import COST_HEADER, LlmUpstream, wait_until
from test_filter_support import Backend, Gateway, assert_challenge, cli, new_secret, token_id_of
from test_fleet import Etcd, with_etcd_cluster

PREFIX = "/l402-metered/"
BUNDLE_MSAT = 200_000    # price_sat 200
RESERVE = 20_000
MAX_COST = 50_000
BALANCE = "x-l402-balance-msat"
RESERVED = "x-l402-reserved-msat"
ROUTES = [
    {"match": {"path_prefix": "/v1/chat"}, "service": "llm", "price_sat": 200, "lifetime_s": 3600,
     "metered": {"reserve_msat": RESERVE, "max_cost_msat": MAX_COST}},
]


@contextmanager
def two_gateways(lnbits: Any, timeout_ms: int | None = None, **top: Any) -> Iterator[dict[str, Any]]:
    """A real etcd, the LLM upstream, and two gateways sharing a secret and the etcd (``timeout_ms``:
    the fleet store's; ``top``: more top-level plugin settings)."""
    etcd = Etcd()
    llm = LlmUpstream().start()
    backend = Backend("lnbits", lnbits)
    secret = new_secret()
    settings = {"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "prefix": PREFIX,
                "revocation_poll_s": 1, **({"timeout_ms": timeout_ms} if timeout_ms else {})}
    gateways: list[Gateway] = []
    try:
        for _ in range(2):
            gateways.append(Gateway(backend, llm.port, ROUTES, secrets=secret,
                                    template_edit=with_etcd_cluster(etcd.port), fleet=settings, **top))
        yield {"etcd": etcd, "llm": llm, "gateways": gateways}
    finally:
        for g in gateways:
            g.stop()
        llm.stop()
        etcd.stop()


@pytest.fixture(scope="module")
def fleet(lnbits, wasm) -> Iterator[dict[str, Any]]:
    with two_gateways(lnbits) as f:
        yield f


@pytest.fixture
def up(fleet) -> LlmUpstream:
    fleet["llm"].clear()
    return fleet["llm"]


def chat(gw: Gateway, token: str, request_id: str, **query: Any):
    return gw.request(f"/v1/chat/completions?{urlencode({'id': request_id, **query})}", token)


def ledger(fleet: dict[str, Any], token: str) -> dict[str, int] | None:
    """The bundle's record in etcd."""
    value = fleet["etcd"].get(f"{PREFIX}balance/{token_id_of(token)}")
    return None if value is None else json.loads(value)


def balance_show(fleet: dict[str, Any], token: str) -> dict[str, Any]:
    r = cli("balance", "show", token_id_of(token), "--etcd", fleet["etcd"].url, "--prefix", PREFIX)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def settled_to(fleet: dict[str, Any], token: str, spent: int, timeout: float = 10.0) -> dict[str, int] | None:
    """Poll etcd until the bundle's spent_msat is ``spent`` (settlements land shortly after the
    answers); the last record read."""
    last: dict[str, Any] = {}

    def check() -> bool:
        last["v"] = ledger(fleet, token)
        return last["v"] is not None and last["v"].get("spent_msat") == spent

    wait_until(check, timeout, step=0.05)
    return last["v"]


def test_a_reservation_on_one_gateway_is_seen_by_the_other(fleet, up):
    """A request held upstream on A holds its 20000: B's request is told the balance without it;
    released, each is charged its reported cost, on the etcd record."""
    a, b = fleet["gateways"]
    token = a.buy("/v1/chat/completions")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(chat, a, token, "held", hold="A", tokens=500)
        assert wait_until(lambda: up.held("A"), 10)
        assert up.by_id("held").copies(BALANCE) == [str(BUNDLE_MSAT - RESERVE)]
        r = chat(b, token, "on-b", tokens=700)
        assert r.status == 200, (r.status, r.text)
        assert up.by_id("on-b").copies(BALANCE) == [str(BUNDLE_MSAT - 2 * RESERVE)]
        assert up.by_id("on-b").copies(RESERVED) == [str(RESERVE)]
        assert int(r.headers[BALANCE]) == BUNDLE_MSAT - RESERVE - 7_000
        assert COST_HEADER not in r.headers
        up.release("A")
        done = held.result(timeout=20)
    # A settles after B did: it reports 188000, or 195000 if it counts from its own reservation while
    # B's settlement is still on its way to etcd (settlements are asynchronous in a fleet).
    assert done.status == 200 and BUNDLE_MSAT - 12_000 <= int(done.headers[BALANCE]) <= BUNDLE_MSAT - 5_000
    record = settled_to(fleet, token, 12_000)
    assert record == {"total_msat": BUNDLE_MSAT, "spent_msat": 12_000}, record


def storm(fleet: dict[str, Any], token: str, threads: int, per_thread: int, tokens: tuple[int, int],
          seed: int = 1402) -> tuple[dict[str, Any], dict[str, int]]:
    """``threads`` threads released at once, alternating between the two gateways, each sending
    ``per_thread`` requests in a row with a cost of ``tokens`` (a range) x 10 msat: (the answers,
    the cost each request would report), by request id."""
    a, b = fleet["gateways"]
    rng = random.Random(seed)
    plan = [[(f"t{t}-{k}", rng.randrange(tokens[0], tokens[1] + 1)) for k in range(per_thread)]
            for t in range(threads)]
    answers: dict[str, Any] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        gateway = (a, b)[t % 2]
        barrier.wait(timeout=30)
        for request_id, n in plan[t]:
            r = chat(gateway, token, request_id, tokens=n)
            with lock:
                answers[request_id] = r

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return answers, {i: n * 10 for row in plan for i, n in row}


def test_concurrent_requests_across_the_fleet_charge_exactly_the_reported_costs(fleet, up):
    """16 threads, both gateways, costs of 1000-20000 (never above the reservation, so each is
    charged exactly): spent_msat = the sum of the costs of the requests that passed, the balance is
    never below zero, every request upstream carried the reservation, the rest got balance_exhausted."""
    token = fleet["gateways"][0].buy("/v1/chat/completions")
    answers, costs = storm(fleet, token, threads=16, per_thread=6, tokens=(100, 2_000))
    passed = [i for i, r in answers.items() if r.status == 200]
    refused = [i for i, r in answers.items() if r.status != 200]
    seen = {s.id: s for s in up.requests()}
    assert sorted(seen) == sorted(passed), "the upstream saw exactly the requests that passed"
    assert passed and refused, (len(passed), len(refused))
    for i in passed:
        assert seen[i].copies(RESERVED) == [str(RESERVE)], seen[i].header_list
        (after_reservation,) = seen[i].copies(BALANCE)
        assert 0 <= int(after_reservation) <= BUNDLE_MSAT - RESERVE
        assert 0 <= int(answers[i].headers[BALANCE]) < BUNDLE_MSAT
        assert COST_HEADER not in answers[i].headers
    charged = sum(costs[i] for i in passed)
    assert charged <= BUNDLE_MSAT
    record = settled_to(fleet, token, charged)
    assert record == {"total_msat": BUNDLE_MSAT, "spent_msat": charged}, (record, charged)
    # Every refusal is balance_exhausted (never a store error: etcd is up, only contended).
    statuses = {}
    for i in refused:
        key = (answers[i].status, answers[i].json().get("reason"))
        statuses[key] = statuses.get(key, 0) + 1
    assert set(statuses) == {(402, "balance_exhausted")}, statuses
    for i in refused:
        assert_challenge(answers[i], "balance_exhausted", "llm")
    shown = balance_show(fleet, token)
    assert {k: shown.get(k) for k in ("token_id", "total_msat", "spent_msat", "balance_msat")} == {
        "token_id": token_id_of(token), "total_msat": BUNDLE_MSAT, "spent_msat": charged,
        "balance_msat": BUNDLE_MSAT - charged}, shown
    # What each refusal reported left: never below zero, less than one reservation.
    assert all(0 <= int(answers[i].headers.get(BALANCE, "-1")) < RESERVE for i in refused), \
        [answers[i].headers.get(BALANCE) for i in refused]


def exhaust(fleet: dict[str, Any], up: LlmUpstream, token: str) -> list[Any]:
    """Draw the bundle to exactly zero across both gateways; returns the two refusals that follow."""
    a, b = fleet["gateways"]
    spent = 0
    for k in range(4):                          # 4 x 45000: 20000 left
        r = chat((a, b)[k % 2], token, f"drain{k}", tokens=4_500)
        assert r.status == 200, (r.status, r.text)
        spent += 45_000
    assert settled_to(fleet, token, spent) == {"total_msat": BUNDLE_MSAT, "spent_msat": spent}
    assert chat(a, token, "last", tokens=2_000).status == 200     # exactly the reservation: 0 left
    assert settled_to(fleet, token, BUNDLE_MSAT) == {"total_msat": BUNDLE_MSAT, "spent_msat": BUNDLE_MSAT}
    refusals = []
    for gateway in (a, b):
        r = chat(gateway, token, "refused", tokens=1)
        assert_challenge(r, "balance_exhausted", "llm")
        refusals.append(r)
    assert "refused" not in [s.id for s in up.requests()]
    return refusals


def assert_credited_pass(fleet: dict[str, Any], up: LlmUpstream, token: str) -> None:
    """After a credit of 30000 on an exhausted bundle, a request passes again on either gateway."""
    a, b = fleet["gateways"]
    assert ledger(fleet, token) == {"total_msat": BUNDLE_MSAT + 30_000, "spent_msat": BUNDLE_MSAT}
    r = chat(b, token, "credited", tokens=100)
    assert r.status == 200, (r.status, r.text)
    assert up.by_id("credited").copies(BALANCE) == ["10000"]
    assert COST_HEADER not in r.headers and r.headers[BALANCE] == str(30_000 - 1_000)
    assert settled_to(fleet, token, BUNDLE_MSAT + 1_000) == {"total_msat": BUNDLE_MSAT + 30_000,
                                                            "spent_msat": BUNDLE_MSAT + 1_000}
    assert chat(a, token, "credited-a", tokens=0).status == 200
    assert settled_to(fleet, token, BUNDLE_MSAT + 1_000)["spent_msat"] == BUNDLE_MSAT + 1_000


def test_balance_credit_lets_an_exhausted_bundle_pass_again(fleet, up):
    """`l402 balance credit` adds to the total in etcd; `l402 balance show` agrees."""
    token = fleet["gateways"][1].buy("/v1/chat/completions")
    refusals = exhaust(fleet, up, token)
    r = cli("balance", "credit", token_id_of(token), "30000", "--etcd", fleet["etcd"].url, "--prefix", PREFIX)
    assert r.returncode == 0, r.stdout + r.stderr
    assert balance_show(fleet, token)["balance_msat"] == 30_000
    assert_credited_pass(fleet, up, token)
    shown = balance_show(fleet, token)
    assert shown["balance_msat"] == 29_000 and shown["spent_msat"] == BUNDLE_MSAT + 1_000, shown
    assert [r.headers.get(BALANCE) for r in refusals] == ["0", "0"]


def test_a_credit_written_to_etcd_lets_an_exhausted_bundle_pass_again(fleet, up):
    """The same credit made by rewriting the record's total in etcd (the documented format): the
    gateways read the balance from etcd, not from what they last saw."""
    token = fleet["gateways"][0].buy("/v1/chat/completions")
    refusals = exhaust(fleet, up, token)
    fleet["etcd"].put(f"{PREFIX}balance/{token_id_of(token)}",
                      json.dumps({"total_msat": BUNDLE_MSAT + 30_000, "spent_msat": BUNDLE_MSAT}))
    assert_credited_pass(fleet, up, token)
    assert [r.headers.get(BALANCE) for r in refusals] == ["0", "0"]


def test_contention_never_lets_a_request_pass_uncharged_with_fail_open(lnbits, wasm):
    """`on_store_error: fail_open` is for a store that is down, not for a busy balance: a burst of
    concurrent requests on one bundle (etcd healthy) must never pass a request without its
    reservation, i.e. uncharged; the sum charged is the sum of the reported costs."""
    with two_gateways(lnbits, on_store_error="fail_open") as f:
        token = f["gateways"][0].buy("/v1/chat/completions")
        answers, costs = storm(f, token, threads=24, per_thread=8, tokens=(1, 100), seed=7)
        seen = {s.id: s for s in f["llm"].requests()}
        passed = [i for i, r in answers.items() if r.status == 200]
        assert sorted(seen) == sorted(passed)
        unreserved = sorted(i for i in passed if not seen[i].copies(RESERVED))
        charged = sum(costs[i] for i in passed if i not in unreserved)
        record = settled_to(f, token, charged)
        assert record == {"total_msat": BUNDLE_MSAT, "spent_msat": charged}, record
        assert unreserved == [], (f"{len(unreserved)} of {len(passed)} requests passed without a reservation "
                                  f"(free: {sum(costs[i] for i in unreserved)} msat of reported costs)")
        assert {(r.status, r.json().get("reason")) for r in answers.values() if r.status != 200} <= \
            {(402, "balance_exhausted")}


def test_an_etcd_outage_fails_closed_before_the_upstream(lnbits, wasm):
    """`fail_closed` (the default) applies to the reservation: with etcd down a metered request gets
    503 and never reaches the upstream."""
    with two_gateways(lnbits, timeout_ms=300) as f:
        a, _ = f["gateways"]
        token = a.buy("/v1/chat/completions")
        assert chat(a, token, "before", tokens=100).status == 200
        f["etcd"].stop()
        r = chat(a, token, "during", tokens=100)
        assert r.status == 503 and r.json()["reason"] == "gateway_error", (r.status, r.text)
        assert [s.id for s in f["llm"].requests()] == ["before"]


def test_a_bundle_is_what_was_paid_when_the_price_changes_before_its_first_use(lnbits, wasm):
    """The spec: the token carries its bundle as `llm_price_msat`. Bought at 200 sat, first used on a
    gateway (same secret, same etcd) whose route now costs 300 sat: its balance is 200000."""
    etcd = Etcd()
    llm = LlmUpstream().start()
    backend = Backend("lnbits", lnbits)
    secret = new_secret()
    settings = {"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "prefix": PREFIX}
    dearer = [{**ROUTES[0], "price_sat": 300}]
    old = new = None
    try:
        old = Gateway(backend, llm.port, ROUTES, secrets=secret, template_edit=with_etcd_cluster(etcd.port),
                      fleet=settings)
        token = old.buy("/v1/chat/completions")
        old.stop()
        new = Gateway(backend, llm.port, dearer, secrets=secret, template_edit=with_etcd_cluster(etcd.port),
                      fleet=settings)
        r = chat(new, token, "first", tokens=100)
        assert r.status == 200, (r.status, r.text)
        assert llm.by_id("first").copies(BALANCE) == [str(BUNDLE_MSAT - RESERVE)], llm.by_id("first").header_list
        assert r.headers[BALANCE] == str(BUNDLE_MSAT - 1_000)
    finally:
        for g in (old, new):
            if g is not None:
                g.stop()
        llm.stop()
        etcd.stop()
