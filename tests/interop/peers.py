"""Helpers for the interop tests: the project's `l402` CLI, pymacaroons as a peer, and the Node peers
(tests/interop/js/peer.mjs, libraries installed in tests/clients).

Nothing here reuses the project's code: the key derivation and the Aperture caveat rules are written
again from the published contract, so a disagreement shows up as a failing test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pymacaroons import MACAROON_V2, Macaroon, Verifier
from pymacaroons.serializers.binary_serializer import BinarySerializer

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
PEER_JS = Path(__file__).resolve().parent / "js" / "peer.mjs"

LOCATION = "lsat"


# -- the published contract, re-implemented -----------------------------------------------------

def root_key(secret: bytes, identifier: bytes) -> bytes:
    """root_key = HMAC-SHA256(key = operator secret, msg = the 66-byte identifier)."""
    return hmac.new(secret, identifier, hashlib.sha256).digest()


def identifier(payment_hash: bytes, token_id: bytes, version: int = 0) -> bytes:
    """u16 BE version || payment_hash (32) || token_id (32)."""
    assert len(payment_hash) == 32 and len(token_id) == 32
    return version.to_bytes(2, "big") + payment_hash + token_id


def parse_identifier(ident: bytes) -> dict:
    assert len(ident) == 66, len(ident)
    return {"version": int.from_bytes(ident[:2], "big"), "payment_hash": ident[2:34].hex(),
            "token_id": ident[34:].hex()}


def aperture_caveats(service: str, capabilities=(), constraints=(), valid_until: int | None = None):
    """Caveats in the order Aperture mints them."""
    out = ["services=%s:0" % service]
    if capabilities:
        out.append("%s_capabilities=%s" % (service, ",".join(capabilities)))
    out += ["%s=%s" % kv for kv in constraints]
    if valid_until is not None:
        out.append("%s_valid_until=%d" % (service, valid_until))
    return out


def aperture_satisfier(service: str, capabilities=(), now: int = 0, constraints: dict | None = None,
                       seen: list | None = None):
    """A general caveat checker for pymacaroons' Verifier.satisfy_general (True = satisfied)."""
    constraints = constraints or {}

    def check(predicate: str) -> bool:
        if seen is not None:
            seen.append(predicate)
        key, sep, value = predicate.partition("=")
        if not sep:
            return False
        if key == "services":
            return service in [entry.split(":")[0] for entry in value.split(",")]
        if key == service + "_capabilities":
            return all(c in value.split(",") for c in capabilities)
        if key == service + "_valid_until":
            return value.isdigit() and now <= int(value)
        if key in constraints:
            return constraints[key] == value
        return False

    return check


# -- pymacaroons ---------------------------------------------------------------------------------

def py_mint(secret: bytes, ident: bytes, caveats) -> Macaroon:
    m = Macaroon(location=LOCATION, identifier=ident, key=root_key(secret, ident), version=MACAROON_V2)
    for c in caveats:
        m.add_first_party_caveat(c)
    return m


def py_raw(m: Macaroon) -> bytes:
    """V2 binary bytes."""
    return BinarySerializer().serialize_raw(m)


def py_from_raw(raw: bytes) -> Macaroon:
    return BinarySerializer().deserialize_raw(raw)


def std_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def py_verify(m: Macaroon, secret: bytes, **need) -> bool:
    """pymacaroons' own verification with the root key derived here. Raises when invalid."""
    v = Verifier()
    v.satisfy_general(aperture_satisfier(**need))
    return v.verify(m, root_key(secret, m.identifier_bytes))


def new_payment() -> tuple[bytes, bytes]:
    """(preimage, payment_hash)."""
    preimage = secrets.token_bytes(32)
    return preimage, hashlib.sha256(preimage).digest()


# -- the project's CLI ---------------------------------------------------------------------------

@dataclass
class Outcome:
    rc: int
    out: dict
    stderr: str


class L402Cli:
    """`target/debug/l402` called by path."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def run(self, args, secret: bytes | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "L402_SECRETS"}
        if secret is not None:
            env["L402_SECRETS"] = secret.hex()
        return subprocess.run([str(self.path), *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=30)

    def mint(self, secret: bytes, service: str, capabilities=(), constraints=(), lifetime_s=None,
             valid_until=None, payment_hash: bytes | None = None, token_id: bytes | None = None) -> dict:
        args = ["token", "mint", "--service", service, "--json"]
        for c in capabilities:
            args += ["--capability", c]
        for k, v in constraints:
            args += ["--constraint", "%s=%s" % (k, v)]
        if lifetime_s is not None:
            args += ["--lifetime-s", str(lifetime_s)]
        if valid_until is not None:
            args += ["--valid-until", str(valid_until)]
        if payment_hash is not None:
            args += ["--payment-hash", payment_hash.hex()]
        if token_id is not None:
            args += ["--token-id", token_id.hex()]
        p = self.run(args, secret)
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        return json.loads(p.stdout)

    def verify(self, credential: str, secret: bytes, service: str, capabilities=(), now=None) -> Outcome:
        args = ["token", "verify", "--service", service, "--json"]
        for c in capabilities:
            args += ["--capability", c]
        if now is not None:
            args += ["--now", str(now)]
        p = self.run(args, secret, stdin=credential + "\n")
        assert p.returncode in (0, 1), (p.returncode, p.stdout, p.stderr)
        out = json.loads(p.stdout)
        assert out["valid"] == (p.returncode == 0), (p.returncode, out)
        return Outcome(p.returncode, out, p.stderr)

    def inspect(self, token: str) -> dict:
        p = self.run(["token", "inspect", token, "--json"])
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        return json.loads(p.stdout)


# -- Node peers ----------------------------------------------------------------------------------

class NodePeer:
    """Runs tests/interop/js/peer.mjs commands (one process per call)."""

    def __init__(self, node: str = "node"):
        self.node = node

    def __call__(self, command: str, **request):
        p = subprocess.run([self.node, str(PEER_JS), command], input=json.dumps(request),
                           capture_output=True, text=True, cwd=str(CLIENTS), timeout=60)
        assert p.returncode == 0, "node peer %s failed (%s): %s" % (command, p.returncode, p.stderr)
        return json.loads(p.stdout)
