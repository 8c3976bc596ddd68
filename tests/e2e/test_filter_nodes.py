"""l402.wasm in a real Envoy in front of the LND and Core Lightning simulators (tests/sim) over TLS,
with the shipped configs envoy/lnd-tls.yaml and envoy/cln-tls.yaml; then every kind of node
failure: a 503 with a JSON reason, never a pass-through, and the gateway recovers with the node."""

from __future__ import annotations

import base64
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import bolt11
import pytest

from harness import ROOT, Envoy, _tmpdir, free_port, http
from test_filter_support import (
    assert_challenge, assert_upstream_saw_only_paid, challenge_parts, credential_valid, get, inspect,
    new_secret, plugin_config, render, shipped, token_id_of, with_plugin_config,
)

sys.path.insert(0, str(ROOT / "tests" / "sim"))
from launch import Sim, start_sim  # noqa: E402

PRICE_MSAT = 10_000
PAID = {"/v1/": "weather"}
FAULT_TIMEOUT_MS = 500


def sim_vars(kind: str, sim: Sim, upstream_port: int, cert: str | None = None) -> dict[str, Any]:
    k = kind.upper()
    return {"LISTEN_PORT": free_port(), "UPSTREAM_PORT": upstream_port, f"{k}_HOST": "127.0.0.1",
            f"{k}_PORT": sim.port, f"{k}_TLS_CERT": cert or sim.cert_path}


def sim_env(kind: str, sim: Sim, secret: str) -> dict[str, str]:
    return {"L402_SECRETS": secret,
            ("LND_INVOICE_MACAROON_HEX" if kind == "lnd" else "CLN_RUNE"): sim.credential}


def new_credential(kind: str) -> str:
    return secrets.token_hex(48) if kind == "lnd" else base64.urlsafe_b64encode(secrets.token_bytes(40)).decode()


class Gate:
    def __init__(self, kind: str, sim: Sim, envoy: Envoy, secret: str):
        self.kind, self.sim, self.envoy, self.secret = kind, sim, envoy, secret

    def url(self, path: str) -> str:
        return self.envoy.url(path)


@pytest.fixture(scope="module", params=["lnd", "cln"])
def gate(request, upstream, wasm) -> Iterator[Gate]:
    """The shipped envoy/<kind>-tls.yaml, unchanged, in front of the simulator (its real cert)."""
    kind = request.param
    sim = start_sim(kind, _tmpdir(f"{kind}sim-"), credential=new_credential(kind))
    secret = new_secret()
    envoy = Envoy(shipped(f"{kind}-tls.yaml"), vars=sim_vars(kind, sim, upstream.port),
                  env=sim_env(kind, sim, secret))
    try:
        envoy.start()
        yield Gate(kind, sim, envoy, secret)
    finally:
        envoy.stop()
        sim.stop()


def test_pay_and_reuse_over_tls(gate, clean_upstream):
    sim, kind = gate.sim, gate.kind
    sim.reset_stats()
    r = get(gate.url("/v1/forecast"))
    body = assert_challenge(r, "payment_required", "weather")
    mac, invoice = challenge_parts(r)
    payment_hash = inspect(mac)["identifier"]["payment_hash"]
    decoded = bolt11.decode(invoice)
    assert decoded.amount_msat == PRICE_MSAT == body["price_msat"]
    assert decoded.payment_hash == payment_hash
    assert decoded.description == "weather API access"
    # The node holds it, open, under the filter's token id as label (CLN) / with the memo (LND).
    status, found = sim.lookup_invoice(payment_hash)
    assert status == (200 if kind == "lnd" else 201)
    if kind == "lnd":
        assert found["state"] == "OPEN" and found["memo"] == "weather API access"
    else:
        (inv,) = found["invoices"]
        assert inv["status"] == "unpaid" and inv["label"] == inspect(mac)["identifier"]["token_id"]

    paid = sim.pay(invoice)
    assert paid["payment_hash"] == payment_hash
    cred = f"L402 {mac}:{paid['payment_preimage']}"
    calls_after_challenge = sim.stats()
    for path in ("/v1/forecast", "/v1/forecast?again=1", "/v1/other"):
        ok = get(gate.url(path), cred)
        assert ok.status == 200, ok.text
        assert ok.json()["path"] == path

    stats = sim.stats()
    # One invoice created; after that (and this test's own lookup) no node call at all.
    assert stats["invoice_create"] == 1 and stats["auth_failures"] == 0
    assert stats["requests"] == calls_after_challenge["requests"] == 2, "a paid request called the node"
    assert stats["invoice_lookup"] == 1
    # TLS to the node was really used and verified.
    es = gate.envoy.stats()
    assert es.get(f"cluster.{kind}.ssl.handshake", 0) >= 1
    assert es.get(f"cluster.{kind}.ssl.fail_verify_error", 0) == 0
    log = clean_upstream.requests()
    assert [e["path"] for e in log] == ["/v1/forecast", "/v1/forecast?again=1", "/v1/other"]
    assert {e["headers"]["x-l402-token-id"] for e in log} == {token_id_of(cred)}
    assert assert_upstream_saw_only_paid(log, gate.secret, PAID, [cred]) == 3


def test_unpaid_invoice_preimage_guess_refused(gate, clean_upstream):
    r = get(gate.url("/v1/forecast"))
    mac, _ = challenge_parts(r)
    r = get(gate.url("/v1/forecast"), f"L402 {mac}:{secrets.token_hex(32)}")
    assert_challenge(r, "preimage_mismatch", "weather")
    assert clean_upstream.requests() == []


def test_untrusted_node_certificate_is_refused(upstream, clean_upstream, wasm):
    """A node whose certificate is not the pinned one is never sent the credential or a request
    that could create an invoice: the TLS handshake fails and the gateway answers 503."""
    lnd = start_sim("lnd", _tmpdir("lndsim-"), credential=new_credential("lnd"))
    other = start_sim("cln", _tmpdir("clnsim-"), credential=new_credential("cln"))
    try:
        with Envoy(shipped("lnd-tls.yaml"), vars=sim_vars("lnd", lnd, upstream.port, cert=other.cert_path),
                   env=sim_env("lnd", lnd, new_secret())) as envoy:
            r = get(envoy.url("/v1/forecast"))
            assert r.status == 503, r.text
            body = r.json()
            assert body["error"] == "node_unavailable"
            assert body["reason"] == "node_unreachable", body
            assert lnd.stats()["requests"] == 0
            assert envoy.stats().get("cluster.lnd.ssl.fail_verify_error", 0) >= 1
    finally:
        lnd.stop()
        other.stop()
    assert clean_upstream.requests() == []


# -- node failures --------------------------------------------------------------------------------

class FaultGate:
    """LND simulator + Envoy (envoy/lnd-tls.yaml with timeout_ms 500). The simulator is restarted on
    the same port by the "down" test; a restarted simulator has a new self-signed certificate, so
    this Envoy encrypts to the node without pinning its certificate (pinning is tested above)."""

    def __init__(self, upstream, tmp: Path):
        self.tmp = tmp
        self.credential = new_credential("lnd")
        self.sim = start_sim("lnd", tmp, credential=self.credential)
        self.secret = new_secret()
        vars = sim_vars("lnd", self.sim, upstream.port)
        template = shipped("lnd-tls.yaml")
        cfg = plugin_config(render(template, vars))
        cfg["node"]["timeout_ms"] = FAULT_TIMEOUT_MS
        template = with_plugin_config(template, cfg)
        lines = template.splitlines(keepends=True)
        start = next(i for i, l in enumerate(lines) if "validation_context:" in l)
        template = "".join(lines[:start - 1] + ["        common_tls_context: {}\n"])
        self.envoy = Envoy(template, vars=vars, env=sim_env("lnd", self.sim, self.secret)).start()
        self.paid_credential = self.pay_once()
        self.credentials = [self.paid_credential]
        self.vm_baseline = self.vm_stats()

    def url(self, path: str) -> str:
        return self.envoy.url(path)

    def pay_once(self) -> str:
        r = get(self.url("/v1/forecast"))
        assert r.status == 402, r.text
        mac, invoice = challenge_parts(r)
        return f"L402 {mac}:{self.sim.pay(invoice)['payment_preimage']}"

    def restart_sim(self) -> None:
        port = self.sim.port
        self.sim = start_sim("lnd", self.tmp, credential=self.credential, port=port)

    def vm_stats(self) -> dict[str, Any]:
        return {k: v for k, v in self.envoy.stats().items() if k.startswith("wasm.")}

    def assert_healthy(self) -> None:
        """Envoy alive, the same Wasm VMs, no reload or failure, no panic in the log."""
        assert self.envoy.proc is not None and self.envoy.proc.poll() is None
        assert http("GET", self.envoy.admin + "/ready").status == 200
        now = self.vm_stats()
        for name in ("wasm.envoy.wasm.runtime.v8.active", "wasm.envoy.wasm.runtime.v8.created",
                     "wasm.wasm_vm_count"):
            assert now.get(name) == self.vm_baseline.get(name), (name, now.get(name), self.vm_baseline.get(name))
        assert now["wasm.envoy.wasm.runtime.v8.active"] >= 1
        for name in ("wasm.l402.vm_reload", "wasm.l402.vm_reload_failure", "wasm.l402.vm_reload_backoff"):
            assert now.get(name, 0) == 0, (name, now)
        assert not [n for n, v in now.items() if "fail" in n and "fetch" not in n and v], now
        log = self.envoy.log_text()
        for bad in ("panicked", "Wasm VM failed", "critical", "Function: proxy_on"):
            assert bad not in log, log[-2000:]

    def assert_recovered(self) -> None:
        r = get(self.url("/v1/forecast"))
        assert_challenge(r, "payment_required", "weather")
        mac, invoice = challenge_parts(r)
        cred = f"L402 {mac}:{self.sim.pay(invoice)['payment_preimage']}"
        self.credentials.append(cred)
        assert get(self.url("/v1/forecast"), cred).status == 200


@pytest.fixture(scope="module")
def faulty(upstream, wasm) -> Iterator[FaultGate]:
    g = FaultGate(upstream, _tmpdir("lndsim-fault-"))
    try:
        yield g
    finally:
        g.envoy.stop()
        g.sim.stop()


def assert_node_failure(r, reason: str) -> dict[str, Any]:
    assert r.status == 503, (r.status, r.text)
    assert r.headers["content-type"] == "application/json"
    assert r.headers.get("retry-after") == "5"
    assert "www-authenticate" not in r.headers
    body = r.json()
    assert body["error"] == "node_unavailable", body
    assert body["reason"] == reason, body
    return body


FAULTS = [
    # mode, delay_ms, reason
    ("slow", 3 * FAULT_TIMEOUT_MS, "node_unreachable"),
    ("hang", 0, "node_unreachable"),
    ("error500", 0, "node_error_status"),
    ("garbage", 0, "node_bad_response"),
    ("huge", 0, "node_bad_response"),
    ("reset", 0, "node_unreachable"),
]


@pytest.mark.parametrize("mode,delay_ms,reason", FAULTS, ids=[f[0] for f in FAULTS])
def test_node_fault(faulty, clean_upstream, mode, delay_ms, reason):
    sim = faulty.sim
    sim.set_fault(mode, delay_ms)
    try:
        before = sim.stats()["faults_injected"]
        t0 = time.monotonic()
        r = get(faulty.url("/v1/forecast"))
        elapsed = time.monotonic() - t0
        assert_node_failure(r, reason)
        assert sim.stats()["faults_injected"] == before + 1, "the node was not asked"
        if mode in ("slow", "hang"):
            # The plugin's timeout_ms bounds the wait, not the node.
            assert FAULT_TIMEOUT_MS / 1000 * 0.8 <= elapsed < FAULT_TIMEOUT_MS / 1000 + 0.7, elapsed
        # A refused credential needs a new invoice too: also 503, never a pass-through.
        wrong = faulty.paid_credential.rsplit(":", 1)[0] + ":" + "00" * 32
        assert_node_failure(get(faulty.url("/v1/forecast"), wrong), reason)
        # A paid credential needs no node at all: it still gets in during the outage.
        assert get(faulty.url("/v1/forecast"), faulty.paid_credential).status == 200
        assert sim.stats()["faults_injected"] == before + 2
    finally:
        sim.set_fault("none")
    faulty.assert_recovered()
    faulty.assert_healthy()
    assert len(clean_upstream.requests()) == 2
    assert assert_upstream_saw_only_paid(clean_upstream.requests(), faulty.secret, PAID, faulty.credentials) == 2


def test_node_down_then_back(faulty, clean_upstream):
    faulty.sim.stop()
    try:
        for _ in range(3):
            assert_node_failure(get(faulty.url("/v1/forecast")), "node_unreachable")
        assert get(faulty.url("/v1/forecast"), faulty.paid_credential).status == 200
        faulty.assert_healthy()
    finally:
        faulty.restart_sim()
    faulty.assert_recovered()
    faulty.assert_healthy()
    assert assert_upstream_saw_only_paid(clean_upstream.requests(), faulty.secret, PAID, faulty.credentials) == 2
