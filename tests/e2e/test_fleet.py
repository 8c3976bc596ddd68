"""Fleet mode end to end: two real Envoys sharing a secret and a real etcd (Debian etcd-server,
started here on loopback). A token used up on one gateway is refused on the other; a token revoked
in etcd is refused by both within the poll interval; an etcd outage fails closed.

The Payment scheme across the fleet: a charge redeemed on one gateway is a replay on the other, the
same charge sent to both at once passes once, and a charge and the L402 token of its invoice draw on
one purchase (`<prefix>uses/<token id>` in etcd) whichever gateway each goes to, whichever goes first."""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest

from harness import _kill_group, _tmpdir, free_port, http, wait_http
from payment_support import assert_problem, credential as payment_credential, decoded, payment_challenge
from test_filter_support import Backend, Gateway, assert_challenge, challenge_parts, new_secret, token_id_of

POLL_S = 1
PREFIX = "/l402-test/"
ROUTES = [
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "uses": 2, "lifetime_s": 3600},
    {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
    {"match": {"path_prefix": "/once/"}, "service": "once", "price_sat": 3, "uses": 1, "lifetime_s": 3600,
     "schemes": ["l402", "payment"]},
    {"match": {"path_prefix": "/multi/"}, "service": "multi", "price_sat": 4, "uses": 3, "lifetime_s": 3600,
     "schemes": ["l402", "payment"]},
]


class Etcd:
    """A single-member etcd on loopback with its v3 JSON gateway."""

    def __init__(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd is not installed: run ./build.sh test (it installs Debian's etcd-server)", pytrace=False)
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = _tmpdir("etcd-")
        self.log = open(data / "etcd.log", "wb")
        self.proc = subprocess.Popen([
            binary, "--name", "l402-test", "--data-dir", str(data / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"l402-test=http://127.0.0.1:{peer}",
        ], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"{self.url}/health", 30, ok=lambda r: r.status == 200, proc=self.proc, what="etcd")

    def put(self, key: str, value: str = "") -> None:
        r = http("POST", f"{self.url}/v3/kv/put", json_body={
            "key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()})
        assert r.status == 200, r.text

    def get(self, key: str) -> str | None:
        r = http("POST", f"{self.url}/v3/kv/range", json_body={"key": base64.b64encode(key.encode()).decode()})
        assert r.status == 200, r.text
        kvs = r.json().get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def stop(self) -> None:
        _kill_group(self.proc)
        self.log.close()


def with_etcd_cluster(port: int):
    def edit(template: str) -> str:
        cluster = (
            "  - name: etcd\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: etcd\n"
            "      endpoints:\n      - lb_endpoints:\n"
            f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        )
        return template.replace("  clusters:\n", "  clusters:\n" + cluster, 1)
    return edit


@pytest.fixture(scope="module")
def fleet(upstream) -> Iterator[dict[str, Any]]:
    etcd = Etcd()
    backend = Backend("lnd")
    secret = new_secret()
    settings = {"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "prefix": PREFIX,
                "revocation_poll_s": POLL_S}
    gateways = [Gateway(backend, upstream.port, ROUTES, secrets=secret, template_edit=with_etcd_cluster(etcd.port),
                        fleet=settings) for _ in range(2)]
    try:
        yield {"etcd": etcd, "backend": backend, "gateways": gateways}
    finally:
        for g in gateways:
            g.stop()
        backend.stop()
        etcd.stop()


def test_a_token_used_up_on_one_gateway_is_refused_on_the_other(fleet, clean_upstream):
    a, b = fleet["gateways"]
    credential = a.buy("/v1/forecast")
    assert a.request("/v1/forecast", credential).status == 200
    assert b.request("/v1/forecast", credential).status == 200
    assert fleet["etcd"].get(f"{PREFIX}uses/{token_id_of(credential)}") == "2"
    for gateway in (a, b):
        assert_challenge(gateway.request("/v1/forecast", credential), "used_up", "weather")
    assert len(clean_upstream.requests()) == 2


def test_concurrent_uses_never_exceed_the_limit(fleet, clean_upstream):
    from concurrent.futures import ThreadPoolExecutor
    a, b = fleet["gateways"]
    credential = a.buy("/v1/forecast")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: (a, b)[i % 2].request(f"/v1/x?{i}", credential).status, range(8)))
    assert statuses.count(200) == 2, statuses
    assert set(statuses) <= {200, 402}, statuses
    assert len(clean_upstream.requests()) == 2


def test_a_token_revoked_in_etcd_is_refused_by_both_within_the_poll(fleet, clean_upstream):
    a, b = fleet["gateways"]
    credential = a.buy("/v1/forecast")
    fleet["etcd"].put(f"{PREFIX}revoked/{token_id_of(credential)}")
    challenge, preimage = buy_charge(b, "/pay/q")
    fleet["etcd"].put(f"{PREFIX}revoked/{purchase_of(challenge)}")
    time.sleep(POLL_S + 1.5)  # one poll interval, plus the one-second tick the poll rides on
    for gateway in (a, b):
        assert_challenge(gateway.request("/v1/forecast", credential), "revoked", "weather")
        # A charge names its purchase's token id: revoking that id refuses the charge too.
        r = gateway.request("/pay/q", payment_credential(challenge, preimage))
        assert r.status == 402 and r.json()["reason"] == "revoked", (r.status, r.text)
        payment_challenge(r)
    other = b.buy("/v1/forecast")
    assert b.request("/v1/forecast", other).status == 200
    assert [r["headers"].get("x-l402-token-id") for r in clean_upstream.requests()] == [token_id_of(other)]


def test_an_etcd_outage_fails_closed(upstream, clean_upstream):
    """For a token and for a charge (fail_closed, the default): 503, never a pass, never a replay
    verdict the store could not give."""
    etcd = Etcd()
    backend = Backend("lnd")
    gateway = Gateway(backend, upstream.port, ROUTES, template_edit=with_etcd_cluster(etcd.port),
                      fleet={"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "timeout_ms": 300})
    try:
        credential = gateway.buy("/v1/forecast")
        charge = payment_credential(*buy_charge(gateway, "/pay/q"))
        once, once_token = buy_both(gateway, "/once/x")
        etcd.stop()
        r = gateway.request("/v1/forecast", credential)
        assert r.status == 503 and r.json()["reason"] == "gateway_error", (r.status, r.text)
        for path, authorization in [("/pay/q", charge), ("/pay/q", charge), ("/once/x", once),
                                    ("/once/x", once_token)]:
            r = gateway.request(path, authorization)
            assert r.status == 503 and r.json()["reason"] == "gateway_error", (path, r.status, r.text)
        assert clean_upstream.requests() == []
    finally:
        gateway.stop()
        backend.stop()


# -- the Payment scheme across the fleet ------------------------------------------------------------

def buy_charge(gateway: Gateway, path: str) -> tuple[dict[str, str], str]:
    """Ask `gateway` for `path` and pay the Payment challenge's invoice: (challenge, preimage)."""
    r = gateway.request(path)
    assert r.status == 402, (r.status, r.text)
    challenge = payment_challenge(r)
    return challenge, gateway.backend.pay(decoded(challenge["request"])["methodDetails"]["invoice"])


def buy_both(gateway: Gateway, path: str) -> tuple[str, str]:
    """One invoice paid, presented in both dialects: (the charge, the L402 token)."""
    r = gateway.request(path)
    assert r.status == 402, (r.status, r.text)
    challenge = payment_challenge(r)
    mac, invoice = challenge_parts(r)
    assert decoded(challenge["request"])["methodDetails"]["invoice"] == invoice
    preimage = gateway.backend.pay(invoice)
    charge, token = payment_credential(challenge, preimage), f"L402 {mac}:{preimage}"
    assert token_id_of(token) == purchase_of(challenge)
    return charge, token


def purchase_of(challenge: dict[str, str]) -> str:
    """The token id a charge draws on (its `opaque`)."""
    return decoded(challenge["opaque"])["token_id"]


def uses_in_etcd(fleet: dict[str, Any], token_id: str) -> str | None:
    return fleet["etcd"].get(f"{PREFIX}uses/{token_id}")


def assert_token_refused(r, reason: str, service: str) -> None:
    """An L402 token refused on a route with both dialects: the L402 JSON body, and the three
    challenges (LSAT, L402, Payment) for one fresh invoice."""
    assert r.status == 402, (r.status, r.text)
    body = r.json()
    assert (body["error"], body["reason"], body["service"]) == ("payment_required", reason, service), body
    assert [v.split(" ", 1)[0] for v in r.header_values("www-authenticate")] == ["LSAT", "L402", "Payment"]
    assert decoded(payment_challenge(r)["request"])["methodDetails"]["invoice"] == challenge_parts(r)[1]


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run `calls` on as many threads, released at once by a barrier."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait(timeout=10)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_a_charge_redeemed_on_one_gateway_is_a_replay_on_the_other(fleet, clean_upstream):
    a, b = fleet["gateways"]
    challenge, preimage = buy_charge(a, "/pay/quote")
    charge = payment_credential(challenge, preimage)
    ok = a.request("/pay/quote?n=1", charge)
    assert ok.status == 200, (ok.status, ok.text)
    assert "payment-receipt" in ok.headers
    for gateway in (b, a):
        r = gateway.request("/pay/quote?n=2", charge)
        assert_problem(r, "invalid-challenge", "replayed")
        assert payment_challenge(r)["id"] != challenge["id"], "a fresh challenge, not the spent one"
    (seen,) = clean_upstream.requests()
    assert seen["path"] == "/pay/quote?n=1" and "authorization" not in seen["headers"]
    assert seen["headers"]["x-l402-token-id"] == purchase_of(challenge)
    assert uses_in_etcd(fleet, purchase_of(challenge)) == "1"


def test_one_charge_sent_to_both_gateways_at_once_passes_once(fleet, clean_upstream):
    a, b = fleet["gateways"]
    charge = payment_credential(*buy_charge(b, "/pay/q"))
    answers = together([lambda i=i: (a, b)[i % 2].request(f"/pay/q?{i}", charge) for i in range(8)])
    statuses = [r.status for r in answers]
    assert statuses.count(200) == 1, statuses
    for r in answers:
        if r.status != 200:
            assert_problem(r, "invalid-challenge", "replayed")
    assert len(clean_upstream.requests()) == 1


@pytest.mark.parametrize("order", ["charge-first", "token-first", "together"])
def test_a_charge_and_its_token_buy_one_use_across_the_fleet(fleet, clean_upstream, order):
    """`uses: 1` and both dialects: the charge on A and the L402 token of the same invoice on B."""
    a, b = fleet["gateways"]
    charge, token = buy_both(a, "/once/x")
    on_a = lambda: a.request("/once/x?via=charge", charge)  # noqa: E731
    on_b = lambda: b.request("/once/x?via=token", token)  # noqa: E731
    if order == "charge-first":
        by_charge, by_token = on_a(), on_b()
    elif order == "token-first":
        by_token = on_b()
        by_charge = on_a()
    else:
        by_charge, by_token = together([on_a, on_b])
    passed = [r for r in (by_charge, by_token) if r.status == 200]
    assert len(passed) == 1, (by_charge.status, by_charge.text, by_token.status, by_token.text)
    if by_charge.status == 200:
        assert_token_refused(by_token, "used_up", "once")
        winner = "charge"
    else:
        assert_problem(by_charge, "invalid-challenge", "replayed")
        winner = "token"
    if order != "together":
        assert winner == order.split("-")[0]
    assert [e["path"] for e in clean_upstream.requests()] == [f"/once/x?via={winner}"]
    assert uses_in_etcd(fleet, token_id_of(token)) == "1"


def test_a_charge_takes_the_whole_purchase_across_the_fleet(fleet, clean_upstream):
    """`uses: 3`: a charge spends all three uses at once, and only while none is spent."""
    a, b = fleet["gateways"]
    charge, token = buy_both(a, "/multi/x")
    assert a.request("/multi/x", charge).status == 200
    assert uses_in_etcd(fleet, token_id_of(token)) == "3"
    for gateway in (b, a):
        assert_token_refused(gateway.request("/multi/x", token), "used_up", "multi")

    charge, token = buy_both(b, "/multi/y")
    assert b.request("/multi/y", token).status == 200
    assert uses_in_etcd(fleet, token_id_of(token)) == "1"
    for gateway in (a, b):
        assert_problem(gateway.request("/multi/y", charge), "invalid-challenge", "replayed")
    assert uses_in_etcd(fleet, token_id_of(token)) == "1", "a refused charge counts nothing"
    assert [a.request("/multi/y", token).status, b.request("/multi/y", token).status] == [200, 200]
    assert uses_in_etcd(fleet, token_id_of(token)) == "3"
    assert_token_refused(a.request("/multi/y", token), "used_up", "multi")
    assert [e["path"] for e in clean_upstream.requests()] == ["/multi/x"] + ["/multi/y"] * 3
