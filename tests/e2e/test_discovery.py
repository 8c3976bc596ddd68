"""The discovery manifest through a real Envoy on the LND simulator: what `/.well-known/l402-services`
lists for a demo-like config and for one with both dialects, a dynamic price, capabilities and a
hidden route; that each listed route answers as listed; HTTP caching (ETag, 304, max-age, HEAD); and
that without `discovery.enabled` the path is an ordinary path. The filter answers the manifest
itself: the upstream and the node never see it."""

from __future__ import annotations

import re
from typing import Iterator

import pytest

from payment_support import challenges, decoded, payment_challenge
from test_filter_support import Backend, Gateway

WELL_KNOWN = "/.well-known/l402-services"
DEMO_ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
]


@pytest.fixture(scope="module")
def lnd(wasm) -> Iterator[Backend]:
    backend = Backend("lnd")
    try:
        yield backend
    finally:
        backend.stop()


def test_demo_manifest_and_its_caching(lnd, clean_upstream):
    g = Gateway(lnd, clean_upstream.port, DEMO_ROUTES, discovery={"enabled": True})
    try:
        invoices = lnd.invoices_created()
        r = g.request(WELL_KNOWN)
        assert r.status == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "public, max-age=300"
        etag = r.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag), etag
        assert r.json() == {
            "version": "1",
            "service": {},
            "payment_methods": [{"type": "lightning", "backend": "LND"}],
            "routes": [{"path": "/v1/", "path_match": "prefix", "service": "weather",
                        "price": {"type": "static", "amount_msat": 10000, "amount_sat": 10}, "schemes": ["l402"],
                        "caveats_required": ["services=weather:0"], "macaroon_timeout_secs": 3600}],
        }
        # Revalidation: any list naming the tag, weakly or not, or *.
        for tags in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
            again = g.request(WELL_KNOWN, headers={"If-None-Match": tags})
            assert (again.status, again.body) == (304, b""), tags
            assert again.headers["etag"] == etag and again.headers["cache-control"] == "public, max-age=300"
        assert g.request(WELL_KNOWN, headers={"If-None-Match": '"stale"'}).json() == r.json()
        head = g.request(WELL_KNOWN, method="HEAD")
        assert (head.status, head.body, head.headers["etag"]) == (200, b"", etag)
        assert int(head.headers["content-length"]) == len(r.body)
        assert g.request(WELL_KNOWN + "?fresh=1").body == r.body
        post = g.request(WELL_KNOWN, method="POST", body=b"{}")
        assert post.status == 405 and post.headers["allow"] == "GET, HEAD"
        # Answered by the filter alone.
        assert clean_upstream.requests() == [] and lnd.invoices_created() == invoices
        # The route asks what the manifest says.
        challenge = g.request("/v1/forecast").json()
        assert (challenge["price_sat"], challenge["price_msat"]) == (10, 10000)
    finally:
        g.stop()


COMPLEX_ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/", "methods": ["GET", "HEAD"]}, "service": "weather", "price_sat": 10,
     "lifetime_s": 600, "capabilities": ["read"], "schemes": ["l402", "payment"]},
    {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
    {"match": {"path_prefix": "/llm/"}, "service": "llm", "dynamic_price": True},
    {"match": {"path_prefix": "/internal/"}, "service": "internal", "price_sat": 100, "public": False},
    {"match": {"path_glob": "/files/**/*.json", "host": "*.example.com"}, "service": "files", "price_msat": 1500,
     "uses": 2, "restrict": {"path_prefix": "/files/public/", "methods": ["GET"]},
     "freebies": {"requests": 1, "period_s": 60}},
]


def test_complex_manifest_lists_what_each_route_asks(lnd, clean_upstream):
    service = {"name": "Weather API", "contact": "ops@example.com"}
    g = Gateway(lnd, clean_upstream.port, COMPLEX_ROUTES, node={"strict": True, "macaroon_only": True},
                pricing={"upstream": "pricer", "authority": "pricer:80", "path": "/price"},
                discovery={"enabled": True, "path": "/api/services", "max_age_s": 60, "service": service})
    try:
        r = g.request("/api/services")
        assert r.status == 200 and r.headers["cache-control"] == "public, max-age=60"
        doc = r.json()
        assert doc["service"] == service
        assert doc["routes"] == [
            {"path": "/v1/", "path_match": "prefix", "methods": ["GET", "HEAD"], "service": "weather",
             "price": {"type": "static", "amount_msat": 10000, "amount_sat": 10}, "schemes": ["l402", "payment"],
             "capabilities": ["read"], "caveats_required": ["services=weather:0", "weather_capabilities=read"],
             "macaroon_timeout_secs": 600, "auto_detect_payment": True},
            {"path": "/pay/", "path_match": "prefix", "service": "quotes",
             "price": {"type": "static", "amount_msat": 5000, "amount_sat": 5}, "schemes": ["payment"]},
            {"path": "/llm/", "path_match": "prefix", "service": "llm", "price": {"type": "dynamic"},
             "schemes": ["l402"], "caveats_required": ["services=llm:0"], "auto_detect_payment": True},
            {"path": "/files/**/*.json", "path_match": "glob", "host": "*.example.com", "service": "files",
             "price": {"type": "static", "amount_msat": 1500, "amount_sat": 2}, "schemes": ["l402"],
             "caveats_required": ["services=files:0", "files_path_prefix=/files/public/", "files_methods=GET"],
             "auto_detect_payment": True, "uses": 2, "freebies": {"requests": 1, "period_s": 60}},
        ]
        # Each listed dialect and price is what the route's 402 offers.
        both = g.request("/v1/forecast")
        assert [s for s, _ in challenges(both.header_values("www-authenticate"))] == ["LSAT", "L402", "Payment"]
        assert both.json()["price_msat"] == 10000
        assert decoded(payment_challenge(both)["request"])["amount"] == "10"
        charge = g.request("/pay/q")
        assert decoded(payment_challenge(charge)["request"])["amount"] == "5"
        files = g.request("/files/public/a.json", headers={"Host": "eu.example.com"})
        assert files.status == 200  # its one freebie
        files = g.request("/files/public/a.json", headers={"Host": "eu.example.com"})
        assert files.json()["price_msat"] == 1500
        # The hidden route is enforced all the same; the default path is an ordinary path here.
        assert g.request("/internal/x").json()["service"] == "internal"
        assert g.request(WELL_KNOWN).status == 403
    finally:
        g.stop()


def test_without_discovery_the_path_goes_through_the_routes(lnd, clean_upstream):
    denied = Gateway(lnd, clean_upstream.port, DEMO_ROUTES)
    try:
        r = denied.request(WELL_KNOWN)
        assert r.status == 403 and r.json()["reason"] == "no_route"
    finally:
        denied.stop()
    passed = Gateway(lnd, clean_upstream.port, DEMO_ROUTES, unmatched="free",
                     discovery={"enabled": False, "max_age_s": 60})
    try:
        r = passed.request(WELL_KNOWN)
        assert r.status == 200 and r.json()["upstream"] == "l402-test-upstream"
        assert [e["path"] for e in clean_upstream.requests()] == [WELL_KNOWN]
    finally:
        passed.stop()
