"""The Payment HTTP authentication scheme (draft-httpauth-payment, Lightning charge) as a client
sees it, written from the drafts for the tests: challenges read from `WWW-Authenticate` (one field
each or joined in one value, as RFC 9110 allows), credentials built from them, receipts read."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

# auth-param: token "=" ( token / quoted-string ), quoted-string with quoted-pairs.
_PARAM = re.compile(r'\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')
_SCHEME = re.compile(r'\s*,?\s*([A-Za-z0-9!#$%&\'*+.^_`|~-]+)(?:\s+|$)')


def challenges(values: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Every challenge in the given `WWW-Authenticate` field values: (scheme, params)."""
    out: list[tuple[str, dict[str, str]]] = []
    for value in values:
        pos = 0
        while pos < len(value):
            m = _SCHEME.match(value, pos)
            if not m:
                raise ValueError(f"not a challenge list at {pos}: {value!r}")
            scheme, pos, params = m.group(1), m.end(), {}
            while True:
                p = _PARAM.match(value, pos)
                if not p:
                    break
                raw = p.group(2)
                params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
                pos = p.end()
            out.append((scheme, params))
            if pos == m.end() and not params:  # a scheme with no params (or a token68): stop here
                break
    return out


def payment_challenge(r) -> dict[str, str]:
    """The one Payment challenge of a 402."""
    found = [p for s, p in challenges(r.header_values("www-authenticate")) if s.lower() == "payment"]
    assert len(found) == 1, r.header_values("www-authenticate")
    return found[0]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decoded(param: str) -> Any:
    return json.loads(unb64url(param))


def credential(challenge: dict[str, str], preimage: str, **payload: Any) -> str:
    """`Payment <base64url JSON>` echoing `challenge` and carrying the preimage."""
    body = {"challenge": challenge, "payload": {"preimage": preimage, **payload}}
    return "Payment " + b64url(json.dumps(body, separators=(",", ":")).encode())


def receipt(r) -> dict[str, Any]:
    return decoded(r.headers["payment-receipt"])


def assert_problem(r, problem: str, reason: str) -> dict[str, Any]:
    """A 402 with RFC 9457 problem details of the draft's type, and a fresh Payment challenge."""
    assert r.status == 402, (r.status, r.text)
    assert r.headers.get("content-type") == "application/problem+json", r.headers
    body = r.json()
    assert body["type"] == f"https://paymentauth.org/problems/{problem}", body
    assert body["status"] == 402 and body["reason"] == reason, body
    assert body["title"] and body["detail"], body
    payment_challenge(r)
    return body


ID_KEY_LABEL = b"l402-wasm payment challenge id v1"


def canonical(value: Any) -> bytes:
    """RFC 8785 for what the challenges hold (strings in objects): sorted members, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def challenge_id(secret_hex: str, params: dict[str, str]) -> str:
    """The README's contract: HMAC-SHA256 keyed with HMAC-SHA256(secret, label) over the seven
    `|`-joined slots of draft-httpauth-payment §5.1.2.1.1."""
    import hashlib
    import hmac
    key = hmac.new(bytes.fromhex(secret_hex), ID_KEY_LABEL, hashlib.sha256).digest()
    slots = [params.get(k, "") for k in ("realm", "method", "intent", "request", "expires", "digest", "opaque")]
    return b64url(hmac.new(key, "|".join(slots).encode(), hashlib.sha256).digest())


def mint_charge(secret_hex: str, service: str, amount_sat: int, preimage: bytes, token_id: str, *,
                expires_in_s: int = 600, invoice: str = "lnbcrt1test", realm: str | None = None) -> dict[str, str]:
    """A charge challenge as a gateway holding `secret_hex` issues it, for an invoice paid with
    `preimage` (the tests' own: no node involved)."""
    import hashlib
    import time as _time
    request = {"amount": str(amount_sat), "currency": "sat",
               "methodDetails": {"invoice": invoice, "paymentHash": hashlib.sha256(preimage).hexdigest()}}
    params = {
        "realm": realm or service, "method": "lightning", "intent": "charge",
        "request": b64url(canonical(request)),
        "expires": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(_time.time() + expires_in_s)),
        "opaque": b64url(canonical({"service": service, "token_id": token_id})),
    }
    return {"id": challenge_id(secret_hex, params), **params}
