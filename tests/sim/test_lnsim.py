"""Tests of the Lightning node simulator against the behaviour of the real REST APIs."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import bolt11
import pytest

try:
    from .launch import start_sim
except ImportError:  # collected without the package context
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from launch import start_sim

LND_MACAROON = "0201036c6e6402f801030a10" + "ab" * 40
CLN_RUNE = "tU-RLjMiDpY2U0o3W1oFowar36RFGpWloPbW9-RuZdo9MyZpZD0wMjRiOWExZmE4ZTAwNmYxZTM5MzdmNjVmNjZjNDA4ZTZkYThlMWNhNzI4ZWE0MzIyMmE3MzYzMWNmYjk2NDk"


@pytest.fixture(scope="module")
def lnd(tmp_path_factory):
    sim = start_sim("lnd", tmp_path_factory.mktemp("lnd"), credential=LND_MACAROON)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def cln(tmp_path_factory):
    sim = start_sim("cln", tmp_path_factory.mktemp("cln"), credential=CLN_RUNE)
    yield sim
    sim.stop()


@pytest.fixture(params=["lnd", "cln"])
def node(request, lnd, cln):
    sim = lnd if request.param == "lnd" else cln
    sim.set_fault("none")
    yield sim
    sim.set_fault("none")


def node_pubkey(sim) -> str:
    return json.loads((sim.state_dir / "node.json").read_text())["pubkey"]


# ---------------------------------------------------------------------------
# start-up, TLS


def test_tls_certificate_and_ready_file(node):
    from cryptography import x509

    pem = Path(node.cert_path).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == "localhost"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert int((node.state_dir / "ready").read_text()) == node.port
    # The certificate verifies both the IP and the name localhost.
    for host in ("127.0.0.1", "localhost"):
        ctx = ssl.create_default_context(cafile=node.cert_path)
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_untrusted_client_rejects_certificate(node):
    ctx = ssl.create_default_context()  # system CAs only
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="localhost")


def test_plain_mode_and_random_credential(tmp_path):
    with start_sim("lnd", tmp_path, plain=True) as sim:
        assert sim.url.startswith("http://")
        assert not (tmp_path / "tls.cert").exists()
        assert len(bytes.fromhex(sim.credential)) >= 32
        status, body = sim.request("POST", "/v1/invoices", {"value": 5})
        assert status == 200 and body["payment_request"].startswith("lnbcrt50n1")


def test_sigterm_exits_cleanly(tmp_path):
    sim = start_sim("cln", tmp_path)
    assert sim.stop() == 0
    assert not (tmp_path / "ready").exists()
    assert sim.stderr_text() == ""


# ---------------------------------------------------------------------------
# invoices: creation and BOLT11


@pytest.mark.parametrize("amount_msat", [1, 1000, 123456789, 4294967000])
def test_invoice_decodes_with_exact_amount_and_hash(node, amount_msat):
    memo = "l402 token 7f3a — ünïcode"
    inv = node.create_invoice(amount_msat, memo, expiry=600)
    d = bolt11.decode(inv["payment_request"])
    assert d.currency == "bcrt"
    assert inv["payment_request"].startswith("lnbcrt")
    assert d.amount_msat == amount_msat
    assert d.payment_hash == inv["payment_hash"]
    assert d.description == memo
    assert d.expiry == 600
    assert len(bytes.fromhex(d.payment_secret)) == 32
    assert d.payee == node_pubkey(node)  # signature recovers the node key
    assert d.signature.verify(d.payee)
    assert abs(d.date - time.time()) < 60
    assert d.features.has_feature("payment_secret") == "required"


def test_lnd_add_invoice_response_encoding(lnd):
    for req in ({"value": "21", "memo": "m", "expiry": "120"},
                {"value": 21, "memo": "m", "expiry": 120},
                {"valueMsat": "21000", "memo": "m", "expiry": "120"}):
        status, body = lnd.request("POST", "/v1/invoices", req)
        assert status == 200, body
        assert set(body) == {"r_hash", "payment_request", "add_index", "payment_addr"}
        r_hash = base64.b64decode(body["r_hash"], validate=True)
        assert len(r_hash) == 32
        assert isinstance(body["add_index"], str) and int(body["add_index"]) > 0
        d = bolt11.decode(body["payment_request"])
        assert d.payment_hash == r_hash.hex()
        assert d.amount_msat == 21000
        assert base64.b64decode(body["payment_addr"]).hex() == d.payment_secret


def test_lnd_value_msat_not_whole_sats(lnd):
    status, body = lnd.request("POST", "/v1/invoices", {"value_msat": "1500", "memo": "x"})
    assert status == 200
    assert bolt11.decode(body["payment_request"]).amount_msat == 1500
    h = base64.b64decode(body["r_hash"]).hex()
    status, inv = lnd.request("GET", "/v1/invoice/" + h)
    assert inv["value"] == "1" and inv["value_msat"] == "1500"


def test_lnd_rejects_bad_requests(lnd):
    status, body = lnd.request("POST", "/v1/invoices", {"value": "1", "value_msat": "1000"})
    assert (status, body["code"]) == (500, 2)
    assert "mutually exclusive" in body["message"]
    status, body = lnd.request("POST", "/v1/invoices", {"value": "abc"})
    assert (status, body["code"]) == (400, 3)
    assert body["details"] == []
    status, _, raw = lnd.raw_request("POST", "/v1/invoices", b"{not json", lnd.auth_headers())
    assert status == 400 and json.loads(raw)["code"] == 3
    status, body = lnd.request("POST", "/v1/invoices", {"value": "1", "memo": "x" * 640})
    assert status == 500 and "memo" in body["message"]
    status, body = lnd.request("GET", "/v1/nothing-here")
    assert status == 404 and body == {"code": 5, "message": "Not Found", "details": []}


def test_lnd_default_expiry_and_zero_amount(lnd):
    status, body = lnd.request("POST", "/v1/invoices", {"memo": "any amount"})
    assert status == 200
    d = bolt11.decode(body["payment_request"])
    assert d.amount_msat is None
    assert d.expiry == 86400


def test_cln_invoice_response(cln):
    status, body = cln.request("POST", "/v1/invoice", {
        "amount_msat": 50000, "label": "tok-cln-1", "description": "pay me", "expiry": 300})
    assert status == 201
    assert set(body) == {"payment_hash", "expires_at", "bolt11", "payment_secret", "created_index"}
    d = bolt11.decode(body["bolt11"])
    assert d.payment_hash == body["payment_hash"]
    assert d.payment_secret == body["payment_secret"]
    assert d.amount_msat == 50000
    assert body["expires_at"] == d.date + 300
    assert isinstance(body["created_index"], int)


def test_cln_amount_forms(cln):
    for i, (given, msat) in enumerate([("2000msat", 2000), ("3sat", 3000), ("4000", 4000)]):
        status, body = cln.request("POST", "/v1/invoice", {
            "amount_msat": given, "label": "amt-form-%d" % i, "description": "d"})
        assert status == 201, body
        assert bolt11.decode(body["bolt11"]).amount_msat == msat
        assert bolt11.decode(body["bolt11"]).expiry == 604800  # CLN's default
    status, body = cln.request("POST", "/v1/invoice", {
        "amount_msat": "any", "label": "amt-any", "description": "d"})
    assert status == 201 and bolt11.decode(body["bolt11"]).amount_msat is None
    status, body = cln.request("POST", "/v1/invoice", {
        "amount_msat": -5, "label": "amt-neg", "description": "d"})
    assert status == 500 and body["code"] == -32602


def test_cln_duplicate_label(cln):
    req = {"amount_msat": 1000, "label": "dup-label", "description": "one"}
    status, first = cln.request("POST", "/v1/invoice", req)
    assert status == 201
    status, body = cln.request("POST", "/v1/invoice", dict(req, description="two"))
    assert status == 500
    assert body == {"code": 900, "message": "Duplicate label 'dup-label'", "data": None}
    # The first invoice is untouched.
    status, listed = cln.request("POST", "/v1/listinvoices", {"label": "dup-label"})
    assert [i["payment_hash"] for i in listed["invoices"]] == [first["payment_hash"]]
    assert listed["invoices"][0]["description"] == "one"


def test_cln_missing_params_and_unknown_method(cln):
    status, body = cln.request("POST", "/v1/invoice", {"amount_msat": 1000, "label": "x"})
    assert status == 500
    assert body == {"code": -32602, "message": "missing required parameter: description",
                    "data": None}
    status, body = cln.request("POST", "/v1/listinvoices", {"payment_hash": "abcd"})
    assert status == 500 and body["code"] == -32602
    status, body = cln.request("POST", "/v1/nosuchmethod", {})
    assert status == 404 and body["code"] == -32601


# ---------------------------------------------------------------------------
# authentication


def test_lnd_auth(lnd):
    for headers, message in [
        ({"Grpc-Metadata-macaroon": LND_MACAROON[:-2] + "00"},
         "verification failed: signature mismatch after caveat verification"),
        ({}, "expected 1 macaroon, got 0"),
    ]:
        status, _, raw = lnd.raw_request("POST", "/v1/invoices", b'{"value":"1"}', headers)
        assert status == 500  # grpc Unknown, as real lnd answers
        assert json.loads(raw) == {"code": 2, "message": message, "details": []}
    status, _, raw = lnd.raw_request("GET", "/v1/invoice/" + "00" * 32,
                                     headers={"Grpc-Metadata-macaroon": "zz"})
    assert status == 500 and json.loads(raw)["message"].startswith("encoding/hex: invalid byte")
    # Upper-case hex is the same macaroon.
    status, _ = lnd.request("POST", "/v1/invoices", {"value": "1"},
                            headers={"Grpc-Metadata-macaroon": LND_MACAROON.upper()})
    assert status == 200


def test_cln_auth(cln):
    req = b'{"amount_msat":1000,"label":"auth-x","description":"d"}'
    status, _, raw = cln.raw_request("POST", "/v1/invoice", req, {"Rune": CLN_RUNE + "x"})
    assert status == 401
    assert json.loads(raw) == {"code": 1501, "message": "Not authorized: Not derived from master",
                               "data": None}
    status, _, raw = cln.raw_request("POST", "/v1/invoice", req, {})
    assert status == 403
    assert json.loads(raw) == {"code": 1501, "message": "Not authorized: Missing rune", "data": None}
    # Nothing was created by the refused calls.
    status, body = cln.request("POST", "/v1/listinvoices", {"label": "auth-x"})
    assert status == 201 and body == {"invoices": []}


# ---------------------------------------------------------------------------
# payment and lookups


def test_pay_and_lookup(node):
    inv = node.create_invoice(42000, "buy", expiry=600)
    status, before = node.lookup_invoice(inv["payment_hash"])
    if node.kind == "lnd":
        assert status == 200
        assert before["state"] == "OPEN" and before["settled"] is False
        assert before["amt_paid_msat"] == "0"
    else:
        assert status == 201
        (row,) = before["invoices"]
        assert row["status"] == "unpaid"
        assert "payment_preimage" not in row and "amount_received_msat" not in row

    paid = node.pay(inv["payment_request"])
    preimage = bytes.fromhex(paid["payment_preimage"])
    assert len(preimage) == 32
    assert hashlib.sha256(preimage).hexdigest() == inv["payment_hash"] == paid["payment_hash"]
    # Idempotent: paying again returns the same preimage.
    assert node.pay(inv["payment_request"])["payment_preimage"] == paid["payment_preimage"]

    status, after = node.lookup_invoice(inv["payment_hash"])
    if node.kind == "lnd":
        assert status == 200
        assert after["state"] == "SETTLED" and after["settled"] is True
        assert after["amt_paid_msat"] == "42000" and after["amt_paid_sat"] == "42"
        assert base64.b64decode(after["r_preimage"]) == preimage
        assert base64.b64decode(after["r_hash"]).hex() == inv["payment_hash"]
        assert int(after["settle_date"]) >= int(after["creation_date"]) > 0
        assert after["value_msat"] == "42000" and after["value"] == "42"
        assert after["payment_request"] == inv["payment_request"]
        assert int(after["settle_index"]) > 0
    else:
        assert status == 201
        (row,) = after["invoices"]
        assert row["status"] == "paid"
        assert row["amount_received_msat"] == 42000 and row["amount_msat"] == 42000
        assert row["payment_preimage"] == preimage.hex()
        assert row["paid_at"] >= row["expires_at"] - 600
        assert row["bolt11"] == inv["payment_request"]


def test_lnd_lookup_errors(lnd):
    status, body = lnd.request("GET", "/v1/invoice/" + "ab" * 32)
    assert status == 404 and body == {"code": 5, "message": "unable to locate invoice", "details": []}
    status, body = lnd.request("GET", "/v1/invoice/" + "ab" * 31)
    assert status == 500 and "exactly 32 bytes" in body["message"]
    status, body = lnd.request("GET", "/v1/invoice/xyz")
    assert status == 500 and body["message"].startswith("encoding/hex")


def test_lnd_empty_node_lookup(tmp_path):
    with start_sim("lnd", tmp_path, credential=LND_MACAROON) as sim:
        status, body = sim.request("GET", "/v1/invoice/" + "ab" * 32)
        assert status == 404 and body["code"] == 5


def test_cln_listinvoices_unknown_hash(cln):
    status, body = cln.request("POST", "/v1/listinvoices", {"payment_hash": "cd" * 32})
    assert status == 201 and body == {"invoices": []}
    status, body = cln.request("POST", "/v1/listinvoices",
                               {"payment_hash": "cd" * 32, "label": "x"})
    assert status == 500 and body["code"] == -32602


def test_lnd_open_invoice_exposes_preimage_but_not_settled(lnd):
    # Real lnd returns r_preimage for its own open invoices: "settled" is only in state.
    inv = lnd.create_invoice(1000, "x", expiry=600)
    status, body = lnd.lookup_invoice(inv["payment_hash"])
    assert body["state"] == "OPEN"
    assert hashlib.sha256(base64.b64decode(body["r_preimage"])).hexdigest() == inv["payment_hash"]


def test_lnd_send_payment_sync(lnd):
    inv = lnd.create_invoice(7000, "client pays", expiry=600)
    body = {"payment_request": inv["payment_request"]}
    status, _, raw = lnd.raw_request("POST", "/v1/channels/transactions", json.dumps(body).encode())
    assert status == 500 and json.loads(raw)["message"] == "expected 1 macaroon, got 0"
    status, res = lnd.request("POST", "/v1/channels/transactions", body)
    assert status == 200
    assert res["payment_error"] == ""
    preimage = base64.b64decode(res["payment_preimage"])
    assert hashlib.sha256(preimage).hexdigest() == inv["payment_hash"]
    assert base64.b64decode(res["payment_hash"]).hex() == inv["payment_hash"]
    status, res = lnd.request("POST", "/v1/channels/transactions", body)
    assert status == 200 and res["payment_error"] == "invoice is already paid"
    # /sim/pay still reveals the preimage of a paid invoice.
    assert lnd.pay(inv["payment_request"])["payment_preimage"] == preimage.hex()


def test_pay_unknown_or_invalid_invoice(node, lnd, cln):
    other = cln if node is lnd else lnd
    foreign = other.create_invoice(1000, "elsewhere", expiry=600)
    status, body = node.try_pay(foreign["payment_request"])
    assert status == 404 and "unknown invoice" in body["error"]
    status, body = node.try_pay("lnbcrt1notaninvoice")
    assert status == 400 and "invalid" in body["error"]
    status, body = node.try_pay(None)
    assert status == 400


def test_zero_amount_invoice_payment(node):
    if node.kind == "lnd":
        status, body = node.request("POST", "/v1/invoices", {"memo": "tip"})
        pr, h = body["payment_request"], base64.b64decode(body["r_hash"]).hex()
    else:
        status, body = node.request("POST", "/v1/invoice",
                                    {"amount_msat": "any", "label": "zero-amt", "description": "tip"})
        pr, h = body["bolt11"], body["payment_hash"]
    status, err = node.try_pay(pr)
    assert status == 400 and "amount" in err["error"]
    res = node.pay(pr, amount_msat=2500)
    assert res["payment_hash"] == h and res["amount_msat"] == 2500


def test_expiry(node):
    inv = node.create_invoice(1000, "short", expiry=1)
    assert bolt11.decode(inv["payment_request"]).expiry == 1
    time.sleep(2.1)
    status, body = node.try_pay(inv["payment_request"])
    assert status == 410 and "expired" in body["error"]
    status, body = node.lookup_invoice(inv["payment_hash"])
    if node.kind == "lnd":
        assert body["state"] == "CANCELED" and body["settled"] is False
        assert body["amt_paid_msat"] == "0"
    else:
        (row,) = body["invoices"]
        assert row["status"] == "expired"
        assert "payment_preimage" not in row
    if node.kind == "lnd":
        status, body = node.request("POST", "/v1/channels/transactions",
                                    {"payment_request": inv["payment_request"]})
        assert status == 500 and "expired" in body["message"]


# ---------------------------------------------------------------------------
# stats


def test_stats_count_node_calls(node):
    node.reset_stats()
    assert node.stats()["invoice_create"] == 0
    inv = node.create_invoice(1000, "s", expiry=600)
    node.lookup_invoice(inv["payment_hash"])
    node.lookup_invoice(inv["payment_hash"])
    node.pay(inv["payment_request"])  # the test wallet is not the node API
    s = node.stats()
    assert (s["invoice_create"], s["invoice_lookup"], s["requests"], s["sim_pay"]) == (1, 2, 3, 1)
    node.reset_stats()
    s = node.stats()
    assert s["invoice_create"] == s["invoice_lookup"] == s["requests"] == 0


# ---------------------------------------------------------------------------
# fault injection


def api_call(node, timeout=10.0):
    """One harmless authenticated node call: (status, headers, raw body)."""
    if node.kind == "lnd":
        return node.raw_request("GET", "/v1/invoice/" + "11" * 32,
                                headers=node.auth_headers(), timeout=timeout)
    return node.raw_request("POST", "/v1/listinvoices", b'{"label":"none"}',
                            headers=node.auth_headers(), timeout=timeout)


def test_fault_error500(node):
    node.set_fault("error500")
    status, headers, raw = api_call(node)
    assert status == 500
    body = json.loads(raw)
    assert isinstance(body["code"], int) and "injected" in body["message"]
    assert ("details" in body) if node.kind == "lnd" else ("data" in body)
    node.set_fault("none")
    assert api_call(node)[0] in (201, 404)


def test_fault_garbage(node):
    node.set_fault("garbage")
    status, headers, raw = api_call(node)
    assert status == 200
    assert int(headers["content-length"]) == len(raw)
    with pytest.raises(ValueError):
        json.loads(raw)


def test_fault_slow(node):
    node.set_fault("slow", delay_ms=800)
    t0 = time.monotonic()
    status, _, raw = api_call(node)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.8
    assert status in (201, 404) and json.loads(raw)
    # The simulator's own endpoints are never slowed down.
    t0 = time.monotonic()
    node.stats()
    assert time.monotonic() - t0 < 0.5


def test_fault_hang_times_out_then_recovers(node):
    node.set_fault("hang")
    t0 = time.monotonic()
    with pytest.raises((socket.timeout, TimeoutError)):
        api_call(node, timeout=1.0)
    assert time.monotonic() - t0 < 5
    node.set_fault("none")
    assert api_call(node)[0] in (201, 404)


def test_fault_hang_held_until_mode_changes(node):
    node.set_fault("hang")
    result = {}

    def call():
        t0 = time.monotonic()
        try:
            result["status"] = api_call(node, timeout=20.0)[0]
        except Exception as exc:  # connection closed without a response
            result["error"] = exc
        result["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.0)
    assert t.is_alive()  # still no answer
    node.set_fault("none")
    t.join(10)
    assert not t.is_alive()
    assert "status" not in result
    assert isinstance(result["error"], (ConnectionError, http.client.HTTPException, ssl.SSLError))
    assert 0.9 <= result["elapsed"] < 10


def test_fault_reset(node):
    node.set_fault("reset")
    with pytest.raises((ConnectionError, http.client.HTTPException, ssl.SSLError)):
        api_call(node)
    node.set_fault("none")
    assert api_call(node)[0] in (201, 404)


def test_fault_reset_is_a_tcp_rst(tmp_path):
    with start_sim("lnd", tmp_path, plain=True) as sim:
        sim.set_fault("reset")
        with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as s:
            s.sendall(b"GET /v1/invoice/00 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                while s.recv(4096):
                    pass


def test_fault_huge(node):
    node.set_fault("huge")
    status, headers, raw = api_call(node)
    if node.kind == "lnd":
        # Errors stay small; successful answers get huge.
        assert status == 404 and len(raw) < 1000
        inv_status, _, raw = node.raw_request(
            "POST", "/v1/invoices", b'{"value":"1"}', node.auth_headers())
        assert inv_status == 200
    else:
        assert status == 201
    assert len(raw) >= 5 * 1024 * 1024
    assert int(headers.get("content-length", len(raw))) >= 0
    json.loads(raw)


def test_fault_modes_validated(node):
    status, body = node.sim("POST", "/sim/fault", {"mode": "explode"})
    assert status == 400
    status, body = node.sim("POST", "/sim/fault", {"mode": "slow", "delay_ms": -1})
    assert status == 400


def test_keep_alive_and_content_length(node):
    conn = node.connection()
    try:
        for _ in range(3):
            conn.request("GET", "/sim/stats")
            resp = conn.getresponse()
            data = resp.read()
            assert resp.version == 11
            assert int(resp.getheader("Content-Length")) == len(data)
            assert json.loads(data)["fault_mode"] == "none"
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# an independent decoder: npm bolt11, from the JS clients ./build.sh test installs

NODE_MODULES = Path(__file__).resolve().parents[1] / "clients" / "node_modules"


def _npm_bolt11_dir():
    if shutil.which("node") is None or not (NODE_MODULES / "bolt11" / "package.json").exists():
        pytest.fail("node or npm bolt11 is missing: run ./build.sh test (it installs tests/clients)", pytrace=False)
    return str(NODE_MODULES)


def test_npm_bolt11_decodes(node):
    inv = node.create_invoice(123456, "npm check", expiry=900)
    script = ("const b=require('bolt11');const d=b.decode(process.argv[1]);"
              "console.log(JSON.stringify({msat:d.millisatoshis,key:d.payeeNodeKey,"
              "hash:d.tagsObject.payment_hash,desc:d.tagsObject.description,"
              "exp:d.timeExpireDate-d.timestamp}))")
    out = subprocess.run(["node", "-e", script, inv["payment_request"]], check=True,
                         capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, NODE_PATH=_npm_bolt11_dir())).stdout
    d = json.loads(out)
    assert d == {"msat": "123456", "key": node_pubkey(node), "hash": inv["payment_hash"],
                 "desc": "npm check", "exp": 900}
