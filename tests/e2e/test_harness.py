"""Smoke test of the harness with real parts and no wasm filter."""

from __future__ import annotations

import hashlib

import bolt11

from harness import http, plain_proxy


def test_plain_envoy_proxies_to_upstream(envoy_factory, clean_upstream):
    template, vars = plain_proxy(clean_upstream.port)
    envoy = envoy_factory(template, vars=vars)
    r = http("GET", envoy.url("/v1/hello?x=1"), headers={"X-Probe": "smoke"})
    assert r.status == 200, r.text
    assert r.json()["path"] == "/v1/hello?x=1"
    log = clean_upstream.requests()
    assert [(e["method"], e["path"]) for e in log] == [("GET", "/v1/hello?x=1")]
    assert log[0]["headers"]["x-probe"] == "smoke"
    # the control interface is on another port, which Envoy does not route
    assert http("GET", envoy.url("/__log")).status == 200  # proxied to the service port: a normal answer
    assert len(http("GET", clean_upstream.control_url + "/__log").json()) == 2
    stats = envoy.stats()
    assert stats.get("cluster.upstream.upstream_rq_200", 0) >= 2
    assert "envoy_cluster_upstream_rq" in envoy.stats_prometheus()


def test_envoy_validate(tmp_path):
    from harness import Envoy

    template, vars = plain_proxy(1)
    assert Envoy.validate_text(template, vars=vars).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: {listeners: [{name: x, bogus: 1}]}\n")
    res = Envoy.validate(bad)
    assert res.returncode != 0 and "bogus" in res.stdout


def test_lnbits_invoice_pay_status(lnbits):
    inv = lnbits.create_invoice(lnbits.gateway.inkey, 21, memo="harness smoke")
    pr = inv.get("bolt11") or inv["payment_request"]
    decoded = bolt11.decode(pr)
    assert decoded.amount_msat == 21_000
    assert decoded.payment_hash == inv["payment_hash"]
    assert lnbits.payment_status(inv["payment_hash"])["paid"] is False

    before = lnbits.balance_msat(lnbits.gateway.inkey)
    preimage = lnbits.pay(lnbits.payer.adminkey, pr)
    assert hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == inv["payment_hash"]
    status = lnbits.payment_status(inv["payment_hash"])
    assert status["paid"] is True and status["preimage"] == preimage
    assert lnbits.balance_msat(lnbits.gateway.inkey) == before + 21_000
