"""The known-answer vector (vectors/aperture_v0.json): produced by pymacaroons, cross-checked with
npm macaroon and a from-scratch HMAC chain, reproduced byte for byte by `l402 token mint` and
accepted by `l402 token verify`. tests/known_answer.rs checks the same file against the library."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from . import vector
from .peers import identifier, parse_identifier, py_from_raw, py_verify


@pytest.fixture(scope="module")
def v() -> dict:
    return json.loads(vector.PATH.read_text())


def test_committed_vector_is_what_pymacaroons_produces(v):
    assert v["produced_by"].startswith("pymacaroons 0.13.0 ")
    assert vector.PATH.read_text() == vector.render(vector.build()), \
        "regenerate with: .venv/bin/python -m tests.interop.vector"


def test_vector_follows_the_documented_layout(v):
    """Rebuilt here from PROTOCOL-level definitions with nothing but hashlib/hmac."""
    secret, preimage = bytes.fromhex(v["secret_hex"]), bytes.fromhex(v["preimage_hex"])
    payment_hash = hashlib.sha256(preimage).digest()
    assert payment_hash.hex() == v["payment_hash_hex"]
    ident = b"\x00\x00" + payment_hash + bytes.fromhex(v["token_id_hex"])
    assert ident == identifier(payment_hash, bytes.fromhex(v["token_id_hex"]))
    assert ident.hex() == v["identifier_hex"]
    assert parse_identifier(ident)["version"] == 0

    rk = hmac.new(secret, ident, hashlib.sha256).digest()
    assert rk.hex() == v["root_key_hex"]
    sig = hmac.new(hmac.new(b"macaroons-key-generator", rk, hashlib.sha256).digest(), ident,
                   hashlib.sha256).digest()
    for c in v["caveats"]:
        sig = hmac.new(sig, c.encode(), hashlib.sha256).digest()
    assert sig.hex() == v["signature_hex"]
    assert v["caveats"] == ["services=weather:0", "weather_capabilities=read",
                            "weather_valid_until=1700000000"]

    def field(tag, data):
        assert len(data) < 128  # one-byte varint
        return bytes([tag, len(data)]) + data

    raw = b"\x02" + field(1, b"lsat") + field(2, ident) + b"\x00"
    for c in v["caveats"]:
        raw += field(2, c.encode()) + b"\x00"
    raw += b"\x00" + field(6, sig)
    assert raw.hex() == v["macaroon_v2_hex"]
    assert base64.b64decode(v["macaroon_base64"], validate=True) == raw
    assert base64.urlsafe_b64decode(v["macaroon_base64url"] + "==") == raw
    assert v["authorization"] == "L402 %s:%s" % (v["macaroon_base64"], v["preimage_hex"])


def test_pymacaroons_verifies_the_vector(v):
    m = py_from_raw(bytes.fromhex(v["macaroon_v2_hex"]))
    secret = bytes.fromhex(v["secret_hex"])
    assert py_verify(m, secret, service="weather", capabilities=("read",), now=v["valid_until"])


def test_npm_macaroon_agrees(js, v):
    # npm macaroon 3.0.4 cannot serialize 3 caveats sanely (see test_npm_macaroon_export_limit), so it
    # computes the signature chain, then imports and verifies the committed bytes in both encodings.
    signed = js("macaroon.mint", secret_hex=v["secret_hex"], identifier_hex=v["identifier_hex"],
                location="lsat", caveats=v["caveats"], serialize=False)
    assert signed == {"root_key_hex": v["root_key_hex"], "signature_hex": v["signature_hex"]}
    for text in (v["macaroon_base64"], v["macaroon_base64url"]):
        res = js("macaroon.verify", macaroon=text, secret_hex=v["secret_hex"], service="weather",
                 capabilities=["read"], now=v["valid_until"])
        assert res["ok"] is True, res
        assert (res["identifier_hex"], res["caveats"], res["signature_hex"], res["location"]) == \
            (v["identifier_hex"], v["caveats"], v["signature_hex"], "lsat")
    late = js("macaroon.verify", macaroon=v["macaroon_base64"], secret_hex=v["secret_hex"],
              service="weather", capabilities=["read"], now=v["valid_until"] + 1)
    assert late["ok"] is False and "expired" in late["error"]


def test_cli_mint_reproduces_the_vector(l402, v):
    out = l402.mint(bytes.fromhex(v["secret_hex"]), v["service"], capabilities=v["capabilities"],
                    valid_until=v["valid_until"], payment_hash=bytes.fromhex(v["payment_hash_hex"]),
                    token_id=bytes.fromhex(v["token_id_hex"]))
    assert out["macaroon"] == v["macaroon_base64"]
    assert base64.b64decode(out["macaroon"]).hex() == v["macaroon_v2_hex"]
    assert out["signature"] == v["signature_hex"]
    assert out["identifier_hex"] == v["identifier_hex"]
    assert out["caveats"] == v["caveats"]


def test_cli_verifies_the_vector(l402, v):
    secret = bytes.fromhex(v["secret_hex"])
    now = v["valid_until"]
    for cred in (v["authorization"], "L402 %s:%s" % (v["macaroon_base64url"], v["preimage_hex"])):
        out = l402.verify(cred, secret, "weather", capabilities=("read",), now=now)
        assert out.rc == 0, out
        assert (out.out["payment_hash"], out.out["token_id"]) == (v["payment_hash_hex"], v["token_id_hex"])
    out = l402.verify(v["authorization"], secret, "weather", now=now + 1)
    assert (out.rc, out.out["reason"]) == (1, "expired"), out
    out = l402.verify("L402 %s:%s" % (v["macaroon_base64"], v["payment_hash_hex"]), secret, "weather", now=now)
    assert (out.rc, out.out["reason"]) == (1, "preimage_mismatch"), out
