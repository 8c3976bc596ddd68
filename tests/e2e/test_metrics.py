"""The filter's metrics in Envoy's /stats/prometheus: a known number of each outcome gives exactly
those counter values, and the node-callout latency histogram counts every callout made.

Counters are published by the plugin once a second; histograms appear on Envoy's stats flush, set to
1 s here (``stats_flush_interval``)."""

from __future__ import annotations

import json
import re
import time
from typing import Iterator

import pytest

from attacks import (
    GATEWAY_HEADERS, Gateway, RecordingUpstream, credential, extend, py_mint, token_id, wait_until,
)
from harness import ROOT
from test_filter_support import challenge_parts, new_secret

COUNTERS = [
    "l402_paid_requests", "l402_free_requests", "l402_no_route_requests", "l402_challenges_issued",
    "l402_refused_no_credential", "l402_refused_malformed", "l402_refused_unknown_version",
    "l402_refused_bad_signature", "l402_refused_preimage_mismatch", "l402_refused_expired",
    "l402_refused_wrong_service", "l402_refused_capability_missing", "l402_refused_caveat_widened",
    "l402_refused_restricted", "l402_node_errors_unreachable", "l402_node_errors_status",
    "l402_node_errors_bad_response", "l402_gateway_errors",
]


@pytest.fixture(scope="module")
def gw(wasm) -> Iterator[tuple[Gateway, RecordingUpstream]]:
    up = RecordingUpstream().start()
    g = Gateway(up.port, stats_flush_interval="1s", timeout_ms=500)
    try:
        yield g, up
    finally:
        g.stop()
        up.stop()


def settled(g: Gateway, expected: dict[str, float], timeout: float = 8.0) -> dict[str, float]:
    """Counters once they reach ``expected`` (or the last reading after ``timeout``); at least 1.5 s
    after the last request, so a late publication would show as a surplus."""
    time.sleep(1.5)
    last: dict[str, float] = {}

    def reached() -> bool:
        nonlocal last
        last = g.counters()
        return all(last.get(k) == v for k, v in expected.items())

    wait_until(reached, timeout=timeout, step=0.25)
    time.sleep(1.2)  # one more publication period: nothing more may arrive
    return g.counters()


def test_counters_and_histogram_are_exact(gw):
    g, up = gw
    now = int(time.time())
    sim = g.sim
    expected = {name: 0.0 for name in COUNTERS}
    callouts = 0

    def challenge(path: str = "/v1/forecast", headers=None, reason: str = "payment_required",
                  counter: str = "l402_refused_no_credential", status: int = 402) -> None:
        nonlocal callouts
        r = g.get(path, headers)
        assert r.status == status, (r.status, r.text)
        assert r.json()["reason"] == reason, r.text
        expected[counter] += 1
        callouts += 1
        if status == 402:
            expected["l402_challenges_issued"] += 1

    # Buying two tokens: 2 challenges without a credential.
    tokens = []
    for path in ("/v1/forecast", "/files/public/a"):
        r = g.get(path)
        assert r.status == 402
        expected["l402_refused_no_credential"] += 1
        expected["l402_challenges_issued"] += 1
        callouts += 1
        mac, inv = challenge_parts(r)
        tokens.append(f"L402 {mac}:{sim.pay(inv)['payment_preimage']}")
    weather, files = tokens

    # 7 paid (no callout), 3 free, 2 no route.
    for i in range(5):
        assert g.get(f"/v1/forecast?i={i}", {"Authorization": weather}).status == 200
    for i in range(2):
        assert g.get(f"/files/public/{i}", {"Authorization": files}).status == 200
    expected["l402_paid_requests"] += 7
    for _ in range(3):
        assert g.get("/health").status == 200
    expected["l402_free_requests"] += 3
    for _ in range(2):
        assert g.get("/nowhere", {"Authorization": weather}).status == 403
    expected["l402_no_route_requests"] += 2

    # Unauthenticated and refused credentials: each gets a fresh challenge (one callout each).
    for _ in range(4):
        challenge()
    challenge(headers={"Authorization": "Bearer x"})
    for bad in ("L402 AAAA:" + "00" * 32, "L402 " + weather.split(" ", 1)[1][:-1]):
        challenge(headers={"Authorization": bad}, reason="malformed", counter="l402_refused_malformed")
    m, pre = py_mint(g.secret, ["services=weather:0"], version=3)
    challenge(headers={"Authorization": credential(m, pre)}, reason="unknown_version",
              counter="l402_refused_unknown_version")
    m, pre = py_mint(new_secret(), ["services=weather:0"])
    challenge(headers={"Authorization": credential(m, pre)}, reason="bad_signature",
              counter="l402_refused_bad_signature")
    for _ in range(3):
        challenge(headers={"Authorization": weather[:-64] + "ab" * 32}, reason="preimage_mismatch",
                  counter="l402_refused_preimage_mismatch")
    m, pre = py_mint(g.secret, ["services=weather:0", f"weather_valid_until={now - 10}"])
    challenge(headers={"Authorization": credential(m, pre)}, reason="expired", counter="l402_refused_expired")
    challenge("/admin/x", {"Authorization": weather}, reason="wrong_service", counter="l402_refused_wrong_service")
    challenge("/files/public/a", {"Authorization": weather}, reason="wrong_service",
              counter="l402_refused_wrong_service")
    m, pre = py_mint(g.secret, ["services=admin:0"])
    challenge("/admin/x", {"Authorization": credential(m, pre)}, reason="capability_missing",
              counter="l402_refused_capability_missing")
    challenge(headers={"Authorization": extend(weather, f"weather_valid_until={now + 10 ** 8}")},
              reason="caveat_widened", counter="l402_refused_caveat_widened")
    challenge("/files/private/a", {"Authorization": files}, reason="restricted", counter="l402_refused_restricted")
    r = g.get("/files/public/a", {"Authorization": files}, method="POST")
    assert r.status == 402 and r.json()["reason"] == "restricted"
    expected["l402_refused_restricted"] += 1
    expected["l402_challenges_issued"] += 1
    callouts += 1

    # Node failures (simulator fault injection): 503, a refusal counted, no challenge issued.
    for mode, counter, reason in (("error500", "l402_node_errors_status", "node_error_status"),
                                  ("error500", "l402_node_errors_status", "node_error_status"),
                                  ("garbage", "l402_node_errors_bad_response", "node_bad_response"),
                                  ("reset", "l402_node_errors_unreachable", "node_unreachable")):
        sim.set_fault(mode)
        try:
            r = g.get("/v1/forecast")
        finally:
            sim.set_fault("none")
        assert r.status == 503 and r.json()["reason"] == reason, r.text
        expected[counter] += 1
        expected["l402_refused_no_credential"] += 1
        callouts += 1
    # A paid request during an outage still passes and calls nothing.
    sim.set_fault("error500")
    try:
        assert g.get("/v1/forecast", {"Authorization": weather}).status == 200
    finally:
        sim.set_fault("none")
    expected["l402_paid_requests"] += 1

    got = settled(g, {**expected, "l402_node_callout_ms_count": float(callouts)})
    assert {k: got.get(k) for k in COUNTERS} == expected
    # The latency histogram: one sample per callout (success or failure), none for paid requests.
    assert got.get("l402_node_callout_ms_count") == callouts, got
    assert got.get('l402_node_callout_ms_bucket{le="+Inf"}') == callouts
    assert 0 < got["l402_node_callout_ms_sum"] < callouts * 500 + 1
    assert got['l402_node_callout_ms_bucket{le="1000"}'] == callouts  # every call under the 500 ms timeout
    # Per service (the shipped stats_tags make it a label), each at its token's price.
    per_service = {s: (got.get(f'l402_service_paid_requests{{service="{s}"}}'),
                       got.get(f'l402_service_paid_msat{{service="{s}"}}')) for s in ("weather", "files", "admin")}
    assert per_service == {"weather": (6, 60000), "files": (2, 10000), "admin": (0, 0)}

    # The node was asked exactly once per callout, and the upstream saw exactly the paid + free ones.
    log = up.requests()
    assert len(log) == expected["l402_paid_requests"] + expected["l402_free_requests"]
    paid = [e for e in log if e["path"] != "/health"]
    assert {e["headers"]["x-l402-token-id"] for e in paid} == {token_id(weather), token_id(files)}
    assert all(not set(GATEWAY_HEADERS) & set(e["headers"]) for e in log if e["path"] == "/health")
    # Envoy's own stat names carry the same numbers (wasmcustom.<name>).
    stats = g.envoy.stats("wasmcustom")
    assert {k: float(stats[f"wasmcustom.{k}"]) for k in COUNTERS} == expected


def test_counters_only_grow_by_what_happens(gw):
    """A second batch adds exactly its own numbers to the published totals."""
    g, _ = gw
    before = settled(g, {})
    for _ in range(6):
        assert g.get("/health").status == 200
    for _ in range(3):
        assert g.get("/nowhere").status == 403
    expected = {k: v for k, v in before.items() if k in COUNTERS}
    expected["l402_free_requests"] += 6
    expected["l402_no_route_requests"] += 3
    got = settled(g, expected)
    assert {k: got.get(k) for k in COUNTERS} == expected
    assert got["l402_node_callout_ms_count"] == before["l402_node_callout_ms_count"]


# -- docs/grafana-dashboard.json -----------------------------------------------------------------

DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def source_metric_names() -> set[str]:
    """The names src/metrics.rs publishes: every counter, the per-service counters and the latency
    histogram's series."""
    text = (ROOT / "src" / "metrics.rs").read_text()
    counters = set(re.findall(r'=> "(l402_[a-z_]+)"', text))
    consts = dict(re.findall(r'pub const ([A-Z_]+): &str = "(l402_[a-z_]+)"', text))
    histogram = consts["CALLOUT_LATENCY_MS"]
    return (counters | {consts["SERVICE_PAID_REQUESTS"], consts["SERVICE_PAID_MSAT"]}
            | {f"{histogram}_{s}" for s in ("bucket", "sum", "count")})


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of the dashboard, its variables' included."""
    doc = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in doc["panels"] for t in p.get("targets", [])]
    out += [(f"${v['name']}", v["query"]["query"]) for v in doc["templating"]["list"] if v["type"] == "query"]
    return out


def test_dashboard_reads_only_what_the_filter_exports(gw):
    g, _ = gw
    # A callout, so that the latency histogram has series; a paid request, for a service label.
    assert g.get("/v1/forecast").status == 402
    assert g.get("/v1/forecast", {"Authorization": g.buy()}).status == 200
    live: dict[str, set[str]] = {}

    def exported() -> bool:
        for line in g.prometheus().splitlines():
            if line.startswith("l402_"):
                name, _, labels = line.partition("{")
                live.setdefault(name, set()).add(labels.partition("}")[0])
        return "l402_node_callout_ms_bucket" in live and "l402_service_paid_requests" in live

    wait_until(exported, timeout=8, step=0.25)
    exprs = dashboard_exprs()
    used = {name for _, expr in exprs for name in re.findall(r"\bl402_[a-z0-9_]+\b", expr)}
    assert used - set(live) == set(), "queries of metrics the filter does not export"
    assert used - source_metric_names() == set()
    # Every counter has its place (every refusal reason, every error); per-service queries group by
    # the label the shipped stats_tags give.
    assert source_metric_names() - {"l402_node_callout_ms_bucket", "l402_node_callout_ms_count"} <= used
    assert {'service="weather"', 'service="admin"', 'service="files"'} <= live["l402_service_paid_msat"]
    for title, expr in exprs:
        if "by (service)" in expr:
            assert re.search(r"\bl402_service_", expr), (title, expr)
    doc = json.loads(DASHBOARD.read_text())
    assert len({p["id"] for p in doc["panels"]}) == len(doc["panels"])
    assert all(len({t["refId"] for t in p.get("targets", [])}) == len(p.get("targets", [])) for p in doc["panels"])
