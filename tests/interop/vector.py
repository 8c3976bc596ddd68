"""The known-answer vector tests/interop/vectors/aperture_v0.json, produced by pymacaroons.

    .venv/bin/python -m tests.interop.vector          # rewrites the file (run from the repo root)

test_known_answer.py regenerates it and compares with the committed file, and tests/known_answer.rs
checks that the project's own mint produces exactly these bytes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pymacaroons

from .peers import aperture_caveats, identifier, py_mint, py_raw, root_key, std_b64

PATH = Path(__file__).resolve().parent / "vectors" / "aperture_v0.json"

SECRET = bytes(range(0x00, 0x20))
PREIMAGE = bytes(range(0x20, 0x40))
TOKEN_ID = bytes(range(0x40, 0x60))
SERVICE = "weather"
CAPABILITIES = ("read",)
VALID_UNTIL = 1_700_000_000


def build() -> dict:
    payment_hash = hashlib.sha256(PREIMAGE).digest()
    ident = identifier(payment_hash, TOKEN_ID)
    caveats = aperture_caveats(SERVICE, CAPABILITIES, (), VALID_UNTIL)
    m = py_mint(SECRET, ident, caveats)
    raw = py_raw(m)
    return {
        "description": "An Aperture-format L402 token (identifier version 0) under the derivation "
                       "root_key = HMAC-SHA256(key=secret, msg=identifier); V2 binary macaroon.",
        "produced_by": "pymacaroons %s (Macaroon(version=MACAROON_V2), add_first_party_caveat, "
                       "BinarySerializer.serialize_raw)" % pymacaroons.__version__,
        "secret_hex": SECRET.hex(),
        "preimage_hex": PREIMAGE.hex(),
        "payment_hash_hex": payment_hash.hex(),
        "token_id_hex": TOKEN_ID.hex(),
        "service": SERVICE,
        "capabilities": list(CAPABILITIES),
        "valid_until": VALID_UNTIL,
        "location": m.location,
        "identifier_hex": m.identifier_bytes.hex(),
        "root_key_hex": root_key(SECRET, ident).hex(),
        "caveats": [c.caveat_id.decode() for c in m.caveats],
        "signature_hex": m.signature,
        "macaroon_v2_hex": raw.hex(),
        "macaroon_base64": std_b64(raw),
        "macaroon_base64url": m.serialize(),
        "authorization": "L402 %s:%s" % (std_b64(raw), PREIMAGE.hex()),
    }


def render(vector: dict) -> str:
    return json.dumps(vector, indent=2) + "\n"


if __name__ == "__main__":
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(render(build()))
    sys.stdout.write("wrote %s\n" % PATH)
