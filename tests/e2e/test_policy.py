"""Pricing and access policy through a real Envoy (invoices from the LND simulator over TLS): prices in
sat and msat, one service per token, capabilities, route matching (path, glob, host, methods, first
match wins, unmatched requests), restricted tokens, freebies, what the upstream is handed, and dynamic
prices from an operator's pricing endpoint (asked, cached, minted, and its outage). The upstream's
request log is the ground truth for what passed."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import bolt11
import pytest

from attacks import RecordingUpstream, wait_until
from harness import free_port
from test_filter_support import (
    Backend, Gateway, assert_challenge, challenge_parts, http_from, inspect, mint, token_id_of,
)

ROUTES: list[dict[str, Any]] = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path": "/v1/status"}, "free": True},  # before /v1/: the first match wins
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"path_prefix": "/a/"}, "service": "a", "price_sat": 7},
    {"match": {"path_prefix": "/b/"}, "service": "b", "price_msat": 12_345},
    {"match": {"path_prefix": "/admin/read/"}, "service": "admin", "price_sat": 3},
    {"match": {"path_prefix": "/admin/"}, "service": "admin", "price_sat": 3, "capabilities": ["admin"]},
    {"match": {"path_glob": "/files/*/report.pdf"}, "service": "reports", "price_sat": 2},
    {"match": {"path_glob": "/files/**/*.json"}, "free": True},
    {"match": {"host": "paid.example.com", "path_prefix": "/h/"}, "service": "hosted", "price_sat": 4},
    {"match": {"host": "*.free.example", "path_prefix": "/h/"}, "free": True},
    {"match": {"path_prefix": "/m/", "methods": ["POST", "PUT"]}, "service": "writes", "price_sat": 5},
    {"match": {"path_prefix": "/m/"}, "free": True},
    {"match": {"path_prefix": "/docs/"}, "service": "docs", "price_sat": 6,
     "restrict": {"path_prefix": "/docs/public/", "methods": ["GET"]}},
    {"match": {"path_prefix": "/trial/"}, "service": "trial", "price_sat": 1,
     "freebies": {"requests": 3, "period_s": 3600}},
]
METERING = ("x-l402-token-id", "x-l402-service", "x-l402-price-msat")
FORGED = {"X-L402-Token-Id": "ab" * 32, "X-L402-Service": "forged", "X-L402-Price-Msat": "1", "X-Paid": "1"}


@pytest.fixture(scope="module")
def up() -> Iterator[RecordingUpstream]:
    """A recording upstream that keeps every copy of every header."""
    with RecordingUpstream() as u:
        yield u


@pytest.fixture(scope="module")
def lnd(wasm) -> Iterator[Backend]:
    b = Backend("lnd")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def gw(lnd, up) -> Iterator[Gateway]:
    """The policy gateway: every route rule above, unmatched requests denied."""
    g = Gateway(lnd, up.port, ROUTES, unmatched="deny")
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture
def log(up) -> RecordingUpstream:
    up.clear()
    return up


def entries(up: RecordingUpstream) -> list[tuple[str, str]]:
    return [(e["method"], e["path"]) for e in up.requests()]


def header_copies(entry: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in entry["header_list"] if k == name]


def challenged(r, reason: str, service: str, price_msat: int) -> tuple[str, str]:
    """A 402 for ``service`` at ``price_msat`` whose invoice says so; returns (macaroon, invoice)."""
    body = assert_challenge(r, reason, service)
    mac, invoice = challenge_parts(r)
    decoded = bolt11.decode(invoice)
    assert decoded.amount_msat == price_msat == body["price_msat"], (decoded.amount_msat, body)
    assert body["price_sat"] == -(-price_msat // 1000) and body["invoice"] == invoice
    info = inspect(mac)
    assert decoded.payment_hash == info["identifier"]["payment_hash"]
    assert info["caveats"][0] == f"services={service}:0", info
    return mac, invoice


# -- prices and services --------------------------------------------------------------------------

def test_prices_in_sat_and_msat(gw, log):
    for path, service, price_msat in (("/a/x", "a", 7_000), ("/b/x", "b", 12_345)):
        _, invoice = challenged(gw.request(path), "payment_required", service, price_msat)
        assert bolt11.decode(invoice).description == f"{service} API access"
    assert log.requests() == []


def test_token_for_one_service_is_refused_on_another(gw, log):
    cred = gw.buy("/a/x")
    assert gw.request("/a/x", cred).status == 200
    r = gw.request("/b/x", cred)
    mac, _ = challenged(r, "wrong_service", "b", 12_345)
    assert inspect(mac)["identifier"]["payment_hash"] != inspect(cred)["identifier"]["payment_hash"]
    assert entries(log) == [("GET", "/a/x")]
    (e,) = log.requests()
    assert e["headers"]["x-l402-service"] == "a" and e["headers"]["x-l402-token-id"] == token_id_of(cred)


def test_capability_route(gw, log):
    # A token of the right service without the capability: minted by the operator, or bought on a
    # route of the same service that needs none.
    plain = mint(gw.secret, "admin")
    r = gw.request("/admin/users", plain)
    mac, invoice = challenged(r, "capability_missing", "admin", 3_000)
    assert "admin_capabilities=admin" in inspect(mac)["caveats"]
    bought = gw.buy("/admin/read/users")
    assert "admin_capabilities=admin" not in inspect(bought)["caveats"]
    assert gw.request("/admin/read/users", bought).status == 200
    challenged(gw.request("/admin/users", bought), "capability_missing", "admin", 3_000)
    # The challenge of the capability route mints a token that has it.
    capable = f"L402 {mac}:{gw.backend.pay(invoice)}"
    assert gw.request("/admin/users", capable).status == 200
    assert gw.request("/admin/read/users", capable).status == 200
    assert entries(log) == [("GET", "/admin/read/users"), ("GET", "/admin/users"), ("GET", "/admin/read/users")]
    assert [e["headers"]["x-l402-token-id"] for e in log.requests()] == [
        token_id_of(bought), token_id_of(capable), token_id_of(capable)]


# -- matching -------------------------------------------------------------------------------------

MATCHING = [
    # method, path, Host, expected: "free" | (402, service) | 403
    ("GET", "/health", None, "free"),
    ("GET", "/v1/status", None, "free"),                  # the exact rule comes first
    ("GET", "/v1/status/x", None, (402, "weather")),
    ("GET", "/v1/statusx", None, (402, "weather")),
    ("GET", "/files/q3/report.pdf", None, (402, "reports")),
    ("GET", "/files/q3/extra/report.pdf", None, 403),      # `*` is one segment
    ("GET", "/files/report.pdf", None, 403),
    ("GET", "/files/a/b/c/data.json", None, "free"),       # `**` is any number of segments
    ("GET", "/files/data.json", None, "free"),
    ("GET", "/files/a/data.csv", None, 403),
    ("GET", "/h/x", "paid.example.com", (402, "hosted")),
    ("GET", "/h/x", "PAID.example.com:8443", (402, "hosted")),
    ("GET", "/h/x", "eu.free.example", "free"),
    ("GET", "/h/x", "free.example", 403),
    ("GET", "/h/x", "paid.example.com.evil", 403),
    ("GET", "/h/x", None, 403),
    ("GET", "/m/item", None, "free"),
    ("POST", "/m/item", None, (402, "writes")),
    ("PUT", "/m/item", None, (402, "writes")),
    ("DELETE", "/m/item", None, "free"),
    ("GET", "/nowhere", None, 403),
    ("POST", "/", None, 403),
]


def test_route_matching(gw, log):
    expected_upstream = []
    for method, path, host, expected in MATCHING:
        headers = {"Host": host} if host else {}
        r = gw.request(path, method=method, headers=headers, body=b"" if method in ("POST", "PUT") else None)
        where = (method, path, host)
        if expected == "free":
            assert r.status == 200, (where, r.status, r.text)
            expected_upstream.append((method, path))
        elif expected == 403:
            assert r.status == 403, (where, r.status, r.text)
            assert r.json()["reason"] == "no_route", where
            assert "www-authenticate" not in r.headers
        else:
            status, service = expected
            assert r.status == status, (where, r.status, r.text)
            assert r.json()["service"] == service, (where, r.json())
    assert entries(log) == expected_upstream
    # Free requests carry no metering header.
    assert not [e for e in log.requests() if any(h in e["headers"] for h in METERING)]


def test_restricted_token(gw, log):
    cred = gw.buy("/docs/public/a")
    caveats = inspect(cred)["caveats"]
    assert "docs_path_prefix=/docs/public/" in caveats and "docs_methods=GET" in caveats, caveats
    assert gw.request("/docs/public/a", cred).status == 200
    assert gw.request("/docs/public/deeper/b", cred).status == 200
    challenged(gw.request("/docs/private/x", cred), "restricted", "docs", 6_000)
    challenged(gw.request("/docs/public/a", cred, method="POST", body=b"x"), "restricted", "docs", 6_000)
    challenged(gw.request("/docs/public/a", cred, method="DELETE"), "restricted", "docs", 6_000)
    assert entries(log) == [("GET", "/docs/public/a"), ("GET", "/docs/public/deeper/b")]


def test_freebies(gw, log):
    before = gw.counters().get("l402_freebies_granted", 0)
    # A refused credential is no freebie.
    assert_challenge(gw.request("/trial/x", "L402 bm90IGEgbWFjYXJvb24=:" + "00" * 32), "malformed", "trial")
    for i in range(3):
        r = gw.request(f"/trial/{i}", headers=FORGED)
        assert r.status == 200, (i, r.status, r.text)
    assert_challenge(gw.request("/trial/3"), "payment_required", "trial")
    # 127.0.0.2 is in the same /24 network: the same allowance, used up.
    assert_challenge(http_from("127.0.0.2", gw.url("/trial/4")), "payment_required", "trial")
    assert entries(log) == [("GET", "/trial/0"), ("GET", "/trial/1"), ("GET", "/trial/2")]
    for e in log.requests():
        assert not [k for k, _ in e["header_list"] if k in METERING], e["header_list"]
    # A paying client is not held to the allowance.
    cred = gw.buy("/trial/5")
    assert gw.request("/trial/5", cred).status == 200
    assert wait_until(lambda: gw.counters().get("l402_freebies_granted") == before + 3, timeout=5)
    time.sleep(1.2)
    assert gw.counters().get("l402_freebies_granted") == before + 3


# -- what the upstream is handed ------------------------------------------------------------------

def test_upstream_handoff_default(gw, log):
    cred = gw.buy("/v1/forecast")
    tid = inspect(cred)["identifier"]["token_id"]
    assert gw.request("/v1/forecast", cred, headers=FORGED).status == 200
    assert gw.request("/health", headers=FORGED).status == 200
    paid, free = log.requests()
    assert "authorization" not in paid["headers"]
    assert header_copies(paid, "x-l402-token-id") == [tid]
    assert header_copies(paid, "x-l402-service") == ["weather"]
    assert header_copies(paid, "x-l402-price-msat") == ["10000"]
    assert header_copies(paid, "x-paid") == ["1"]  # not a metering header here: passed as sent
    for name in METERING:
        assert header_copies(free, name) == [], (name, free["header_list"])


@pytest.fixture(scope="module")
def gw_custom(lnd, up) -> Iterator[Gateway]:
    """Unmatched requests pass; the credential is forwarded, no service header, price as x-paid."""
    routes = [{"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10},
              {"match": {"path_prefix": "/health"}, "free": True}]
    g = Gateway(lnd, up.port, routes, unmatched="free",
                upstream_headers={"strip_credential": False, "service": None, "price_msat": "x-paid"})
    try:
        yield g
    finally:
        g.stop()


def test_unmatched_free_vs_deny(gw, gw_custom, log):
    r = gw.request("/elsewhere")
    assert r.status == 403 and r.json()["reason"] == "no_route"
    assert log.requests() == []
    r = gw_custom.request("/elsewhere", headers=FORGED)
    assert r.status == 200 and r.json()["path"] == "/elsewhere"
    (e,) = log.requests()
    assert header_copies(e, "x-l402-token-id") == [] and header_copies(e, "x-paid") == []
    assert_challenge(gw_custom.request("/v1/x"), "payment_required", "weather")


def test_upstream_handoff_configured(gw_custom, log):
    cred = gw_custom.buy("/v1/forecast")
    tid = inspect(cred)["identifier"]["token_id"]
    assert gw_custom.request("/v1/forecast", cred, headers=FORGED).status == 200
    assert gw_custom.request("/health", headers=FORGED).status == 200
    paid, free = log.requests()
    assert header_copies(paid, "authorization") == [cred]
    assert header_copies(paid, "x-l402-token-id") == [tid]
    assert header_copies(paid, "x-paid") == ["10000"]
    assert header_copies(paid, "x-l402-price-msat") == ["1"]  # no longer a metering header: as sent
    for name in ("x-l402-token-id", "x-paid"):
        assert header_copies(free, name) == [], (name, free["header_list"])
    # With the service header turned off the filter sets none: x-l402-service is an ordinary header.
    assert header_copies(paid, "x-l402-service") == ["forged"]


# -- dynamic prices -------------------------------------------------------------------------------

class Pricer:
    """The operator's pricing endpoint on 127.0.0.1: answers every POST with ``answer`` (after
    ``delay_s``, with ``status``) and records each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {"price_msat": 1_000}
        self.status = 200
        self.delay_s = 0.0
        self.lock = threading.Lock()
        pricer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with pricer.lock:
                    pricer.calls.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                         "body": json.loads(body) if body else None})
                    status, answer, delay = pricer.status, pricer.answer, pricer.delay_s
                time.sleep(delay)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, answer: dict[str, Any] | None = None, status: int = 200, delay_s: float = 0.0) -> None:
        with self.lock:
            self.answer = answer if answer is not None else self.answer
            self.status, self.delay_s = status, delay_s
            self.calls.clear()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_pricer_cluster(port: int):
    """Adds the Envoy cluster ``pricer`` (127.0.0.1:port) to a shipped template."""
    def edit(template: str) -> str:
        tail = template[template.index("\n  clusters:\n"):]
        assert not [l for l in tail.splitlines()[2:] if l[:1].isalpha()], "the clusters must end the template"
        return template.rstrip("\n") + f"""
  - name: pricer
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: pricer
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"""
    return edit


PRICING_TIMEOUT_MS = 500


def priced_gateway(lnd, up, pricer: Pricer, on_error: str, **route: Any) -> Gateway:
    pricing = {"upstream": "pricer", "authority": f"127.0.0.1:{pricer.port}", "path": "/price", "tls": False,
               "timeout_ms": PRICING_TIMEOUT_MS, "cache_s": 60, "headers": ["x-model"], "on_error": on_error}
    routes = [{"match": {"path_prefix": "/llm/"}, "service": "llm", "dynamic_price": True, **route}]
    return Gateway(lnd, up.port, routes, pricing=pricing, template_edit=with_pricer_cluster(pricer.port))


@pytest.fixture(scope="module")
def pricer() -> Iterator[Pricer]:
    p = Pricer()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def gw_priced(lnd, up, pricer) -> Iterator[Gateway]:
    g = priced_gateway(lnd, up, pricer, "deny")
    try:
        yield g
    finally:
        g.stop()


@pytest.fixture(scope="module")
def gw_priced_static(lnd, up, pricer) -> Iterator[Gateway]:
    g = priced_gateway(lnd, up, pricer, "static", price_sat=21)
    try:
        yield g
    finally:
        g.stop()


def test_dynamic_price_is_asked_cached_and_minted(gw_priced, pricer, log):
    g = gw_priced
    pricer.set({"price_msat": 4_242, "lifetime_s": 120, "capabilities": ["gpt", "long"]})
    t0 = int(time.time())
    r = g.request("/llm/chat?x=1", headers={"X-Model": "big", "X-Other": "not sent"})
    mac, invoice = challenged(r, "payment_required", "llm", 4_242)
    (call,) = pricer.calls
    assert call["path"] == "/price" and call["headers"]["content-type"] == "application/json"
    assert call["body"] == {"method": "GET", "path": "/llm/chat?x=1", "service": "llm", "headers": {"x-model": "big"}}
    caveats = inspect(mac)["caveats"]
    assert "llm_capabilities=gpt,long" in caveats and "llm_price_msat=4242" in caveats, caveats
    (until,) = [int(c.split("=", 1)[1]) for c in caveats if c.startswith("llm_valid_until=")]
    assert t0 + 120 <= until <= int(time.time()) + 120

    # Cached per (method, path), whatever the headers: no new call, the same price.
    pricer.set({"price_msat": 9_999})
    for headers in ({"X-Model": "big"}, {"X-Model": "small"}, {}):
        challenged(g.request("/llm/chat?x=1", headers=headers), "payment_required", "llm", 4_242)
    assert pricer.calls == []
    # Another path, another method: asked again.
    pricer.set({"price_sat": 5})
    challenged(g.request("/llm/other"), "payment_required", "llm", 5_000)
    challenged(g.request("/llm/chat?x=1", method="POST", body=b"{}"), "payment_required", "llm", 5_000)
    assert [c["body"]["path"] for c in pricer.calls] == ["/llm/other", "/llm/chat?x=1"]
    assert [c["body"]["method"] for c in pricer.calls] == ["GET", "POST"]
    assert pricer.calls[0]["body"]["headers"] == {}

    # The token bought at the quoted price opens the method and path it was quoted for (any query),
    # nothing else of the service; the upstream is told that price.
    assert "llm_path=/llm/chat" in caveats and "llm_methods=GET" in caveats, caveats
    cred = f"L402 {mac}:{g.backend.pay(invoice)}"
    pricer.set()
    assert g.request("/llm/chat?x=1", cred).status == 200
    assert g.request("/llm/chat?x=2", cred).status == 200
    assert g.request("/llm/chat", cred, method="POST").status == 402
    assert g.request("/llm/anything", cred).status == 402
    assert [(e["path"], header_copies(e, "x-l402-price-msat")) for e in log.requests()] == [
        ("/llm/chat?x=1", ["4242"]), ("/llm/chat?x=2", ["4242"])]


@pytest.mark.parametrize("fault", ["status500", "bad_answer", "slow"])
def test_pricing_outage_denies(gw_priced, pricer, log, fault):
    g = gw_priced
    pricer.set({"price_msat": 1_000})
    cred = g.buy(f"/llm/bought-{fault}")
    creates = g.backend.sim.stats()["invoice_create"]
    pricer.set(*{"status500": ({"error": "down"}, 500), "bad_answer": ({"price_msat": 0}, 200),
                 "slow": ({"price_msat": 1_000}, 200, PRICING_TIMEOUT_MS / 1000 * 3)}[fault])
    path = f"/llm/outage-{fault}"
    t0 = time.monotonic()
    r = g.request(path)
    elapsed = time.monotonic() - t0
    assert r.status == 503, (r.status, r.text)
    assert r.json()["reason"] == "pricing_unavailable" and r.headers.get("retry-after") == "5", r.json()
    assert "www-authenticate" not in r.headers
    assert len(pricer.calls) == 1
    if fault == "slow":
        assert elapsed < PRICING_TIMEOUT_MS / 1000 + 0.7, elapsed
    assert g.backend.sim.stats()["invoice_create"] == creates, "an invoice without a price"
    # A paid request needs no price: it passes during the outage.
    assert g.request(f"/llm/bought-{fault}", cred).status == 200
    assert len(pricer.calls) == 1
    # A failed answer is not cached: once the pricer is back the path is priced.
    pricer.set({"price_msat": 3_000})
    time.sleep(PRICING_TIMEOUT_MS / 1000 * 3 if fault == "slow" else 0)
    challenged(g.request(path), "payment_required", "llm", 3_000)
    assert [(e["path"], header_copies(e, "x-l402-price-msat")) for e in log.requests()] == [(f"/llm/bought-{fault}", ["1000"])]


def test_pricing_outage_falls_back_to_the_static_price(gw_priced_static, pricer, log):
    g = gw_priced_static
    pricer.set({"error": "down"}, status=500)
    r = g.request("/llm/chat")
    mac, invoice = challenged(r, "payment_required", "llm", 21_000)
    assert len(pricer.calls) == 1
    cred = f"L402 {mac}:{g.backend.pay(invoice)}"
    assert g.request("/llm/chat", cred).status == 200
    (e,) = log.requests()
    assert header_copies(e, "x-l402-price-msat") == ["21000"]
    # When the pricer answers again, its price is used.
    pricer.set({"price_msat": 2_500})
    challenged(g.request("/llm/next"), "payment_required", "llm", 2_500)
