"""A person in a browser, on routes with `browser`: Debian's Chromium (driven by playwright-core
through tests/e2e/clients/browser.mjs) gets the HTML 402 page from a real Envoy invoicing on the
real LNbits, its QR code decodes (zbarimg) to the invoice, the page works without JavaScript, and a
WebLN wallet (or a preimage pasted from a phone wallet) pays and lands the browser on the paid
resource with the upstream's 200. The cookie it then holds is refused on another service's route,
on a route without the opt-in, after expiry and when tampered with, and never reaches the upstream;
redemptions are refused with their reason, pass upstream in a dry run, and show in the access log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from attacks import credential as l402_credential
from attacks import py_mint
from harness import ROOT, RUN_DIR
from ops_support import LoggingGateway
from test_filter_support import CLIENTS_DIR, Backend, Gateway, token_id_of

BROWSER_JS = Path(__file__).resolve().parent / "clients" / "browser.mjs"
CHROMIUM_ACCEPT = ("text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,"
                   "*/*;q=0.8,application/signed-exchange;v=b3;q=0.7")
ROUTES = [
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 600,
     "browser": {"cookie": True}},
    # The same service without the opt-in: the cookie is not read there.
    {"match": {"path_prefix": "/api/"}, "service": "weather", "price_sat": 10, "lifetime_s": 600},
    {"match": {"path_prefix": "/quotes/"}, "service": "quotes", "price_sat": 5, "lifetime_s": 600,
     "browser": {"cookie": True}},
    {"match": {"path_prefix": "/short/"}, "service": "short", "price_sat": 1, "lifetime_s": 2,
     "browser": {"cookie": True}},
    {"match": {"path_prefix": "/dev/"}, "service": "dev", "price_sat": 1, "browser": {"cookie": True, "cookie_secure": False}},
    {"match": {"path_prefix": "/page/"}, "service": "page", "price_sat": 1, "browser": {}},
    {"match": {"path_prefix": "/try/"}, "service": "try", "price_sat": 1, "browser": {"cookie": True},
     "dry_run": True},
]
SCREENSHOT = ROOT / "docs" / "402-page.png"


@pytest.fixture(scope="module")
def gw(lnbits, upstream) -> Iterator[Gateway]:
    assert shutil.which("zbarimg") and Path("/usr/bin/chromium").exists(), "run ./build.sh setup"
    gateway = Gateway(Backend("lnbits", lnbits), upstream.port, ROUTES)
    try:
        yield gateway
    finally:
        gateway.stop()


def browse(gw: Gateway, path: str, **request: Any) -> dict[str, Any]:
    """One visit in a fresh Chromium profile (see browser.mjs); the wallet is LNbits' payer."""
    request.setdefault("wallet", {"lnbits_url": gw.backend.lnbits.url, "adminkey": gw.backend.lnbits.payer.adminkey})
    r = subprocess.run(["node", str(BROWSER_JS)], input=json.dumps({"url": gw.url(path), **request}),
                       capture_output=True, text=True, timeout=90, cwd=CLIENTS_DIR)
    assert r.returncode == 0, f"browser.mjs failed:\n{r.stderr}"
    return json.loads(r.stdout)


def qr_text(png: Path) -> str:
    r = subprocess.run(["zbarimg", "-q", "--raw", str(png)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"zbarimg found no code in {png}: {r.stderr}"
    return r.stdout.strip()


def invoice_of(www_authenticate: str) -> str:
    return re.search(r'L402 macaroon="[^"]+", invoice="([^"]+)"', www_authenticate).group(1)


def csp_violations(answer: dict[str, Any]) -> list[str]:
    return [m for m in answer["console"] if "Content Security Policy" in m or "pageerror" in m]


def buy(gw: Gateway, path: str) -> str:
    """The credential `<macaroon>:<preimage>` of a paid challenge for `path` (the scheme left off)."""
    return gw.buy(path).split(" ", 1)[1]


def redeem(gw: Gateway, path: str, credential: str | None, site: str = "same-origin"):
    headers = {"Sec-Fetch-Site": site}
    if credential is not None:
        headers["Authorization"] = f"L402 {credential}"
    return gw.request(f"{path}{'&' if '?' in path else '?'}l402-redeem", method="POST", headers=headers)


def set_cookie(r) -> dict[str, str]:
    """`Set-Cookie` as {name, value, attribute: value-or-""}."""
    (header,) = r.header_values("set-cookie")
    first, *attributes = [p.strip() for p in header.split(";")]
    name, _, value = first.partition("=")
    out = {"name": name, "value": value}
    for a in attributes:
        key, _, v = a.partition("=")
        out[key.lower()] = v
    return out


def with_cookie(gw: Gateway, path: str, cookie: str, accept: str = "application/json"):
    return gw.request(path, headers={"Cookie": cookie, "Accept": accept})


# -- the page --------------------------------------------------------------------------------------

def test_browsers_get_the_page_and_api_clients_json(gw, clean_upstream):
    page = gw.request("/v1/forecast", headers={"Accept": CHROMIUM_ACCEPT})
    assert page.status == 402 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert [v.split(" ", 1)[0] for v in page.header_values("www-authenticate")] == ["LSAT", "L402"]
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert csp.pop("style-src").startswith("'sha256-") and csp.pop("script-src").startswith("'sha256-")
    assert csp == {"default-src": "'none'", "connect-src": "'self'", "form-action": "'self'",
                   "base-uri": "'none'", "frame-ancestors": "'none'"}
    assert page.headers["cache-control"] == "no-store" and page.headers["vary"] == "Accept"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert invoice_of(page.headers["www-authenticate"]) in page.text

    # curl's */*, fetch()'s default and a JSON client get JSON, as on any route.
    for accept in ("*/*", "application/json", "text/html, application/json"):
        r = gw.request("/v1/forecast", headers={"Accept": accept})
        assert r.status == 402 and r.json()["reason"] == "payment_required", accept
        assert r.headers["vary"] == "Accept"
    # A route without `browser` answers JSON whatever the client prefers.
    plain = gw.request("/api/forecast", headers={"Accept": CHROMIUM_ACCEPT})
    assert plain.json()["service"] == "weather" and "vary" not in plain.headers
    assert clean_upstream.requests() == []


def test_the_page_renders_and_its_qr_code_is_the_invoice(gw, clean_upstream):
    shots = RUN_DIR / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    answer = browse(gw, "/v1/forecast", webln=True, screenshot=str(shots / "402-page.png"),
                    qr_screenshot=str(shots / "qr.png"))
    assert answer["status"] == 402
    invoice = invoice_of(answer["headers"]["www-authenticate"])
    page = answer["page"]
    assert page["title"] == "Payment required: weather"
    for shown in ("Payment required", "weather API access", "10 sat", "Open in wallet", "Pay with WebLN"):
        assert shown in page["text"], shown
    assert re.fullmatch(r"in (10:00|9:5\d)", page["countdown"]), page["countdown"]
    assert page["invoice"] == invoice
    assert page["qr_href"] == page["open_href"] == f"lightning:{invoice}"
    assert page["webln_shown"] and page["copy_shown"] and page["form_action"] == "/v1/forecast?l402-redeem"
    assert qr_text(shots / "qr.png") == f"LIGHTNING:{invoice.upper()}"
    assert not csp_violations(answer), answer["console"]
    if os.environ.get("L402_UPDATE_DOCS"):
        shutil.copy(shots / "402-page.png", SCREENSHOT)
    assert clean_upstream.requests() == []


def test_without_javascript_the_qr_code_and_the_invoice_are_there(gw):
    shot = RUN_DIR / "browser" / "qr-nojs.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    answer = browse(gw, "/v1/forecast", javascript=False, qr_screenshot=str(shot))
    page = answer["page"]
    invoice = invoice_of(answer["headers"]["www-authenticate"])
    assert page["invoice"] == invoice and page["open_href"] == f"lightning:{invoice}"
    assert page["qr_svg"].startswith("<svg") and qr_text(shot) == f"LIGHTNING:{invoice.upper()}"
    assert page["countdown"] == "in 10 minutes"
    # What needs the script stays hidden; the page says so.
    assert not page["webln_shown"] and not page["copy_shown"]
    assert "needs JavaScript" in page["text"] and "paste it here" not in page["text"]


def test_a_page_only_route_shows_no_redemption(gw):
    page = gw.request("/page/x", headers={"Accept": CHROMIUM_ACCEPT})
    assert page.status == 402 and "<svg" in page.text
    assert "<form" not in page.text and "Authorization: L402 &lt;macaroon&gt;:&lt;preimage&gt;" in page.text
    # Without the cookie, the reserved parameter is just a parameter: a paid request goes upstream.
    r = redeem(gw, "/page/x", buy(gw, "/page/x"))
    assert r.status == 200 and "set-cookie" not in r.headers


# -- paying in the browser -------------------------------------------------------------------------

def test_webln_pays_and_the_browser_lands_on_the_resource(gw, clean_upstream):
    before = time.time()
    answer = browse(gw, "/v1/forecast?city=paris", webln=True, pay_with_webln=True,
                    cookies=[{"name": "theme", "value": "dark", "url": gw.url("/")}])
    (paid,) = answer["paid"]
    assert paid["invoice"] == answer["page"]["invoice"]
    landed = answer["landed"]
    assert landed["url"] == gw.url("/v1/forecast?city=paris") and landed["status"] == 200
    assert json.loads(landed["body"])["upstream"] == "l402-test-upstream"
    (cookie,) = [c for c in answer["cookies"] if c["name"] == "l402-weather"]
    assert (cookie["path"], cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == ("/v1/", True, True, "Strict")
    assert before + 590 <= cookie["expires"] <= time.time() + 610
    assert cookie["value"].endswith(f":{paid['preimage']}")
    assert not csp_violations(answer), answer["console"]

    # The redemption never reached the upstream; the resource did, without the credential's cookie.
    (seen,) = clean_upstream.requests()
    assert (seen["method"], seen["path"]) == ("GET", "/v1/forecast?city=paris")
    assert seen["headers"]["cookie"] == "theme=dark"
    assert seen["headers"]["x-l402-service"] == "weather"
    assert seen["headers"]["x-l402-token-id"] == token_id_of(f"L402 {cookie['value']}")


def test_a_preimage_pasted_from_a_wallet_redeems_too(gw, clean_upstream):
    answer = browse(gw, "/quotes/today", paste={"wrong_first": True})
    # A wrong preimage: the gateway's reason, on the same page and invoice.
    wrong = answer["wrong"]
    assert wrong["status_text"] == "Not accepted: preimage does not match the token's payment hash"
    assert wrong["invoice"] == answer["page"]["invoice"]
    landed = answer["landed"]
    assert landed["url"] == gw.url("/quotes/today") and landed["status"] == 200
    assert [c["name"] for c in answer["cookies"]] == ["l402-quotes"]
    assert [(e["method"], e["path"]) for e in clean_upstream.requests()] == [("GET", "/quotes/today")]


# -- the cookie ------------------------------------------------------------------------------------

def test_redemption_sets_a_scoped_cookie_and_spends_nothing(gw, clean_upstream):
    credential = buy(gw, "/v1/a")
    r = redeem(gw, "/v1/a?x=1", credential)
    assert r.status == 303 and r.headers["location"] == "/v1/a?x=1" and r.body == b""
    c = set_cookie(r)
    assert (c["name"], c["value"], c["path"]) == ("l402-weather", credential, "/v1/")
    assert 595 <= int(c["max-age"]) <= 600
    assert {"httponly", "samesite", "secure"} <= set(c) and c["samesite"] == "Strict"
    assert r.headers["cache-control"] == "no-store"
    # Secure is configurable off, for plain-HTTP development only.
    dev = set_cookie(redeem(gw, "/dev/x", buy(gw, "/dev/x")))
    assert "secure" not in dev and "max-age" not in dev, "a token without expiry: a session cookie"
    assert clean_upstream.requests() == []

    # The cookie opens the route, and the upstream never sees it.
    ok = with_cookie(gw, "/v1/b", f"l402-weather={credential}; lang=en")
    assert ok.status == 200
    (seen,) = clean_upstream.requests()
    assert seen["headers"]["cookie"] == "lang=en"
    ok = with_cookie(gw, "/v1/c", f"l402-weather={credential}")
    assert ok.status == 200 and "cookie" not in clean_upstream.requests()[-1]["headers"]
    # An Authorization header wins, and the cookie is still removed.
    other = buy(gw, "/v1/d")
    r = gw.request("/v1/d", f"L402 {other}", headers={"Cookie": f"l402-weather={credential}"})
    assert r.status == 200
    seen = clean_upstream.requests()[-1]["headers"]
    assert "cookie" not in seen and "authorization" not in seen and seen["x-l402-token-id"] == token_id_of(f"L402 {other}")


def test_the_cookie_opens_only_its_service_where_it_opted_in(gw, clean_upstream):
    credential = buy(gw, "/v1/a")
    # The same service on a route without the opt-in: the cookie is no credential there.
    api = with_cookie(gw, "/api/a", f"l402-weather={credential}")
    assert api.status == 402 and api.json()["reason"] == "payment_required"
    # Another service's route reads its own cookie name only; renamed, the token is not its service's.
    assert with_cookie(gw, "/quotes/a", f"l402-weather={credential}").json()["reason"] == "payment_required"
    assert with_cookie(gw, "/quotes/a", f"l402-quotes={credential}").json()["reason"] == "wrong_service"
    assert clean_upstream.requests() == []


def test_tampered_and_expired_cookies_get_the_page_again(gw, clean_upstream):
    before = gw.counters()
    credential = buy(gw, "/v1/a")
    mac, preimage = credential.split(":")
    wrong_preimage = f"{mac}:{'0' * 64}"
    flipped = mac[:-6] + ("A" if mac[-6] != "A" else "B") + mac[-5:]
    for value, reason in ((wrong_preimage, "preimage_mismatch"), (f"{flipped}:{preimage}", "bad_signature")):
        r = with_cookie(gw, "/v1/a", f"l402-weather={value}")
        assert r.status == 402 and r.json()["reason"] == reason, r.text
        page = with_cookie(gw, "/v1/a", f"l402-weather={value}", CHROMIUM_ACCEPT)
        assert page.status == 402 and page.headers["content-type"].startswith("text/html")
        assert 'id="refused">Your access was refused: ' in page.text

    short = buy(gw, "/short/a")
    c = set_cookie(redeem(gw, "/short/a", short))
    assert int(c["max-age"]) <= 2
    assert with_cookie(gw, "/short/a", f"l402-short={short}").status == 200
    time.sleep(3)
    expired = with_cookie(gw, "/short/a", f"l402-short={short}")
    assert expired.status == 402 and expired.json()["reason"] == "expired"
    page = with_cookie(gw, "/short/a", f"l402-short={short}", CHROMIUM_ACCEPT)
    assert "Your access was refused: token has expired." in page.text
    assert [e["path"] for e in clean_upstream.requests()] == ["/short/a"]

    time.sleep(1.2)  # counters are published once a second
    after = gw.counters()
    for counter, at_least in (("l402_refused_preimage_mismatch", 2), ("l402_refused_bad_signature", 2),
                              ("l402_refused_expired", 2), ("l402_browser_cookies_issued", 1)):
        assert after.get(counter, 0) - before.get(counter, 0) >= at_least, counter


def test_refused_redemptions(gw, clean_upstream):
    credential = buy(gw, "/v1/a")
    mac, _ = credential.split(":")
    refused = redeem(gw, "/v1/a", f"{mac}:{'0' * 64}")
    assert refused.status == 403 and refused.json()["reason"] == "preimage_mismatch"
    assert "set-cookie" not in refused.headers
    assert redeem(gw, "/v1/a", None).json()["reason"] == "malformed"
    # Another site cannot plant its token in the browser.
    cross = redeem(gw, "/v1/a", credential, site="cross-site")
    assert cross.status == 403 and cross.json()["reason"] == "cross_site"
    # A token of another service is refused as a paid request's would be.
    assert redeem(gw, "/quotes/a", credential).json()["reason"] == "wrong_service"
    # Where the route does not redeem, the parameter is just a parameter: the paid route's 402.
    plain = redeem(gw, "/api/a", None)
    assert plain.status == 402 and plain.json()["reason"] == "payment_required"
    assert clean_upstream.requests() == []
    assert redeem(gw, "/v1/a", credential).status == 303
    # In a dry run every request goes upstream, a redemption too, with its would-be decision.
    tried = redeem(gw, "/try/a", None)
    assert tried.status == 200 and "set-cookie" not in tried.headers
    (seen,) = clean_upstream.requests()
    assert seen["method"] == "POST" and seen["headers"]["x-l402-dry-run"].startswith("challenge; reason=no_credential")


def test_no_secure_cookie_over_plain_http(gw, clean_upstream):
    """A Secure cookie is set and read only where a browser keeps it: over HTTPS (as the request's
    scheme or a TLS-terminating proxy's x-forwarded-proto says) or on a loopback host."""
    credential = buy(gw, "/v1/a")
    public = {"Host": "shop.example", "Sec-Fetch-Site": "same-origin", "Authorization": f"L402 {credential}"}
    r = gw.request("/v1/a?l402-redeem", method="POST", headers=public)
    assert r.status == 403 and r.json()["reason"] == "insecure_origin" and "set-cookie" not in r.headers
    behind_tls = gw.request("/v1/a?l402-redeem", method="POST", headers={**public, "X-Forwarded-Proto": "https"})
    assert behind_tls.status == 303 and set_cookie(behind_tls)["secure"] == ""
    # The cookie that came over plain HTTP to a public host is removed and not read.
    plain = gw.request("/v1/a", headers={"Host": "shop.example", "Cookie": f"l402-weather={credential}"})
    assert plain.status == 402 and plain.json()["reason"] == "payment_required"
    assert clean_upstream.requests() == []
    # The dev route without Secure redeems over plain HTTP.
    dev = buy(gw, "/dev/a")
    assert gw.request("/dev/a?l402-redeem", method="POST", headers={
        "Host": "shop.example", "Sec-Fetch-Site": "same-origin", "Authorization": f"L402 {dev}"}).status == 303


def test_redemptions_in_the_access_log(wasm, clean_upstream):
    """With `access_log_fields`, a redemption's line says `redeemed` with the token it turned into a
    cookie, or `refused` with the reason (envoy/access-log.yaml, the LND simulator)."""
    backend = Backend("lnd")
    g = LoggingGateway(backend, clean_upstream.port, ROUTES[:1])
    try:
        mac, preimage = py_mint(g.secret, ["services=weather:0"])
        paid = l402_credential(mac, preimage).split(" ", 1)[1]
        assert redeem(g, "/v1/a", paid).status == 303
        assert redeem(g, "/v1/a", f"{paid[:-64]}{'0' * 64}").status == 403
        assert redeem(g, "/v1/a", paid, site="cross-site").status == 403
        weather = {"service": "weather", "price_msat": "10000"}
        assert g.log(3) == [
            {"method": "POST", "path": "/v1/a?l402-redeem", "status": 303, "outcome": "redeemed", **weather,
             "token_id": token_id_of(f"L402 {paid}")},
            {"method": "POST", "path": "/v1/a?l402-redeem", "status": 403, "outcome": "refused",
             "reason": "preimage_mismatch", **weather},
            {"method": "POST", "path": "/v1/a?l402-redeem", "status": 403, "outcome": "refused",
             "reason": "cross_site", **weather},
        ]
        assert clean_upstream.requests() == []
    finally:
        g.stop()
        backend.stop()
