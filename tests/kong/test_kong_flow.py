"""l402.wasm in Kong's Wasm engine: the challenge and the paid flow against the real LNbits and the
LND simulator (plain and over TLS with a host-name authority), the third-party clients on the one
joined WWW-Authenticate value, the hand-off to the API, shared data across 2 workers (use limits,
freebies, the challenge limit), strict mode and macaroon-only credentials, a configuration the
parser refuses, and the metric definitions.

What differs from Envoy, by design (docs/kong.md): the credential reaches the API blanked (nginx
forwards a removed request header), a client's metering headers are refused with 400, and the two
challenges share one WWW-Authenticate value.
"""

from __future__ import annotations

import json
import re
import subprocess
import zlib

import pytest

from engine import ENGINES, SHM_KV, engine_params, tls_trust, wait_for
from harness import self_signed_cert
from kong_common import (
    METERING, SECRET, api_paths, assert_joined_challenge, challenge_of, concurrently, config, handed_off, lnbits_node,
    lnd_node, lnd_tls_node, token,
)
from test_filter_support import CLIENTS_DIR, credential_valid, node_client

PEER_JS = CLIENTS_DIR.parent / "interop" / "js" / "peer.mjs"

pytestmark = pytest.mark.parametrize("nginx", engine_params(ENGINES))


def peer(command: str, **request):
    p = subprocess.run(["node", str(PEER_JS), command], input=json.dumps(request), capture_output=True,
                       text=True, cwd=CLIENTS_DIR, timeout=60)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# -- challenge, payment, reuse -----------------------------------------------------------------------

def test_lnbits_challenge_paid_flow_and_hand_off(nginx, gateway, lnbits, api):
    gw = gateway(config(lnbits_node(lnbits)), nginx)
    r = gw.get("/v1/forecast")
    assert_joined_challenge(r, "payment_required")
    assert r.headers.get("access-control-expose-headers", "").lower() == "www-authenticate"
    body = r.json()
    assert body["price_sat"] == 10 and body["service"] == "weather"
    mac, invoice = challenge_of(r)
    # The invoice is LNbits' own (Alby's parser and decoder on the joined value): it knows it, unpaid.
    parsed = node_client("parse", header=r.headers["www-authenticate"])
    assert parsed["parsed"]["invoice"] == invoice and parsed["bolt11"]["millisatoshis"] == "10000"
    assert lnbits.payment_status(parsed["bolt11"]["payment_hash"])["paid"] is False

    preimage = lnbits.pay(lnbits.payer.adminkey, invoice)
    auth = f"L402 {mac}:{preimage}"
    for path in ("/v1/forecast", "/v1/forecast?x=1", "/v1/other"):
        assert gw.get(path, {"Authorization": auth}).status == 200
    assert gw.get("/v1/forecast", {"Authorization": auth.replace("L402", "LSAT", 1)}).status == 200
    seen = api.requests()
    assert [e["path"] for e in seen] == ["/v1/forecast", "/v1/forecast?x=1", "/v1/other", "/v1/forecast"]
    for entry in seen:
        headers = handed_off(entry)
        assert headers["x-l402-service"] == "weather" and headers["x-l402-price-msat"] == "10000"
        assert len(headers["x-l402-token-id"]) == 64
    assert credential_valid(auth, SECRET, "weather", path="/v1/forecast")
    # Someone else's preimage never reaches the API.
    forged = gw.get("/v1/forecast", {"Authorization": f"L402 {mac}:{'ab' * 32}"})
    assert_joined_challenge(forged, "preimage_mismatch")
    assert len(api.requests()) == 4


def test_alby_fetch_with_l402_pays_and_reuses(nginx, gateway, lnbits, api):
    """@getalby/lightning-tools' fetchWithL402 on the joined header: it pays the invoice it parsed
    out of the value and its retry passes."""
    gw = gateway(config(lnbits_node(lnbits)), nginx)
    out = node_client("fetch", url=gw.url("/v1/forecast"), lnbits_url=lnbits.url, adminkey=lnbits.payer.adminkey,
                      reuse=2)
    assert out["first"]["status"] == 200, out
    assert [r["status"] for r in out["reused"]] == [200, 200], out
    assert len(out["paid"]) == 1
    assert len(api.requests()) == 3
    for entry in api.requests():
        handed_off(entry)


def test_third_party_parsers_on_the_joined_challenge(nginx, gateway, lnd, api):
    """Alby's parseL402 and lsat-js' Lsat.fromHeader read the one value that carries both challenges;
    the invoice and macaroon each extracts are the L402 challenge's, and lsat-js' paid token passes."""
    gw = gateway(config(lnd_node(lnd)), nginx)
    r = gw.get("/v1/forecast")
    value = assert_joined_challenge(r)
    mac, invoice = challenge_of(r)

    alby = peer("alby.parse", header=value)
    assert "error" not in alby, alby
    assert alby["parsed"]["token"] == mac and alby["parsed"]["invoice"] == invoice, alby

    paid = lnd.pay(invoice)
    lsat = peer("lsat.challenge", header=value, preimage=paid["payment_preimage"])
    assert "error" not in lsat, lsat
    assert lsat["invoice"] == invoice and lsat["baseMacaroon"] == mac, lsat
    assert lsat["paymentHash"] == paid["payment_hash"] and lsat["invoiceAmount"] == 10
    assert lsat["isSatisfied"] is True
    assert lsat["token"].startswith("LSAT ")
    assert gw.get("/v1/forecast", {"Authorization": lsat["token"]}).status == 200
    assert api_paths(api) == ["/v1/forecast"]


def test_lnd_simulator_challenge_payment_and_token_reuse(nginx, gateway, lnd, api, faulty):
    gw = gateway(config(lnd_node(lnd)), nginx)
    lnd.reset_stats()
    r = gw.get("/v1/forecast")
    assert_joined_challenge(r, "payment_required")
    mac, invoice = challenge_of(r)
    paid = lnd.pay(invoice)
    auth = f"L402 {mac}:{paid['payment_preimage']}"
    calls = lnd.stats()
    for _ in range(5):
        assert gw.get("/v1/forecast", {"Authorization": auth}).status == 200
    assert lnd.stats() == calls, "a paid request called the node"
    assert api_paths(api) == ["/v1/forecast"] * 5


def test_tls_to_the_node_with_a_host_name_and_the_trusted_cert(nginx, gateway, lnd_tls, api, tmp_path):
    gw = gateway(config(lnd_tls_node(lnd_tls)), nginx, wasm_extra=f"{SHM_KV} {tls_trust(lnd_tls.cert_path)}")
    r = gw.get("/v1/forecast")
    assert_joined_challenge(r)
    mac, invoice = challenge_of(r)
    paid = lnd_tls.pay(invoice)
    assert gw.get("/v1/forecast", {"Authorization": f"L402 {mac}:{paid['payment_preimage']}"}).status == 200
    assert api_paths(api) == ["/v1/forecast"]


def test_tls_with_an_ip_authority_cannot_derive_a_server_name(nginx, gateway, lnd_tls, api):
    """The SNI comes from node.authority: an IP address gives none, the call fails, 503."""
    node = lnd_node(lnd_tls, tls=True)  # authority 127.0.0.1:port
    gw = gateway(config(node), nginx, wasm_extra=f"{SHM_KV} {tls_trust(lnd_tls.cert_path)}")
    r = gw.get("/v1/forecast")
    assert r.status == 503, r.text
    assert gw.log_lines("could not derive tls sni")
    assert api.requests() == []


# -- hand-off headers --------------------------------------------------------------------------------

def test_hand_off_blanks_every_credential_header_and_sets_metering(nginx, gateway, lnd, api):
    gw = gateway(config(lnd_node(lnd)), nginx)
    mac, invoice = challenge_of(gw.get("/v1/forecast"))
    pre = lnd.pay(invoice)["payment_preimage"]
    assert gw.get("/v1/forecast", {"Authorization": f"L402 {mac}:{pre}"}).status == 200
    import base64
    raw = base64.b64decode(mac + "=" * (-len(mac) % 4))
    from attacks import mac_of, raw_of
    m = mac_of(raw)
    m.add_first_party_caveat(f"preimage={pre}")
    assert gw.get("/v1/forecast", {"Grpc-Metadata-macaroon": raw_of(m).hex()}).status == 200
    (a, b) = api.requests()
    for entry in (a, b):
        headers = handed_off(entry)
        assert headers["x-l402-service"] == "weather"
        assert mac not in json.dumps(entry["header_list"]) and pre not in json.dumps(entry["header_list"])
    assert dict(a["header_list"])["authorization"] == ""
    assert dict(b["header_list"])["grpc-metadata-macaroon"] == ""
    assert a["headers"]["x-l402-token-id"] == b["headers"]["x-l402-token-id"]


@pytest.mark.parametrize("path,auth", [("/health", False), ("/v1/forecast", False), ("/v1/forecast", True),
                                       ("/other", False)])
def test_client_metering_headers_are_refused_on_every_route(nginx, gateway, lnd, api, path, auth):
    gw = gateway(config(lnd_node(lnd), unmatched="free"), nginx)
    for name in (*METERING, "X-L402-Service"):
        headers = {name: "spoofed"}
        if auth:
            headers["Authorization"] = token()
        r = gw.get(path, headers)
        assert r.status == 400 and r.json()["reason"] == "reserved_header", (name, r.status, r.text)
    assert api.requests() == []
    # Without them the same requests pass (free, unmatched free, paid) or get their challenge.
    r = gw.get(path, {"Authorization": token()} if auth else {})
    assert r.status == (402 if path == "/v1/forecast" and not auth else 200)


def test_renamed_and_disabled_metering_headers(nginx, gateway, lnd, api):
    """`upstream_headers` names the reserved headers: a renamed one is reserved, a header turned off
    (null) passes like any other."""
    gw = gateway(config(lnd_node(lnd), upstream_headers={"token_id": "x-meter-id", "service": None}), nginx)
    assert gw.get("/health", {"x-meter-id": "1"}).json()["reason"] == "reserved_header"
    assert gw.get("/health", {"x-l402-service": "mine"}).status == 200
    assert gw.get("/v1/x", {"Authorization": token(), "x-l402-service": "mine"}).status == 200
    free, paid = api.requests()
    assert free["headers"]["x-l402-service"] == "mine"
    names = [k for k, _ in paid["header_list"]]
    assert names.count("x-meter-id") == 1 and names.count("x-l402-price-msat") == 1
    assert "x-l402-token-id" not in names


# -- shared data across the two workers ---------------------------------------------------------------

@pytest.mark.parametrize("uses", [1, 3])
def test_use_limits_hold_across_two_workers(nginx, gateway, lnd, api, uses):
    routes = [{"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "uses": uses}]
    # The refused ones ask the node for invoices all at once: give the simulator time to accept.
    gw = gateway(config(lnd_node(lnd, timeout_ms=5000), routes), nginx)
    assert len(gw.workers()) == 2
    auth = token()
    statuses = concurrently(gw, "/v1/x", {"Authorization": auth}, 10)
    assert statuses.count(200) == uses, statuses
    assert statuses.count(402) == 10 - uses, statuses
    assert len(api.requests()) == uses
    assert_joined_challenge(gw.get("/v1/x", {"Authorization": auth}), "used_up")


def test_freebies_and_the_challenge_limit(nginx, gateway, lnd, api):
    routes = [{"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10,
               "freebies": {"requests": 2, "period_s": 3600}}]
    gw = gateway(config(lnd_node(lnd), routes, challenge_limit={"burst": 2, "per_minute": 1}), nginx)
    statuses = concurrently(gw, "/v1/x", {}, 2) + [gw.get("/v1/x").status for _ in range(3)]
    assert statuses == [200, 200, 402, 402, 429], statuses
    r = gw.get("/v1/x")
    assert r.status == 429 and r.json()["reason"] == "challenge_rate_limited" and r.headers.get("retry-after")
    assert len(api.requests()) == 2


def test_strict_and_macaroon_only(nginx, gateway, lnd, api):
    gw = gateway(config(lnd_node(lnd, strict=True, macaroon_only=True)), nginx)
    mac, invoice = challenge_of(gw.get("/v1/forecast"))
    before = gw.get("/v1/forecast", {"Authorization": f"L402 {mac}"})
    assert_joined_challenge(before, "unsettled")
    lnd.pay(invoice)
    lnd.reset_stats()
    for _ in range(3):
        assert gw.get("/v1/forecast", {"Authorization": f"L402 {mac}"}).status == 200
    # The settlement answer is remembered in shared data: at most one lookup per worker.
    lookups = sum(v for k, v in lnd.stats().items() if "lookup" in k and isinstance(v, int))
    assert lookups <= 2, lnd.stats()
    # A token minted here but never invoiced by the node is not settled, preimage or not.
    assert_joined_challenge(gw.get("/v1/forecast", {"Authorization": token()}), "unsettled")
    assert api_paths(api) == ["/v1/forecast"] * 3


# -- configuration -----------------------------------------------------------------------------------

def test_a_config_the_parser_refuses_answers_500_and_the_workers_stay(nginx, gateway, lnd, api):
    """One service with two prices passes Kong's schema but not the parser: every request gets a
    500 JSON answer, nothing passes, and the workers keep running."""
    routes = [{"match": {"path_prefix": "/health"}, "free": True},
              {"match": {"path_prefix": "/a"}, "service": "w", "price_sat": 1},
              {"match": {"path_prefix": "/b"}, "service": "w", "price_sat": 2}]
    gw = gateway(config(lnd_node(lnd), routes), nginx)
    workers = gw.workers()
    assert len(workers) == 2
    for path in ("/a", "/b", "/health", "/anything", "/a"):
        r = gw.get(path, {"Authorization": token("w")})
        assert r.status == 500 and r.json()["reason"] == "invalid_configuration", (path, r.status, r.text)
    assert gw.workers() == workers, "a worker died or was respawned"
    assert gw.log_lines(r"invalid configuration: routes\[2\]\.(service|price)")
    assert api.requests() == []


def test_the_shared_data_hint_is_logged_at_the_first_request(nginx, gateway, lnd):
    routes = [{"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "uses": 2}]
    gw = gateway(config(lnd_node(lnd), routes), nginx)
    gw.get("/v1/x", {"Authorization": token()})
    assert wait_for(lambda: gw.log_lines(r"nginx_wasm_shm_kv = 16m"), 5)


def test_metrics_are_defined_and_updated(nginx, gateway, lnd, api):
    """nginx alone has no stats endpoint (Kong's Lua layer exports the metrics). A debug engine logs,
    at `debug` level, each metric it defines (`defined counter "pw:l402:<name>" with id N`, N the
    CRC-32 of the name) and each update (`wasm updating metric "N" with n`): there the counters of
    one paid, one free and one challenged request are read back. An engine that logs neither (Kong
    3.9's pin logs no metric lines) is skipped after checking that the filter served."""
    gw = gateway(config(lnd_node(lnd)), nginx, log_level="debug", workers=1)
    assert gw.get("/health").status == 200
    assert gw.get("/v1/x", {"Authorization": token()}).status == 200
    assert gw.get("/v1/x").status == 402
    if not gw.log_lines(r'defined (counter|gauge|histogram) "'):
        pytest.skip(f"{gw.name} logs no metric definitions (ngx_wasm_module's latest, built with --with-debug, does)")
    defined = set(re.findall(r'defined \w+ "(pw:l402:[a-z0-9_]+)" with id (\d+)', gw.error_log))
    names = {name for name, _ in defined}
    for name in ("l402_paid_requests", "l402_free_requests", "l402_challenges_issued",
                 "l402_refused_reserved_header", "l402_unadmitted_responses_withheld", "l402_node_callout_ms"):
        assert f"pw:l402:{name}" in names, (name, sorted(names))
    for name, mid in defined:
        assert int(mid) == zlib.crc32(name.encode()), (name, mid)

    def updated(name: str) -> list[int]:
        mid = zlib.crc32(f"pw:l402:{name}".encode())
        return [int(n) for n in re.findall(rf'wasm updating metric "{mid}" with (-?\d+)', gw.error_log)]

    # Counters are published once a second.
    assert wait_for(lambda: sum(updated("l402_paid_requests")) == 1 and sum(updated("l402_free_requests")) == 1
                    and sum(updated("l402_challenges_issued")) == 1, 5), \
        (updated("l402_paid_requests"), updated("l402_free_requests"), updated("l402_challenges_issued"))
    assert updated("l402_node_callout_ms"), "the callout latency was not recorded"
