"""Ours → theirs: tokens minted by `l402 token mint` are read and verified by pymacaroons and by the
npm `macaroon` package, each deriving the root key itself as HMAC-SHA256(secret, identifier)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

import pytest
from pymacaroons import MACAROON_V2, Macaroon
from pymacaroons.exceptions import MacaroonInvalidSignatureException

from .peers import (LOCATION, aperture_caveats, parse_identifier, py_from_raw, py_raw, py_verify,
                    root_key)

SERVICE = "weather"
CAPS = ("read", "write")
CONSTRAINTS = (("tier", "gold"), ("region", "eu-west"))
NEED = dict(service=SERVICE, capabilities=("read",), constraints=dict(CONSTRAINTS))


@pytest.fixture(scope="module")
def secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture(scope="module")
def minted(l402, secret) -> dict:
    """A paid-for credential (random preimage) with capabilities, constraints and a lifetime."""
    before = int(time.time())
    out = l402.mint(secret, SERVICE, capabilities=CAPS, constraints=CONSTRAINTS, lifetime_s=3600)
    out["minted_at"] = before
    return out


def raw_of(minted) -> bytes:
    text = minted["macaroon"]
    assert text.endswith("=") or len(text) % 4 == 0, "std padded base64 expected"
    assert "-" not in text and "_" not in text
    return base64.b64decode(text, validate=True)


def test_identifier_bytes_parse_as_documented(minted):
    raw = raw_of(minted)
    m = py_from_raw(raw)
    ident = m.identifier_bytes
    assert ident.hex() == minted["identifier_hex"]
    parsed = parse_identifier(ident)
    assert parsed == {"version": 0, "payment_hash": minted["identifier"]["payment_hash"],
                      "token_id": minted["identifier"]["token_id"]}
    # the payment hash is the sha256 of the preimage handed out with the credential
    assert hashlib.sha256(bytes.fromhex(minted["preimage"])).hexdigest() == parsed["payment_hash"]
    assert minted["authorization"] == "L402 %s:%s" % (minted["macaroon"], minted["preimage"])


def test_pymacaroons_reads_caveats_in_aperture_order(minted):
    m = py_from_raw(raw_of(minted))
    assert m.version == MACAROON_V2
    assert m.location == LOCATION
    until = int(minted["caveats"][-1].rsplit("=", 1)[1])
    assert minted["minted_at"] + 3600 <= until <= int(time.time()) + 3600
    assert [c.caveat_id.decode() for c in m.caveats] == aperture_caveats(SERVICE, CAPS, CONSTRAINTS, until)
    assert all(c.first_party() and c.location is None for c in m.caveats)
    assert m.signature == minted["signature"]
    # pymacaroons re-serializes to exactly our bytes, and its base64 deserializer reads our std base64
    assert py_raw(m) == raw_of(minted)
    assert py_raw(Macaroon.deserialize(minted["macaroon"])) == raw_of(minted)


def test_pymacaroons_verifies_with_derived_root_key(minted, secret):
    m = py_from_raw(raw_of(minted))
    seen = []
    assert py_verify(m, secret, now=int(time.time()), seen=seen, **NEED) is True
    assert seen == [c.caveat_id.decode() for c in m.caveats], "every caveat went through the checker"


def test_pymacaroons_rejects_wrong_secret(minted, secret):
    m = py_from_raw(raw_of(minted))
    wrong = bytes([secret[0] ^ 1]) + secret[1:]
    with pytest.raises(MacaroonInvalidSignatureException):
        py_verify(m, wrong, now=int(time.time()), **NEED)
    # the key derivation is over the identifier: the secret itself as root key is not accepted either
    with pytest.raises(MacaroonInvalidSignatureException):
        from pymacaroons import Verifier
        v = Verifier()
        v.satisfy_general(lambda _: True)
        v.verify(m, secret)


def test_pymacaroons_checker_is_not_a_tautology(minted, secret):
    """The same satisfier refuses an expired token and a missing capability."""
    m = py_from_raw(raw_of(minted))
    with pytest.raises(MacaroonInvalidSignatureException):
        py_verify(m, secret, now=int(time.time()) + 7200, **NEED)
    need = dict(NEED, capabilities=("admin",))
    with pytest.raises(MacaroonInvalidSignatureException):
        py_verify(m, secret, now=int(time.time()), **need)


def test_npm_macaroon_verifies_with_derived_root_key(js, minted, secret):
    now = int(time.time())
    res = js("macaroon.verify", macaroon=minted["macaroon"], secret_hex=secret.hex(), service=SERVICE,
             capabilities=["read", "write"], now=now, constraints=dict(CONSTRAINTS))
    assert res["ok"] is True, res
    ident = bytes.fromhex(res["identifier_hex"])
    assert res["root_key_hex"] == root_key(secret, ident).hex()
    assert res["location"] == LOCATION
    assert res["identifier_hex"] == minted["identifier_hex"]
    assert res["caveats"] == minted["caveats"] == res["checked"]
    assert res["signature_hex"] == minted["signature"]


def test_npm_macaroon_rejects_wrong_secret_and_failed_caveats(js, minted, secret):
    now = int(time.time())
    base = dict(macaroon=minted["macaroon"], service=SERVICE, capabilities=["read"], now=now,
                constraints=dict(CONSTRAINTS))
    wrong = js("macaroon.verify", secret_hex=secrets.token_hex(32), **base)
    assert wrong["ok"] is False and "signature mismatch" in wrong["error"], wrong
    expired = js("macaroon.verify", secret_hex=secret.hex(), **dict(base, now=now + 7200))
    assert expired["ok"] is False and "expired" in expired["error"], expired
    other = js("macaroon.verify", secret_hex=secret.hex(), **dict(base, service="maps"))
    assert other["ok"] is False and "caveat check failed" in other["error"], other


def test_npm_macaroon_reads_url_safe_form_of_our_token(js, minted, secret):
    url = minted["macaroon"].replace("+", "-").replace("/", "_").rstrip("=")
    res = js("macaroon.inspect", macaroon=url)
    assert res["identifier_hex"] == minted["identifier_hex"]
    assert res["caveats"] == minted["caveats"]
    assert res["signature_hex"] == minted["signature"]


def test_mint_with_given_payment_hash_and_token_id(l402, js, secret):
    """--payment-hash/--token-id land verbatim in the identifier; no preimage is invented."""
    payment_hash, token_id = secrets.token_bytes(32), secrets.token_bytes(32)
    out = l402.mint(secret, SERVICE, capabilities=("read",), valid_until=4_000_000_000,
                    payment_hash=payment_hash, token_id=token_id)
    assert "preimage" not in out and "authorization" not in out
    m = py_from_raw(base64.b64decode(out["macaroon"]))
    assert m.identifier_bytes == b"\x00\x00" + payment_hash + token_id
    assert [c.caveat_id.decode() for c in m.caveats] == aperture_caveats(SERVICE, ("read",), (), 4_000_000_000)
    assert py_verify(m, secret, service=SERVICE, capabilities=("read",), now=int(time.time()))
    res = js("macaroon.verify", macaroon=out["macaroon"], secret_hex=secret.hex(), service=SERVICE,
             capabilities=["read"], now=int(time.time()))
    assert res["ok"] is True, res


def test_inspect_agrees_with_pymacaroons(l402, minted):
    info = l402.inspect(minted["macaroon"])
    m = py_from_raw(raw_of(minted))
    assert info["location"] == m.location
    assert info["identifier_hex"] == m.identifier_bytes.hex()
    assert info["identifier"] == dict(parse_identifier(m.identifier_bytes))
    assert info["caveats"] == [c.caveat_id.decode() for c in m.caveats]
    assert info["signature"] == m.signature
