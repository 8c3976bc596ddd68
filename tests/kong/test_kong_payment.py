"""The Payment HTTP authentication scheme (draft-httpauth-payment, Lightning charge) in Kong's Wasm
engine, on the LND simulator and the real LNbits: one invoice for both dialects with the three
challenges in the one WWW-Authenticate value nginx sends (read by payment_support's parser, by mppx
and by the L402 clients' parsers), a charge that buys one request with a `Payment-Receipt` and a
private `Cache-Control`, its replay refused with problem details, the same charge raced on two
workers passing once, a Payment-only route, refused charges, one purchase whichever dialect, and the
shared-memory zone a Payment route needs.

What differs from Envoy, by the engine (docs/kong.md): the challenges share one WWW-Authenticate
value (Envoy sends one field each), the credential reaches the API blanked (Envoy removes it), a
client's metering header is refused with 400, and the shared data needs the default zone. Without
that zone every shared-data call traps the module: the filter makes them before any call, where a
trap ends the request with nginx's 500 (the tests at the end).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import pytest

from engine import ENGINES, Engine, engine_params, wait_for
from harness import ROOT, free_port, http
from kong_common import SECRET, api_paths, challenge_of, config, handed_off, lnbits_node, lnd_node
from payment_support import (
    assert_problem, b64url, challenges, credential, decoded, mint_charge, payment_challenge, receipt, unb64url,
)
from test_filter_support import CLIENTS_DIR, cli
from test_kong_flow import peer

# One engine on the LND simulator serves most tests of a module (module scope): loading the module
# takes Wasmtime seconds per start.
pytestmark = pytest.mark.parametrize("nginx", engine_params(ENGINES), scope="module")

ROUTES = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "schemes": ["l402", "payment"]},
    {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
    {"match": {"path_prefix": "/once/"}, "service": "once", "price_sat": 3, "uses": 1,
     "schemes": ["l402", "payment"]},
]
MPP_CLIENT = ROOT / "tests" / "e2e" / "clients" / "mpp_client.mjs"
# mppx's parsers of a WWW-Authenticate value: the one for a list of challenges, and the one for a
# single Payment challenge (stdin: the value as a JSON string).
MPPX_DESERIALIZE_LIST = """
import { Challenge } from "mppx";
let value = "";
for await (const chunk of process.stdin) value += chunk;
try {
  const header = JSON.parse(value);
  console.log(JSON.stringify({ challenges: Challenge.deserializeList(header), single: Challenge.deserialize(header) }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e?.message ?? e) }));
}
"""
# An access log naming the worker that answered each request (relative to the engine's prefix).
PID_LOG = "log_format bypid '$pid $status $request_uri'; access_log logs/pid.log bypid;"


def payment_config(node: dict[str, Any], routes: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return config(node, ROUTES if routes is None else routes, **extra)


@pytest.fixture(scope="module")
def shared_engine(nginx: str, lnd: Any, api: Any, wasm_module: Any) -> Iterator[Engine]:
    """The payment routes on the simulator (a 5 s node timeout: a race asks for nine invoices at
    once), two workers, and the access log of PID_LOG."""
    engine = Engine(nginx, api.port, payment_config(lnd_node(lnd, timeout_ms=5000)), http_extra=PID_LOG).start()
    yield engine
    engine.stop()


@pytest.fixture
def gw(request: pytest.FixtureRequest, shared_engine: Engine, api: Any) -> Iterator[Engine]:
    """The module's engine, with the API's log emptied (the engine's log tail printed on failure)."""
    api.clear()
    yield shared_engine
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        sys.stderr.write(f"\n--- {shared_engine.dir}/logs/error.log (tail) ---\n{shared_engine.error_log[-3000:]}\n")


def mppx_challenges(value: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    p = subprocess.run(["node", "--input-type=module", "-e", MPPX_DESERIALIZE_LIST], input=json.dumps(value),
                       capture_output=True, text=True, cwd=CLIENTS_DIR, timeout=30)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "error" not in out, out
    return out["challenges"], out["single"]


def schemes_of(r: Any) -> list[str]:
    return [s for s, _ in challenges(r.header_values("www-authenticate"))]


def invoice_of(challenge: dict[str, str]) -> str:
    return decoded(challenge["request"])["methodDetails"]["invoice"]


def buy(gw: Engine, lnd: Any, path: str) -> tuple[dict[str, str], str, Any]:
    """Ask for `path` and pay its invoice on the simulator: (the Payment challenge, the preimage, the 402)."""
    r = gw.get(path)
    assert r.status == 402, (r.status, r.text)
    challenge = payment_challenge(r)
    return challenge, lnd.pay(invoice_of(challenge))["payment_preimage"], r


def assert_receipt(r: Any, challenge: dict[str, str], preimage: str, cache_control: str = "private") -> None:
    """A 200 from the API with the charge's receipt, private to the payer."""
    assert r.status == 200, (r.status, r.text)
    assert b"l402-test-upstream" in r.body, r.text
    rc = receipt(r)
    assert rc["status"] == "success" and rc["method"] == "lightning", rc
    payment_hash = hashlib.sha256(bytes.fromhex(preimage)).hexdigest()
    assert rc["reference"] == payment_hash == decoded(challenge["request"])["methodDetails"]["paymentHash"], rc
    assert rc["challengeId"] == challenge["id"], rc
    stamp = time.mktime(time.strptime(rc["timestamp"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(stamp - time.time()) < 5, rc
    assert r.header_values("cache-control") == [cache_control], r.header_list


def assert_charge_handed_off(entry: dict[str, Any], challenge: dict[str, str], authorization: str, preimage: str,
                             service: str, price_msat: int) -> None:
    """The API got the request without the credential (blanked, as every credential on nginx) and with
    the metering headers, the token id being the one the challenge was bound to."""
    headers = handed_off(entry)
    assert headers["authorization"] == ""
    listed = json.dumps(entry["header_list"])
    assert authorization.split()[1][:40] not in listed and preimage not in listed
    assert headers["x-l402-token-id"] == decoded(challenge["opaque"])["token_id"]
    assert headers["x-l402-service"] == service and headers["x-l402-price-msat"] == str(price_msat)


def race(gw: Engine, path: str, headers: dict[str, str], n: int) -> list[Any]:
    """`n` requests at once, each on its own connection; their responses."""
    out: list[Any] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        r = gw.get(path, headers)
        with lock:
            out.append(r)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# -- the challenges ------------------------------------------------------------------------------------

def test_three_challenges_in_one_value_for_one_invoice(gw, lnd, api):
    """LSAT, L402 and Payment in the one WWW-Authenticate value, for one invoice; payment_support's
    parser and mppx's Challenge.deserializeList read the Payment challenge out of it, and the L402
    clients' parsers (Alby, lsat-js) still read theirs."""
    r = gw.get("/v1/forecast")
    assert r.status == 402, r.text
    (value,) = r.header_values("www-authenticate")
    assert schemes_of(r) == ["LSAT", "L402", "Payment"], value
    assert r.headers.get("cache-control") == "no-store"
    assert r.headers.get("access-control-expose-headers", "").lower() == "www-authenticate"
    # The route speaks L402 too: the L402 clients' JSON body, not problem details.
    assert r.headers.get("content-type") == "application/json"
    body = r.json()
    assert body["reason"] == "payment_required" and body["service"] == "weather" and body["price_sat"] == 10

    mac, invoice = challenge_of(r)
    (_, lsat), (_, l402), (_, p) = challenges([value])
    assert lsat == {"macaroon": mac, "invoice": invoice}
    assert l402 == {"macaroon": mac, "invoice": invoice, "version": "0", "token": mac}
    assert set(p) == {"id", "realm", "method", "intent", "request", "expires", "opaque"}
    assert (p["method"], p["intent"], p["realm"]) == ("lightning", "charge", "weather")
    assert len(unb64url(p["id"])) == 32
    request = decoded(p["request"])
    assert request["amount"] == "10" and request["currency"] == "sat"
    assert request["methodDetails"]["invoice"] == invoice == body["invoice"]
    opaque = decoded(p["opaque"])
    assert opaque["service"] == "weather" and re.fullmatch(r"[0-9a-f]{64}", opaque["token_id"])

    # mppx finds the one Payment challenge after the two others and reads it as ours, with its list
    # parser and with its single-challenge one.
    (m,), single = mppx_challenges(value)
    assert single == m, (single, m)
    assert (m["id"], m["realm"], m["method"], m["intent"], m["expires"], m["opaque"]) == \
        (p["id"], p["realm"], p["method"], p["intent"], p["expires"], p["opaque"]), m
    assert m["request"] == request, m

    # The L402 clients' parsers, on the value that now ends with the Payment challenge.
    alby = peer("alby.parse", header=value)
    assert "error" not in alby, alby
    assert alby["parsed"]["token"] == mac and alby["parsed"]["invoice"] == invoice, alby
    paid = lnd.pay(invoice)
    assert paid["payment_hash"] == request["methodDetails"]["paymentHash"]
    lsat_js = peer("lsat.challenge", header=value, preimage=paid["payment_preimage"])
    assert "error" not in lsat_js, lsat_js
    assert lsat_js["invoice"] == invoice and lsat_js["baseMacaroon"] == mac, lsat_js
    assert api.requests() == []


def test_a_payment_only_route_answers_with_problem_details(gw, lnd, api):
    r = gw.get("/pay/quote")
    body = assert_problem(r, "payment-required", "payment_required")
    (value,) = r.header_values("www-authenticate")
    assert schemes_of(r) == ["Payment"], value
    assert body["service"] == "quotes" and body["price_sat"] == 5
    assert body["invoice"] == invoice_of(payment_challenge(r))
    assert r.headers.get("cache-control") == "no-store"
    assert "payment-receipt" not in r.headers
    assert api.requests() == []


# -- a charge paid and redeemed -----------------------------------------------------------------------

def test_a_charge_buys_one_request_with_a_receipt_and_its_replay_is_refused(gw, lnd, api):
    challenge, preimage, r = buy(gw, lnd, "/v1/forecast")
    mac, _ = challenge_of(r)
    authorization = credential(challenge, preimage)

    ok = gw.get("/v1/forecast?n=1", {"Authorization": authorization})
    assert_receipt(ok, challenge, preimage)
    (seen,) = api.requests()
    assert seen["path"] == "/v1/forecast?n=1"
    assert_charge_handed_off(seen, challenge, authorization, preimage, "weather", 10000)

    # The replay: problem details with a fresh challenge (the body is there: the fresh invoice's
    # callout succeeded), the three challenges still in one value, and nothing for the API.
    again = gw.get("/v1/forecast?n=2", {"Authorization": authorization})
    body = assert_problem(again, "invalid-challenge", "replayed")
    assert body["service"] == "weather" and body["invoice"] == invoice_of(payment_challenge(again))
    assert len(again.header_values("www-authenticate")) == 1 and schemes_of(again) == ["LSAT", "L402", "Payment"]
    assert payment_challenge(again)["id"] != challenge["id"]
    assert again.headers.get("cache-control") == "no-store" and "payment-receipt" not in again.headers
    assert api_paths(api) == ["/v1/forecast?n=1"]

    # The L402 token of the same invoice (no `uses` on this route) still opens the route, without a
    # receipt: the charge bought one request more, not the token.
    token = gw.get("/v1/forecast?n=3", {"Authorization": f"L402 {mac}:{preimage}"})
    assert token.status == 200 and "payment-receipt" not in token.headers
    assert api_paths(api) == ["/v1/forecast?n=1", "/v1/forecast?n=3"]
    assert handed_off(api.requests()[1])["x-l402-token-id"] == seen["headers"]["x-l402-token-id"]


def test_one_purchase_whichever_dialect(gw, lnd, api):
    """`uses: 1` with both dialects: the charge and the L402 token of one invoice buy one request, in
    the shared-data counter created with the challenge."""
    challenge, preimage, r = buy(gw, lnd, "/once/a")
    mac, _ = challenge_of(r)
    assert_receipt(gw.get("/once/a", {"Authorization": credential(challenge, preimage)}), challenge, preimage)
    used = gw.get("/once/a", {"Authorization": f"L402 {mac}:{preimage}"})
    assert used.status == 402 and used.json()["reason"] == "used_up", used.text

    challenge, preimage, r = buy(gw, lnd, "/once/b")
    mac, _ = challenge_of(r)
    assert gw.get("/once/b", {"Authorization": f"L402 {mac}:{preimage}"}).status == 200
    assert_problem(gw.get("/once/b", {"Authorization": credential(challenge, preimage)}), "invalid-challenge",
                   "replayed")
    assert api_paths(api) == ["/once/a", "/once/b"]


def test_mppx_pays_through_lnbits_and_the_engine(nginx, gateway, lnbits, api):
    """mppx (Mppx.create().fetch with a Lightning charge method) on the both-dialects route: it picks
    the Payment challenge out of the joined value, pays LNbits' invoice, retries with its credential
    and gets the API's answer with the receipt; its credential replayed by hand is refused."""
    gw = gateway(payment_config(lnbits_node(lnbits)), nginx)
    p = subprocess.run(["node", str(MPP_CLIENT), gw.url("/v1/forecast?via=mppx"), lnbits.url,
                        lnbits.payer.adminkey], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == 200, out
    challenge = out["challenge"]
    assert (challenge["method"], challenge["intent"], challenge["realm"]) == ("lightning", "charge", "weather")
    assert len(out["challenges"]) == 1, out["challenges"]
    assert out["receipt"]["status"] == "success", out
    assert out["receipt"]["challengeId"] == challenge["id"]
    payment_hash = challenge["request"]["methodDetails"]["paymentHash"]
    assert out["receipt"]["reference"] == payment_hash
    (paid,) = out["paid"]
    assert paid["preimage_matches_payment_hash"] is True
    assert lnbits.payment_status(payment_hash)["paid"] is True

    (seen,) = api.requests()
    assert seen["path"] == "/v1/forecast?via=mppx"
    authorization = out["authorization"]
    handed = handed_off(seen)
    assert handed["authorization"] == "" and authorization.split()[1][:40] not in json.dumps(seen["header_list"])
    assert handed["x-l402-service"] == "weather" and handed["x-l402-price-msat"] == "10000"
    assert handed["x-l402-token-id"] == decoded(challenge["opaque"])["token_id"]

    again = gw.get("/v1/forecast", {"Authorization": authorization})
    assert_problem(again, "invalid-challenge", "replayed")
    assert len(api.requests()) == 1


# -- shared data across the two workers ---------------------------------------------------------------

def test_one_charge_raced_on_both_workers_passes_once(gw, lnd, api):
    """The same charge, presented at once on ten connections: the workers share the use counter
    created with the challenge, one request passes with the receipt, the nine others get problem
    details (`replayed`) and never reach the API. The engine's access log names the worker of each
    request: a round where the ten did not reach both workers is run again with a new charge."""
    assert len(gw.workers()) == 2
    for attempt in range(4):
        path = f"/pay/race{attempt}"
        challenge, preimage, _ = buy(gw, lnd, path)
        api.clear()
        responses = race(gw, path, {"Authorization": credential(challenge, preimage)}, 10)
        passed = [r for r in responses if r.status == 200]
        assert len(passed) == 1, [r.status for r in responses]
        assert_receipt(passed[0], challenge, preimage)
        for r in responses:
            if r.status != 200:
                assert_problem(r, "invalid-challenge", "replayed")
        assert api_paths(api) == [path]

        def logged() -> list[list[str]]:
            text = (gw.dir / "logs" / "pid.log").read_text()
            return [line.split() for line in text.splitlines() if line.endswith(f" {path}")]
        assert wait_for(lambda: len(logged()) == 11, 5), logged()
        if len({pid for pid, _, _ in logged()[1:]}) == 2:
            break
    else:
        pytest.fail("in four rounds the ten requests never reached both workers")
    assert_problem(gw.get(path, {"Authorization": credential(challenge, preimage)}), "invalid-challenge", "replayed")


# -- refusals ------------------------------------------------------------------------------------------

REFUSALS = {
    # name: (path, how the credential is spoiled, problem type, reason)
    "forged_id": ("/pay/q", lambda c, p: credential({**c, "id": b64url(b"\x01" * 32)}, p), "invalid-challenge",
                  "invalid_challenge"),
    "wrong_preimage": ("/pay/q", lambda c, p: credential(c, "00" * 32), "verification-failed", "preimage_mismatch"),
    "other_service": ("/pay/q", lambda c, p: credential({**c, "opaque": b64url(b'{"service":"weather"}')}, p),
                      "invalid-challenge", "invalid_challenge"),
    "another_route": ("/v1/x", lambda c, p: credential(c, p), "invalid-challenge", "wrong_service"),
}


def test_refused_charges_never_reach_the_api_and_spend_nothing(gw, lnd, api):
    """A forged challenge id, a wrong preimage, a challenge rebound to another service, a charge for
    another route: problem details, never the API, and the charge is still good afterwards."""
    challenge, preimage, _ = buy(gw, lnd, "/pay/q")
    for name, (path, spoil, problem, reason) in REFUSALS.items():
        r = gw.get(path, {"Authorization": spoil(challenge, preimage)})
        assert_problem(r, problem, reason)
        assert "payment-receipt" not in r.headers, name
    authorization = credential(challenge, preimage)
    # On nginx a client's copy of a metering header cannot be removed: refused with 400 before the
    # credential is looked at, as for L402.
    spoofed = gw.get("/pay/q", {"Authorization": authorization, "x-l402-token-id": "mine"})
    assert spoofed.status == 400 and spoofed.json()["reason"] == "reserved_header", spoofed.text
    assert api.requests() == []
    # None of them spent the charge.
    assert_receipt(gw.get("/pay/q", {"Authorization": authorization}), challenge, preimage)
    assert_charge_handed_off(api.requests()[0], challenge, authorization, preimage, "quotes", 5000)


# -- the response's Cache-Control ------------------------------------------------------------------

def test_the_receipt_makes_the_answer_private(nginx, gateway, lnd, api):
    """The API's own Cache-Control: `public, max-age=60` is replaced by `private` on the charge's
    answer (one field, nothing of the public one left), `no-store` and `private, max-age=60` stay as
    they are. A server of the engine in front of the recording API adds those headers."""
    front = free_port()
    cache = {"/pay/public": "public, max-age=60", "/pay/nostore": "no-store", "/pay/private": "private, max-age=60"}
    to_api = f"proxy_pass http://127.0.0.1:{api.port};"
    locations = " ".join(f'location {path} {{ add_header Cache-Control "{value}"; {to_api} }}'
                         for path, value in cache.items())
    extra = f"server {{ listen 127.0.0.1:{front}; {locations} location / {{ {to_api} }} }}"
    gw = gateway(payment_config(lnd_node(lnd)), nginx, api_port=front, http_extra=extra)
    assert gw.get("/health").status == 200 and api_paths(api) == ["/health"]
    for path, sent in cache.items():  # the front's own answers carry them
        assert http("GET", f"http://127.0.0.1:{front}{path}").header_values("cache-control") == [sent]
    api.clear()
    for path, sent in cache.items():
        challenge, preimage, _ = buy(gw, lnd, path)
        r = gw.get(path, {"Authorization": credential(challenge, preimage)})
        assert_receipt(r, challenge, preimage, cache_control="private" if sent.startswith("public") else sent)
    assert api_paths(api) == list(cache)


# -- the shared-memory zone ----------------------------------------------------------------------------

def test_config_check_names_a_payment_route_without_the_zone(nginx, tmp_path):
    """`l402 config check --kong-conf` refuses a Payment route without `fleet` where kong.conf lacks
    `nginx_wasm_shm_kv`, naming `routes[i].schemes`; with the line, or with `fleet`, it passes."""
    routes = [ROUTES[0], ROUTES[2]]
    conf = (ROOT / "kong" / "kong.conf").read_text()
    with_zone, without = tmp_path / "with.conf", tmp_path / "without.conf"
    with_zone.write_text(conf)
    without.write_text("\n".join(line for line in conf.splitlines() if not line.startswith("nginx_wasm_shm_kv")))
    cfg = tmp_path / "config.json"
    node = {"kind": "lnd", "upstream": "127.0.0.1:10009", "authority": "127.0.0.1:10009", "credential": "ab" * 32}
    cfg.write_text(json.dumps(payment_config(node, routes)))
    assert cli("config", "check", str(cfg), "--kong-conf", str(with_zone)).returncode == 0
    refused = cli("config", "check", str(cfg), "--kong-conf", str(without), "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    out = json.loads(refused.stdout)
    assert out["field"] == "routes[1].schemes" and "nginx_wasm_shm_kv = 16m" in out["message"], out
    # With `fleet`, spent charges are counted in etcd: no zone needed.
    fleet = {"upstream": "127.0.0.1:2379", "authority": "127.0.0.1:2379"}
    cfg.write_text(json.dumps(payment_config(node, routes, fleet=fleet)))
    checked = cli("config", "check", str(cfg), "--kong-conf", str(without))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_without_the_zone_a_charge_never_passes(nginx, gateway, lnd, api):
    """Without the default zone the filter names `routes[1].schemes` in its log at the first request,
    and a valid charge (minted with the gateway's secret) is refused: the shared-data read traps the
    module in the request's headers and nginx answers its own 500. The API sees nothing."""
    gw = gateway(payment_config(lnd_node(lnd), [ROUTES[0], ROUTES[2]]), nginx, wasm_extra="", workers=1)
    preimage = secrets.token_bytes(32)
    charge = mint_charge(SECRET, "quotes", 5, preimage, secrets.token_hex(32))
    r = gw.get("/pay/q", {"Authorization": credential(charge, preimage.hex())})
    assert r.status == 500 and b"l402-test-upstream" not in r.body, (r.status, r.text)
    assert gw.log_lines(r"routes\[1\]\.schemes keep state in shared data.*nginx_wasm_shm_kv = 16m")
    assert gw.log_lines(r"could not resolve namespace")
    assert gw.get("/health").status == 200
    assert api_paths(api) == ["/health"]


@pytest.mark.parametrize("path", ["/pay/q", "/once/q", "/uses/q"])
def test_without_the_zone_an_unpaid_request_never_reaches_the_api(nginx, gateway, lnd, api, path):
    """A Payment route, a `uses` route with both dialects, and an L402-only `uses` route (which,
    before the counters were created with the challenge, only refused its paid requests with a 500)."""
    uses_only = {"match": {"path_prefix": "/uses/"}, "service": "counted", "price_sat": 2, "uses": 2}
    gw = gateway(payment_config(lnd_node(lnd), [ROUTES[0], ROUTES[2], ROUTES[3], uses_only]), nginx, wasm_extra="",
                 workers=1)
    r = gw.get(path)
    assert gw.log_lines(r"keep state in shared data.*nginx_wasm_shm_kv = 16m")
    assert api.requests() == [], f"the API received the unpaid request; the client got {r.status} {r.text[:100]}"
    assert r.status in (402, 500) and b"l402-test-upstream" not in r.body, (r.status, r.text)
