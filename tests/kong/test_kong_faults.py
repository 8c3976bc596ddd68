"""Node faults in Kong's Wasm engine: a refused connection, a node that hangs until `node.timeout_ms`,
an error status, garbage, a reset after the request, TLS to a node whose certificate is not the
trusted one, and plain HTTP to a TLS node. Each gives 503 and never the API; paid requests do not
need the node; the service resumes when the node is back.

The bodies: nginx loses the body of a local response sent right after a callout that failed once
its request had gone out (ngx_wasm_module recycles the call's request buffer into the response and
empties it; the client got no answer at all). The filter sends those 503s without a body, with
their status and `Retry-After`. It keeps the JSON body where the engine says the call failed before
sending (a TLS handshake failure) and for an answer it could read (an error status, garbage). A
refused connection is reported by the engine like a reset ("broken connection"), so it goes without
a body too.

On the engines that never call the filter back when a callout fails (Kong 3.4-3.8, e.g. Kong 3.8's
pin 96b4e27e) only the safety tests run (`L402_KONG_LEGACY_NGINX`): the engine resumes the paused
unpaid request by itself, so **the API receives it** (which is why those Kong versions are
unsupported); the filter replaces the API's answer by a 503 `not_admitted`, counts it and logs it at
error level, and the client never gets the API's answer. Those engines cannot make an answer's body
longer than it came, so the JSON replacement takes the API's declared length (padded) where it fits,
and the 503 goes without a body where it does not. Paid requests still pass there.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from engine import ENGINES, LEGACY_ENGINES, SHM_KV, engine_params, tls_trust
from harness import free_port, self_signed_cert
from kong_common import api_paths, assert_joined_challenge, config, lnd_node, lnd_tls_node, token

TIMEOUT_MS = 500
# fault → (JSON reason of the 503, or None for a bodiless 503 on the engines that call back)
FAULTS = {
    "refused": None,
    "hang": None,
    "reset": None,
    "error500": "node_error_status",
    "garbage": "node_bad_response",
    "tls-wrong-cert": "node_unreachable",
    "plain-to-tls-node": None,
}
# the faults where a legacy engine resumes the request instead of calling back (on the others,
# including a TLS node closing a plain-HTTP call without an answer, it calls back)
CALL_FAILS = {"refused", "hang", "reset", "tls-wrong-cert"}


def faulty_gateway(gateway: Any, nginx: str, lnd: Any, lnd_tls: Any, fault: str, tmp_path: Any):
    """A gateway whose node shows `fault` (set on the simulator where it is a simulator mode)."""
    extra = SHM_KV
    if fault == "refused":
        node = lnd_node(lnd, TIMEOUT_MS, port=free_port())
    elif fault == "tls-wrong-cert":
        other, _ = self_signed_cert(tmp_path, "not-the-node")
        node = lnd_tls_node(lnd_tls, TIMEOUT_MS)
        extra = f"{SHM_KV} {tls_trust(other)}"
    elif fault == "plain-to-tls-node":
        node = lnd_node(lnd_tls, TIMEOUT_MS)
    else:
        node = lnd_node(lnd, TIMEOUT_MS)
        lnd.set_fault(fault)
    return gateway(config(node), nginx, wasm_extra=extra)


def assert_not_the_api(r: Any) -> None:
    assert not 200 <= r.status < 300, (r.status, r.text)
    assert b"l402-test-upstream" not in r.body, r.text


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_node_fault_gives_503_never_the_api(nginx, gateway, lnd, lnd_tls, api, faulty, tmp_path, fault):
    gw = faulty_gateway(gateway, nginx, lnd, lnd_tls, fault, tmp_path)
    for path in ("/v1/forecast", "/admin/panel"):
        t0 = time.monotonic()
        r = gw.get(path)
        elapsed = time.monotonic() - t0
        assert_not_the_api(r)
        assert r.status == 503, (fault, r.status, r.text)
        assert r.headers.get("retry-after") == "5"
        reason = FAULTS[fault]
        if reason is None:
            assert r.body == b"", (fault, r.body[:200])
        else:
            body = r.json()
            assert body["reason"] == reason and body["error"] == "node_unavailable", body
        assert elapsed < TIMEOUT_MS / 1000 + 2, elapsed
    assert api.requests() == [], "an unpaid request reached the API while the node failed"
    assert len(gw.workers()) == 2 and not gw.log_lines(r"exited on signal|zero size buf")
    # Paid requests never need the node, and free ones neither.
    assert gw.get("/v1/forecast", {"Authorization": token()}).status == 200
    assert gw.get("/health").status == 200
    assert api_paths(api) == ["/v1/forecast", "/health"]


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
def test_service_resumes_when_the_node_is_back(nginx, gateway, lnd, api, faulty):
    gw = gateway(config(lnd_node(lnd, TIMEOUT_MS)), nginx)
    for fault in ("hang", "reset", "error500", "garbage"):
        lnd.set_fault(fault)
        assert gw.get("/v1/forecast").status == 503, fault
        lnd.set_fault("none")
        r = gw.get("/v1/forecast")
        assert_joined_challenge(r, "payment_required")
    mac, invoice = __import__("kong_common").challenge_of(r)
    pre = lnd.pay(invoice)["payment_preimage"]
    assert gw.get("/v1/forecast", {"Authorization": f"L402 {mac}:{pre}"}).status == 200
    assert api_paths(api) == ["/v1/forecast"]
    assert len(gw.workers()) == 2


@pytest.mark.parametrize("nginx", engine_params(ENGINES))
def test_many_requests_on_a_hung_node_all_get_their_503(nginx, gateway, lnd, api, faulty):
    """Concurrent requests paused on a hung node: each gets its own answer at the timeout."""
    from kong_common import concurrently
    gw = gateway(config(lnd_node(lnd, TIMEOUT_MS)), nginx)
    lnd.set_fault("hang")
    statuses = concurrently(gw, "/v1/forecast", {}, 6)
    assert statuses == [503] * 6, statuses
    assert api.requests() == []


# -- engines that never call back after a failed callout (Kong 3.4-3.8) -------------------------------

@pytest.mark.parametrize("nginx", engine_params(LEGACY_ENGINES))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_legacy_engine_never_delivers_the_api_to_an_unpaid_request(nginx, gateway, lnd, lnd_tls, api, faulty,
                                                                   tmp_path, fault):
    """Where the callout fails, the engine resumes the paused request: the API receives it (the reason
    these Kong versions are unsupported) but its answer is withheld: 503 `not_admitted`, logged at
    error level. Where the node answers (an error status, garbage, a close without an answer) the
    engine calls back and the filter answers its 503 itself: the API sees nothing."""
    gw = faulty_gateway(gateway, nginx, lnd, lnd_tls, fault, tmp_path)
    # The API's answer to this path is longer than the replacement, which then fits in it.
    long_path = "/v1/forecast?" + "p" * 80
    r = gw.get(long_path)
    assert_not_the_api(r)
    assert r.status == 503, (fault, r.status, r.text)
    if fault in CALL_FAILS:
        assert r.json()["reason"] == "not_admitted", r.text
        assert r.headers["content-length"] == str(len(r.body))
        # A shorter answer than the replacement: the engine cannot grow it, so no body at all.
        short = gw.get("/v1/forecast")
        assert short.status == 503 and short.body == b"" and short.headers["content-length"] == "0"
        assert gw.log_lines(r"\[error\].*did not admit"), "the withheld answer was not logged at error level"
        assert api_paths(api) == [long_path, "/v1/forecast"], "expected: this engine lets the API see the unpaid request"
    else:
        if FAULTS[fault] is None:
            assert r.body == b""
        else:
            assert r.json()["reason"] == FAULTS[fault], r.text
        assert api.requests() == []
    # A paid request still passes on such an engine, with the API's own answer.
    api.clear()
    paid = gw.get("/v1/forecast", {"Authorization": token()})
    assert paid.status == 200 and b"l402-test-upstream" in paid.body
    assert api_paths(api) == ["/v1/forecast"]
    assert gw.alive()


@pytest.mark.parametrize("nginx", engine_params(LEGACY_ENGINES))
def test_legacy_engine_still_serves_challenges_and_refusals(nginx, gateway, lnd, api):
    gw = gateway(config(lnd_node(lnd)), nginx)
    assert_joined_challenge(gw.get("/v1/forecast"), "payment_required")
    assert_joined_challenge(gw.get("/v1/forecast", {"Authorization": token(secret="00" * 32)}), "bad_signature")
    assert gw.get("/health", {"x-l402-service": "x"}).json()["reason"] == "reserved_header"
    assert api.requests() == []
