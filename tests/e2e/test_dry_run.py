"""Dry run in a real Envoy on the LND simulator: every request reaches the upstream with the decision
it would have had in `x-l402-dry-run`, the counters count it as if enforced (plus
`l402_dry_run_passes`), the access log records it with `dry_run=true`, and the node is never
asked anything: no invoice, no lookup (`node.strict`), no pricing call (there is no pricer)."""

from __future__ import annotations

import json
import secrets
import time

from attacks import credential, py_mint, token_id, wait_until
from ops_support import LoggingGateway
from payment_support import credential as payment_credential
from payment_support import mint_charge
from test_filter_support import Backend, cli, new_secret

HEADER = "x-l402-dry-run"
ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"path_prefix": "/once/"}, "service": "once", "price_sat": 3, "uses": 1},
    {"match": {"path_prefix": "/llm/"}, "service": "llm", "dynamic_price": True},
    {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
]
PRICER = {"upstream": "no-such-pricer", "authority": "pricer:80", "path": "/price"}


def token(secret: str, service: str, *caveats: str) -> str:
    mac, preimage = py_mint(secret, [f"services={service}:0", *caveats])
    return credential(mac, preimage)


def settled(g, expected: dict[str, float], timeout: float = 6.0) -> dict[str, float]:
    """The l402_* counters once they reach ``expected`` (published once a second)."""
    got: dict[str, float] = {}

    def reached() -> bool:
        nonlocal got
        got = g.counters()
        return all(got.get(k, 0.0) == v for k, v in expected.items())

    wait_until(reached, timeout=timeout, step=0.2)
    return got


def test_everything_passes_with_its_would_be_decision(wasm, clean_upstream):
    backend = Backend("lnd")
    g = LoggingGateway(backend, clean_upstream.port, ROUTES, dry_run=True, pricing=PRICER)
    try:
        weather = token(g.secret, "weather")
        expired = token(g.secret, "weather", f"weather_valid_until={int(time.time()) - 10}")
        once = token(g.secret, "once")
        preimage = secrets.token_bytes(32)
        charge_id = secrets.token_hex(32)
        charge = payment_credential(mint_charge(g.secret, "quotes", 5, preimage, charge_id), preimage.hex())
        spoofed = {HEADER: "paid", "x-l402-token-id": "ab" * 32, "x-l402-service": "weather"}
        w, q = "service=weather; price_msat=10000", "service=quotes; price_msat=5000"
        cases = [
            ("/health", None, "free"),
            ("/v1/forecast", None, f"challenge; reason=no_credential; {w}"),
            ("/v1/forecast", expired, f"refused; reason=expired; {w}"),
            ("/v1/forecast", weather, f"paid; {w}; token_id={token_id(weather)}"),
            ("/admin/x", weather, "no_route"),
            ("/v1;x/forecast", None, "ambiguous_path"),
            # Nothing is consumed: a one-use token and a single-use charge pass twice.
            ("/once/a", once, f"paid; service=once; price_msat=3000; token_id={token_id(once)}"),
            ("/once/b", once, f"paid; service=once; price_msat=3000; token_id={token_id(once)}"),
            ("/pay/a", charge, f"paid; {q}; token_id={charge_id}"),
            ("/pay/b", charge, f"paid; {q}; token_id={charge_id}"),
            ("/pay/c", None, f"challenge; reason=no_credential; {q}"),
            # No price without asking the pricer: none is named.
            ("/llm/q", None, "challenge; reason=no_credential; service=llm"),
        ]
        for path, auth, _ in cases:
            r = g.request(path, auth, headers=spoofed)
            assert r.status == 200 and r.json()["upstream"] == "l402-test-upstream", (path, r.status, r.text)
            assert "payment-receipt" not in r.headers
        seen = clean_upstream.requests()
        assert [(e["path"], e["headers"].get(HEADER)) for e in seen] == [(p, h) for p, _, h in cases]
        for entry, (_, auth, _) in zip(seen, cases):
            # The credential goes on as it came; the metering headers are never set, never the client's.
            assert entry["headers"].get("authorization") == auth
            assert not {"x-l402-token-id", "x-l402-service", "x-l402-price-msat"} & set(entry["headers"])
        log = g.log(len(cases))
        assert all(line["dry_run"] == "true" and line["status"] == 200 for line in log), log
        assert [line["outcome"] for line in log] == [h.split(";")[0] for _, _, h in cases]
        # Nothing asked of the node.
        assert backend.sim.stats()["invoice_create"] == 0 and backend.lookups() == 0
        counters = settled(g, {"l402_dry_run_passes": len(cases)})
        expected = {"l402_dry_run_passes": 12, "l402_free_requests": 1, "l402_paid_requests": 5,
                    "l402_refused_no_credential": 3, "l402_refused_expired": 1, "l402_challenges_issued": 4,
                    "l402_no_route_requests": 1, "l402_refused_ambiguous_path": 1, "l402_refused_used_up": 0,
                    "l402_refused_replayed": 0, "l402_node_callout_ms_count": 0}
        assert {k: counters.get(k, 0.0) for k in expected} == expected
    finally:
        g.stop()
        backend.stop()


def test_per_route_dry_run_beside_enforced_routes(wasm, clean_upstream):
    backend = Backend("lnd")
    routes = ROUTES[:2] + [{"match": {"path_prefix": "/shadow/"}, "service": "shadow", "price_sat": 7,
                            "dry_run": True}]
    g = LoggingGateway(backend, clean_upstream.port, routes, node={"strict": True})
    try:
        shadow = token(g.secret, "shadow")
        assert g.request("/shadow/x").status == 200
        assert g.request("/shadow/x", shadow).status == 200
        # Enforced: the 402 (one invoice), the 403, and a free route whose client copy of the header
        # is removed, since the header is the filter's in this config.
        assert g.request("/v1/forecast").status == 402
        assert g.request("/nowhere").status == 403
        assert g.request("/health", headers={HEADER: "paid"}).status == 200
        seen = [(e["path"], e["headers"].get(HEADER)) for e in clean_upstream.requests()]
        assert seen == [
            ("/shadow/x", "challenge; reason=no_credential; service=shadow; price_msat=7000"),
            # strict: only the node could confirm the payment, and it is not asked.
            ("/shadow/x", f"paid; reason=settlement_unchecked; service=shadow; price_msat=7000; "
                          f"token_id={token_id(shadow)}"),
            ("/health", None),
        ]
        assert backend.sim.stats()["invoice_create"] == 1 and backend.lookups() == 0
        assert [line.get("dry_run") for line in g.log(5)] == ["true", "true", None, None, None]
        assert settled(g, {"l402_dry_run_passes": 2})["l402_dry_run_passes"] == 2
        assert "dry run is on (routes[2]): requests it covers pass upstream unpaid" in g.envoy.log_text()
    finally:
        g.stop()
        backend.stop()


def test_config_check_names_what_dry_run_lets_through(tmp_path):
    cfg = {"secrets": [new_secret()], "dry_run": True,
           "node": {"kind": "lnd", "upstream": "lnd", "authority": "lnd:8080", "credential": "0201036c6e64"},
           "routes": ROUTES[:2] + [{**ROUTES[2], "dry_run": False}]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    out = json.loads(cli("config", "check", str(path), "--json").stdout)
    assert out == {"valid": True, "routes": 3, "dry_run": ["dry_run", "routes[1]"]}
    text = cli("config", "check", str(path)).stdout
    assert "warning: dry run (dry_run, routes[1]) lets unpaid requests through" in text
    del cfg["dry_run"]
    path.write_text(json.dumps(cfg))
    assert json.loads(cli("config", "check", str(path), "--json").stdout)["dry_run"] == []
