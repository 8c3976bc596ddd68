"""The browser's page and cookie on Kong's engine: the HTML 402 where the client prefers it (with the
challenge in the one `WWW-Authenticate` value nginx keeps), the redemption's local 303 with its
`Set-Cookie`, and the cookie as the credential, blanked out of the `Cookie` header the API gets
(nginx forwards a removed header, so the filter sets it to the other cookies, or to nothing)."""

from __future__ import annotations

import pytest

from engine import ENGINES, engine_params
from kong_common import config, lnd_node, token

ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600,
     "browser": {"cookie": True}},
]


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
def test_page_redemption_and_cookie(gateway, api, lnd, nginx):
    engine = gateway(config(lnd_node(lnd), ROUTES), nginx, workers=1)
    page = engine.get("/v1/forecast", {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status == 402 and page.headers["content-type"].startswith("text/html")
    assert "L402 macaroon=" in page.headers["www-authenticate"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert b"<svg" in page.body and b"lightning:" in page.body.lower()
    assert engine.get("/v1/forecast").headers["content-type"] == "application/json"

    credential = token("weather")
    redeemed = engine.get("/v1/forecast?l402-redeem", {"Authorization": credential, "Sec-Fetch-Site": "same-origin"},
                          method="POST")
    assert redeemed.status == 303 and redeemed.headers["location"] == "/v1/forecast", redeemed.text
    set_cookie = redeemed.headers["set-cookie"]
    assert set_cookie.startswith("l402-weather=") and "HttpOnly" in set_cookie and "Secure" in set_cookie
    assert api.requests() == [], "a redemption never reaches the API"

    value = set_cookie.split(";", 1)[0]
    assert engine.get("/v1/forecast", {"Cookie": f"theme=dark; {value}"}).status == 200
    assert engine.get("/v1/forecast", {"Cookie": value}).status == 200
    seen = [e["headers"].get("cookie") for e in api.requests()]
    assert seen[0] == "theme=dark" and seen[1] in (None, ""), seen
    # A tampered cookie gets the page again and never the API.
    tampered = value[:-2] + ("00" if not value.endswith("00") else "11")
    refused = engine.get("/v1/forecast", {"Cookie": tampered, "Accept": "text/html"})
    assert refused.status == 402 and len(api.requests()) == 2


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
def test_host_rules_read_the_clients_host(gateway, api, lnd, nginx):
    """`match.host` compares the client's host: the engine's `:authority` is nginx's own server name."""
    routes = [{"match": {"host": "api.example.com", "path_prefix": "/v1/"}, "service": "weather", "price_sat": 10},
              {"match": {"path_prefix": "/v1/"}, "free": True}]
    engine = gateway(config(lnd_node(lnd), routes), nginx, workers=1)
    assert engine.get("/v1/x", {"Host": "api.example.com"}).status == 402
    assert engine.get("/v1/x", {"Host": "API.example.com.:8443"}).status == 402
    assert engine.get("/v1/x", {"Host": "other.example.com"}).status == 200
    assert [e["path"] for e in api.requests()] == ["/v1/x"]
