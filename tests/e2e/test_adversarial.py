"""Hardening: no forged or unpaid request ever reaches the upstream.

A real Envoy with l402.wasm in front of the LND simulator (TLS) and a recording upstream. Each attack
is one parametrized case: its answer must be a refusal (402 with a reason, 403, another 4xx, 503;
never a 2xx) and the upstream's own log (the ground truth) must be empty afterwards. Positive
controls (valid tokens, allowed spelling variants) must pass and reach the upstream exactly once, with
the gateway's metering headers and without the credential, so this suite can fail.

Routes of the gateway (attacks.ROUTES): /health free, /v1/ weather, /admin/ admin (capability
`admin`), /files/ files restricted to GET under /files/public/; anything else 403. With the Payment
scheme (PAYMENT_ROUTES): /pay/ quotes (Payment only), /dual/ dual (L402 and Payment), /once/ once (both,
`uses: 1`). Payment cases also check the problem details (type and reason) and that the answer carries a
fresh challenge whose id verifies under the gateway's secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Iterator

import pytest

from attacks import (
    CAPABILITIES, GATEWAY_HEADERS, PAID_PREFIXES, ROUTES, Gateway, RecordingUpstream, b64, credential, extend,
    field, flip, identifier, mac_of, py_mint, raw_of, raw_request, split, token_id, v2_fields,
)
from payment_support import b64url, canonical, challenge_id, challenges, credential as charge, decoded, mint_charge
from test_filter_support import challenge_parts, credential_valid, new_secret

REFUSED = (402,)
PAYMENT_ROUTES: list[dict[str, Any]] = [
    {"match": {"path_prefix": "/pay/"}, "service": "quotes", "price_sat": 5, "schemes": ["payment"]},
    {"match": {"path_prefix": "/dual/"}, "service": "dual", "price_sat": 10, "lifetime_s": 3600,
     "schemes": ["l402", "payment"]},
    {"match": {"path_prefix": "/once/"}, "service": "once", "price_sat": 3, "uses": 1, "lifetime_s": 3600,
     "schemes": ["l402", "payment"]},
]


@dataclass
class Ctx:
    gw: Gateway
    up: RecordingUpstream
    weather: str          # paid through the gateway (/v1/)
    weather2: str         # a second paid weather token
    admin: str            # paid through /admin/ (capability admin)
    files: str            # paid through /files/public/ (restricted to GET /files/public/)
    credentials: list[str] = dc_field(default_factory=list)  # every credential that is valid somewhere
    baseline: dict[str, Any] = dc_field(default_factory=dict)

    @property
    def secret(self) -> str:
        return self.gw.secret


@pytest.fixture(scope="module")
def ctx(wasm) -> Iterator[Ctx]:
    up = RecordingUpstream().start()
    gw = Gateway(up.port, routes=[*ROUTES, *PAYMENT_ROUTES])
    try:
        c = Ctx(gw, up, gw.buy("/v1/forecast"), gw.buy("/v1/forecast"), gw.buy("/admin/panel"),
                gw.buy("/files/public/a.txt"))
        c.credentials = [c.weather, c.weather2, c.admin, c.files]
        c.baseline = gw.wasm_stats()
        yield c
    finally:
        gw.stop()
        up.stop()


@pytest.fixture
def fresh(ctx: Ctx) -> Ctx:
    ctx.up.clear()
    return ctx


# -- how a case is sent ---------------------------------------------------------------------------

@dataclass
class Req:
    path: str
    headers: list[tuple[Any, Any]]
    method: str = "GET"


def auth(cred: str | bytes, path: str = "/v1/forecast", method: str = "GET") -> Req:
    return Req(path, [("Authorization", cred)], method)


def send(ctx: Ctx, req: Req) -> tuple[int, dict[str, str], bytes]:
    status, hdrs, body = raw_request(ctx.gw.listen_port, req.method, req.path, req.headers)
    return status, dict(hdrs), body


def reason_of(body: bytes) -> str | None:
    import json
    try:
        return json.loads(body).get("reason")
    except ValueError:
        return None


def assert_refused(ctx: Ctx, req: Req, reasons: tuple[str, ...] | None = None,
                   statuses: tuple[int, ...] = REFUSED) -> tuple[int, str | None]:
    status, hdrs, body = send(ctx, req)
    reason = reason_of(body)
    assert not 200 <= status < 300, (status, body[:300])
    assert status in statuses, (status, body[:300])
    if status == 402 and reasons is not None:
        assert reason in reasons, (reason, body[:300])
    log = ctx.up.requests()
    assert log == [], f"an attack reached the upstream ({status} {reason}): {log}"
    return status, reason


def assert_passes(ctx: Ctx, req: Req, cred: str, service: str) -> dict[str, Any]:
    status, _, body = send(ctx, req)
    assert status == 200, (status, body[:300])
    (entry,) = ctx.up.requests()
    assert entry["path"] == req.path and entry["method"] == req.method
    names = [k for k, _ in entry["header_list"]]
    assert "authorization" not in names
    for h in GATEWAY_HEADERS:
        assert names.count(h) == 1, (h, entry["header_list"])
    assert entry["headers"]["x-l402-token-id"] == token_id(cred)
    assert entry["headers"]["x-l402-service"] == service
    return entry


# -- the cases ------------------------------------------------------------------------------------

def _parts(cred: str) -> tuple[str, str, str]:
    scheme, _, rest = cred.partition(" ")
    mac, _, pre = rest.rpartition(":")
    return scheme, mac, pre


def _swap_case_at(text: str, nth_letter: int) -> str:
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    i = letters[nth_letter % len(letters)]
    return text[:i] + text[i].swapcase() + text[i + 1:]


def _with_sig(raw: bytes, sig: bytes) -> bytes:
    a, b = field(raw, "signature")
    return raw[:a] + sig + raw[b:]


def _replace_field(raw: bytes, name: str, value: bytes) -> bytes:
    """Replace a field's value, keeping its tag and fixing the one-byte length."""
    for n, a, b in v2_fields(raw):
        if n == name:
            assert len(value) < 128 and raw[a - 1] == b - a
            return raw[:a - 1] + bytes([len(value)]) + value + raw[b:]
    raise KeyError(name)


def _swapped_identifier(c: Ctx) -> Req:
    _, ra, pa = split(c.weather)
    _, rb, _ = split(c.weather2)
    forged = _with_sig(ra, rb[field(rb, "signature")[0]:field(rb, "signature")[1]])
    return auth(credential(forged, pa))


def _swapped_identifier_b(c: Ctx) -> Req:
    """Identifier (and so payment hash) of A, everything else of B, with A's preimage."""
    _, ra, pa = split(c.weather)
    _, rb, _ = split(c.weather2)
    ident_a = ra[slice(*field(ra, "identifier"))]
    forged = _replace_field(rb, "identifier", ident_a)
    return auth(credential(forged, pa))


def _other_secret(c: Ctx) -> Req:
    m, pre = py_mint(new_secret(), ["services=weather:0", f"weather_valid_until={int(time.time()) + 3600}"])
    return auth(credential(m, pre))


def _other_preimage(c: Ctx) -> Req:
    """Token B (its invoice unpaid) with the preimage of paid invoice A."""
    mac, _ = c.gw.challenge("/v1/forecast")
    return auth(f"L402 {mac}:{_parts(c.weather)[2]}")


def _unpaid_zero(c: Ctx) -> Req:
    mac, _ = c.gw.challenge("/v1/forecast")
    return auth(f"L402 {mac}:{'00' * 32}")


def _hash_as_preimage(c: Ctx) -> Req:
    _, raw, _ = split(c.weather)
    ph = mac_of(raw).identifier_bytes[2:34]
    return auth(f"L402 {_parts(c.weather)[1]}:{ph.hex()}")


def _expired_token(c: Ctx) -> Req:
    m, pre = py_mint(c.secret, ["services=weather:0", f"weather_valid_until={int(time.time()) - 5}"])
    return auth(credential(m, pre))


def _expired_invoice(c: Ctx) -> Req:
    """A token minted for an invoice that expired unpaid: the invoice cannot be paid any more, so
    no preimage exists for the client; guessing fails."""
    inv = c.gw.sim.create_invoice(10_000, "weather API access", expiry=1)
    ph = bytes.fromhex(inv["payment_hash"])
    m, _ = py_mint(c.secret, ["services=weather:0", f"weather_valid_until={int(time.time()) + 3600}"],
                   ident=identifier(ph))
    time.sleep(1.5)
    status, res = c.gw.sim.try_pay(inv["payment_request"])
    assert status != 200, ("an expired invoice was paid", res)
    return auth(credential(m, secrets.token_bytes(32)))


def _unknown_version(c: Ctx) -> Req:
    m, pre = py_mint(c.secret, ["services=weather:0"], version=1)
    return auth(credential(m, pre))


def _other_location(c: Ctx) -> Req:
    m, pre = py_mint(c.secret, ["services=weather:0"], location="lsaT")
    return auth(credential(m, pre))


def _third_party(c: Ctx) -> Req:
    m, pre = py_mint(c.secret, ["services=weather:0"])
    m.add_third_party_caveat("https://auth.example", secrets.token_bytes(32), "discharge-me")
    return auth(credential(m, pre))


def _third_party_on_real(c: Ctx) -> Req:
    _, raw, pre = split(c.weather)
    m = mac_of(raw)
    m.add_third_party_caveat("https://auth.example", secrets.token_bytes(32), "discharge-me")
    return auth(credential(m, pre))


def _discharge_list(c: Ctx) -> Req:
    _, m1, pre = _parts(c.weather)
    _, m2, _ = _parts(c.weather2)
    return auth(f"L402 {m1},{m2}:{pre}")


def _discharge_real(c: Ctx) -> Req:
    """A real third-party caveat plus its (properly bound) discharge macaroon."""
    from pymacaroons import MACAROON_V2, Macaroon
    _, raw, pre = split(c.weather)
    m = mac_of(raw)
    ckey = secrets.token_bytes(32)
    m.add_third_party_caveat("https://auth.example", ckey, "cid-1")
    d = Macaroon(location="https://auth.example", identifier="cid-1", key=ckey, version=MACAROON_V2)
    bound = m.prepare_for_request(d)
    return auth(f"L402 {b64(raw_of(m))},{b64(raw_of(bound))}:{pre.hex()}")


def _no_services(c: Ctx) -> Req:
    m, pre = py_mint(c.secret, [f"weather_valid_until={int(time.time()) + 3600}"])
    return auth(credential(m, pre))


def _caveatless(c: Ctx) -> Req:
    m, pre = py_mint(c.secret, [])
    return auth(credential(m, pre))


def _grpc(c: Ctx, cred: str, pre_caveats: list[str], header: str = "Grpc-Metadata-macaroon",
          path: str = "/v1/forecast") -> Req:
    _, raw, _ = split(cred)
    m = mac_of(raw)
    for pc in pre_caveats:
        m.add_first_party_caveat(pc)
    return Req(path, [(header, raw_of(m).hex())])


def _grpc_valid(c: Ctx) -> Req:
    return _grpc(c, c.weather, [f"preimage={split(c.weather)[2].hex()}"])


def _big_caveat_count(c: Ctx) -> Req:
    return auth(extend(c.weather, *["services=weather:0"] * 33))


def _big_token(c: Ctx) -> Req:
    return auth(extend(c.weather, "note=" + "x" * 4200))


def _reordered_caveats(c: Ctx) -> Req:
    _, raw, pre = split(c.weather)
    m = mac_of(raw)
    m.caveats = list(reversed(m.caveats))
    return auth(credential(m, pre))


def _dropped_caveat(c: Ctx) -> Req:
    """The valid_until caveat removed, the signature kept."""
    _, raw, pre = split(c.weather)
    m = mac_of(raw)
    m.caveats = [cv for cv in m.caveats if b"valid_until" not in cv.caveat_id_bytes]
    return auth(credential(m, pre))


NOW = int(time.time())

# (id, builder, expected 402 reasons or None for "any refusal", statuses allowed)
CASES: list[tuple[str, Callable[[Ctx], Req], tuple[str, ...] | None, tuple[int, ...]]] = [
    # forged tokens
    ("swapped-signature", _swapped_identifier, ("bad_signature",), REFUSED),
    ("swapped-identifier", _swapped_identifier_b, ("bad_signature",), REFUSED),
    ("other-secret", _other_secret, ("bad_signature",), REFUSED),
    ("reordered-caveats", _reordered_caveats, ("bad_signature",), REFUSED),
    ("dropped-caveat", _dropped_caveat, ("bad_signature",), REFUSED),
    ("signature-zero", lambda c: auth(credential(_with_sig(split(c.weather)[1], bytes(32)), split(c.weather)[2])),
     ("bad_signature",), REFUSED),
    ("unknown-version", _unknown_version, ("unknown_version",), REFUSED),
    ("other-location", _other_location, ("malformed",), REFUSED),
    ("no-services-caveat", _no_services, ("wrong_service", "malformed"), REFUSED),
    ("no-caveats", _caveatless, ("wrong_service", "malformed"), REFUSED),
    # preimages
    ("preimage-of-another-paid-invoice", _other_preimage, ("preimage_mismatch",), REFUSED),
    ("unpaid-zero-preimage", _unpaid_zero, ("preimage_mismatch",), REFUSED),
    ("payment-hash-as-preimage", _hash_as_preimage, ("preimage_mismatch",), REFUSED),
    ("paid-token-wrong-preimage", lambda c: auth(f"L402 {_parts(c.weather)[1]}:{_parts(c.weather2)[2]}"),
     ("preimage_mismatch",), REFUSED),
    ("preimage-63-hex", lambda c: auth(c.weather[:-1]), ("malformed",), REFUSED),
    ("preimage-65-hex", lambda c: auth(c.weather + "0"), ("malformed",), REFUSED),
    ("preimage-0x-prefix", lambda c: auth(c.weather.rsplit(":", 1)[0] + ":0x" + _parts(c.weather)[2][2:]),
     ("malformed",), REFUSED),
    ("preimage-non-hex", lambda c: auth(c.weather[:-1] + "g"), ("malformed",), REFUSED),
    ("preimage-base64", lambda c: auth(c.weather.rsplit(":", 1)[0] + ":" + b64(split(c.weather)[2])),
     ("malformed",), REFUSED),
    ("lsat-scheme-wrong-preimage", lambda c: auth("LSAT " + c.weather.split(" ", 1)[1][:-64] + "11" * 32),
     ("preimage_mismatch",), REFUSED),
    # expiry
    ("expired-token", _expired_token, ("expired",), REFUSED),
    ("expired-invoice-token", _expired_invoice, ("preimage_mismatch",), REFUSED),
    # third-party caveats and discharges
    ("third-party-caveat-minted", _third_party, ("malformed",), REFUSED),
    ("third-party-caveat-appended", _third_party_on_real, ("malformed",), REFUSED),
    ("discharge-list-two-tokens", _discharge_list, ("malformed",), REFUSED),
    ("discharge-bound", _discharge_real, ("malformed",), REFUSED),
    # base64 / hex case games that change meaning
    *[(f"base64-case-swap-{n}", (lambda n: lambda c: auth(
        "L402 " + _swap_case_at(_parts(c.weather)[1], n) + ":" + _parts(c.weather)[2]))(n), None, REFUSED)
      for n in (0, 7, 40, 97, 150)],
    ("base64-whole-lowercase", lambda c: auth("L402 " + _parts(c.weather)[1].lower() + ":" + _parts(c.weather)[2]),
     ("malformed",), REFUSED),
    ("base64-mixed-alphabets", lambda c: auth("L402 " + _parts(c.weather)[1].replace("+", "-", 1).replace("/", "_")
                                              .replace("=", "") + "+/" + ":" + _parts(c.weather)[2]), None, REFUSED),
    ("grpc-hex-case-mangled", lambda c: Req("/v1/forecast", [("Grpc-Metadata-macaroon",
                                            _grpc_valid(c).headers[0][1].replace("a", "k", 1))]), ("malformed",), REFUSED),
    # scheme games
    ("scheme-bearer", lambda c: auth("Bearer " + c.weather.split(" ", 1)[1]), ("payment_required",), REFUSED),
    ("scheme-basic", lambda c: auth("Basic " + base64.b64encode(b"a:b").decode()), ("payment_required",), REFUSED),
    ("scheme-l4o2", lambda c: auth("L4O2 " + c.weather.split(" ", 1)[1]), ("payment_required",), REFUSED),
    ("scheme-glued", lambda c: auth("L402" + c.weather.split(" ", 1)[1]), ("payment_required",), REFUSED),
    ("scheme-macaroon", lambda c: auth("Macaroon " + c.weather.split(" ", 1)[1]), ("payment_required",), REFUSED),
    # widened caveats appended by the holder (signature chain still valid)
    ("widen-services-to-admin", lambda c: auth(extend(c.weather, "services=weather:0,admin:0"), "/admin/panel"),
     ("caveat_widened",), REFUSED),
    ("widen-services-same-route", lambda c: auth(extend(c.weather, "services=weather:0,admin:0")),
     ("caveat_widened",), REFUSED),
    ("widen-services-tier", lambda c: auth(extend(c.weather, "services=weather:1")), ("caveat_widened",), REFUSED),
    ("widen-capabilities", lambda c: auth(extend(c.admin, "admin_capabilities=admin,root"), "/admin/panel"),
     ("caveat_widened",), REFUSED),
    ("widen-valid-until", lambda c: auth(extend(c.weather, f"weather_valid_until={NOW + 10 ** 8}")),
     ("caveat_widened",), REFUSED),
    ("widen-path-prefix", lambda c: auth(extend(c.files, "files_path_prefix=/files/"), "/files/private/x"),
     ("caveat_widened",), REFUSED),
    ("widen-methods", lambda c: auth(extend(c.files, "files_methods=GET,POST"), "/files/public/x", "POST"),
     ("caveat_widened",), REFUSED),
    ("duplicate-widening-services", lambda c: auth(extend(c.weather, "services=weather:0", "services=weather:0",
                                                          "services=weather:0,admin:0"), "/admin/panel"),
     ("caveat_widened",), REFUSED),
    ("duplicate-widening-valid-until", lambda c: auth(extend(c.weather, f"weather_valid_until={NOW + 60}",
                                                             f"weather_valid_until={NOW + 10 ** 8}")),
     ("caveat_widened",), REFUSED),
    ("narrow-then-rewiden-capabilities", lambda c: auth(extend(c.admin, "admin_capabilities=read",
                                                               "admin_capabilities=admin"), "/admin/panel"),
     ("caveat_widened",), REFUSED),
    ("capability-for-other-service", lambda c: auth(extend(c.weather, "admin_capabilities=admin"), "/admin/panel"),
     ("wrong_service",), REFUSED),
    # caveat injection
    ("inject-newline-services", lambda c: auth(extend(c.weather, "services=weather:0\nservices=admin:0"),
                                                "/admin/panel"), ("malformed", "caveat_widened"), REFUSED),
    ("inject-newline-valid-until", lambda c: auth(extend(c.weather, "weather_valid_until=1\n9999999999")),
     ("malformed",), REFUSED),
    ("inject-crlf-valid-until", lambda c: auth(extend(c.weather, f"weather_valid_until={NOW + 60}\r\n")),
     ("malformed",), REFUSED),
    ("inject-double-equals", lambda c: auth(extend(c.weather, "services==admin:0"), "/admin/panel"),
     ("malformed", "caveat_widened", "wrong_service"), REFUSED),
    ("inject-comma-services", lambda c: auth(extend(c.weather, "services=weather:0, admin:0"), "/admin/panel"),
     ("caveat_widened", "malformed"), REFUSED),
    ("inject-nul-services", lambda c: auth(extend(c.weather, "services=weather:0\x00,admin:0"), "/admin/panel"),
     ("caveat_widened", "malformed"), REFUSED),
    ("inject-nul-key", lambda c: auth(extend(c.weather, "weather_valid_until\x00=9"), "/admin/panel"),
     ("wrong_service",), REFUSED),
    ("inject-space-valid-until", lambda c: auth(extend(c.weather, f"weather_valid_until= {NOW + 10 ** 8}")),
     ("malformed",), REFUSED),
    ("inject-plus-valid-until", lambda c: auth(extend(c.weather, f"weather_valid_until=+{NOW + 10 ** 8}")),
     ("malformed",), REFUSED),
    ("inject-list-valid-until", lambda c: auth(extend(c.weather, f"weather_valid_until={NOW + 10 ** 8},1")),
     ("malformed",), REFUSED),
    ("inject-overflow-valid-until", lambda c: auth(extend(c.weather, "weather_valid_until=" + "9" * 30)),
     ("malformed",), REFUSED),
    ("inject-no-equals", lambda c: auth(extend(c.weather, "services")), ("malformed",), REFUSED),
    ("inject-empty-services", lambda c: auth(extend(c.weather, "services=")), ("malformed",), REFUSED),
    ("inject-path-prefix-dotdot", lambda c: auth(extend(c.files, "files_path_prefix=/files/public/../"),
                                                 "/files/private/x"), ("restricted", "caveat_widened"), REFUSED),
    # sizes
    ("auth-64k", lambda c: auth("L402 " + "A" * 65536 + ":" + "00" * 32), ("malformed",), (402, 431, 400, 413, 0)),
    ("auth-9k", lambda c: auth("L402 " + "A" * 9000 + ":" + "00" * 32), ("malformed",), REFUSED),
    ("token-33-caveats", _big_caveat_count, ("malformed",), REFUSED),
    ("token-over-4096-bytes", _big_token, ("malformed",), REFUSED),
    # repeated Authorization headers (Envoy joins them with ',')
    ("repeated-valid-then-invalid", lambda c: Req("/v1/forecast", [("Authorization", c.weather),
                                                                   ("Authorization", "L402 AAAA:" + "00" * 32)]),
     ("malformed",), REFUSED),
    ("repeated-invalid-then-valid", lambda c: Req("/v1/forecast", [("Authorization", "L402 AAAA:" + "00" * 32),
                                                                   ("Authorization", c.weather)]),
     ("malformed",), REFUSED),
    ("repeated-bearer-then-valid", lambda c: Req("/v1/forecast", [("Authorization", "Bearer x"),
                                                                  ("Authorization", c.weather)]), None, REFUSED),
    ("repeated-other-service-then-weather", lambda c: Req("/admin/panel", [("Authorization", c.weather),
                                                                           ("Authorization", c.admin)]),
     None, REFUSED),
    # both schemes at once: Authorization wins
    ("both-invalid-auth-valid-grpc", lambda c: Req("/v1/forecast", [("Authorization", "L402 AAAA:" + "00" * 32),
                                                                    *_grpc_valid(c).headers]), ("malformed",), REFUSED),
    ("both-bearer-valid-grpc", lambda c: Req("/v1/forecast", [("Authorization", "Bearer abc"),
                                                              *_grpc_valid(c).headers]), ("payment_required",), REFUSED),
    ("both-weather-auth-admin-grpc", lambda c: Req("/admin/panel", [("Authorization", c.weather),
                                                                    *_grpc(c, c.admin, [f"preimage={split(c.admin)[2].hex()}"]).headers]),
     ("wrong_service",), REFUSED),
    # gRPC-style credentials
    ("grpc-wrong-preimage", lambda c: _grpc(c, c.weather, ["preimage=" + "11" * 32]), ("preimage_mismatch",), REFUSED),
    ("grpc-no-preimage", lambda c: _grpc(c, c.weather, []), ("malformed",), REFUSED),
    ("grpc-two-preimages", lambda c: _grpc(c, c.weather, [f"preimage={split(c.weather)[2].hex()}",
                                                          "preimage=" + "11" * 32]), ("malformed",), REFUSED),
    ("grpc-other-preimage", lambda c: _grpc(c, c.weather, [f"preimage={split(c.weather2)[2].hex()}"]),
     ("preimage_mismatch",), REFUSED),
    ("grpc-base64-not-hex", lambda c: Req("/v1/forecast", [("Grpc-Metadata-macaroon",
                                                            b64(bytes.fromhex(_grpc_valid(c).headers[0][1])))]),
     ("malformed",), REFUSED),
    ("grpc-macaroon-header-wrong-preimage", lambda c: _grpc(c, c.weather, ["preimage=" + "22" * 32], "Macaroon"),
     ("preimage_mismatch",), REFUSED),
    ("grpc-weather-token-on-admin", lambda c: _grpc(c, c.weather, [f"preimage={split(c.weather)[2].hex()}"],
                                                    path="/admin/panel"), ("wrong_service",), REFUSED),
    # non-UTF-8 bytes
    ("non-utf8-authorization", lambda c: auth(b"L402 \xff\xfe\xfd:" + b"00" * 32), ("malformed",), (402, 400)),
    ("non-utf8-after-valid", lambda c: auth(c.weather.encode() + b"\xc3"), ("malformed",), (402, 400)),
    ("non-utf8-in-base64", lambda c: auth(c.weather.encode().replace(b"A", b"\xc1", 1)), ("malformed",), (402, 400)),
    ("non-utf8-grpc", lambda c: Req("/v1/forecast", [("Grpc-Metadata-macaroon", b"02\xff\xfe")]), None, (402, 400)),
    # empty and degenerate values
    ("empty-authorization", lambda c: auth(""), ("payment_required",), REFUSED),
    ("scheme-only", lambda c: auth("L402"), ("payment_required",), REFUSED),
    ("scheme-space", lambda c: auth("L402 "), None, REFUSED),
    ("colon-only", lambda c: auth("L402 :"), ("malformed",), REFUSED),
    ("macaroon-no-preimage", lambda c: auth("L402 " + _parts(c.weather)[1]), ("malformed",), REFUSED),
    ("macaroon-empty-preimage", lambda c: auth("L402 " + _parts(c.weather)[1] + ":"), ("malformed",), REFUSED),
    ("preimage-only", lambda c: auth("L402 :" + _parts(c.weather)[2]), ("malformed",), REFUSED),
    ("empty-grpc", lambda c: Req("/v1/forecast", [("Grpc-Metadata-macaroon", "")]), None, REFUSED),
    # other services
    ("weather-token-on-admin", lambda c: auth(c.weather, "/admin/panel"), ("wrong_service",), REFUSED),
    ("admin-token-on-weather", lambda c: auth(c.admin, "/v1/forecast"), ("wrong_service",), REFUSED),
    ("files-token-on-weather", lambda c: auth(c.files, "/v1/forecast"), ("wrong_service",), REFUSED),
    ("admin-service-without-capability", lambda c: auth(credential(*py_mint(c.secret, ["services=admin:0"])),
                                                        "/admin/panel"), ("capability_missing",), REFUSED),
    ("admin-service-other-capability", lambda c: auth(credential(*py_mint(
        c.secret, ["services=admin:0", "admin_capabilities=read"])), "/admin/panel"), ("capability_missing",), REFUSED),
    ("services-name-prefix", lambda c: auth(credential(*py_mint(c.secret, ["services=weatherx:0"]))),
     ("wrong_service",), REFUSED),
    # restricted route (files: GET under /files/public/)
    ("restricted-other-path", lambda c: auth(c.files, "/files/private/x"), ("restricted",), REFUSED),
    ("restricted-post", lambda c: auth(c.files, "/files/public/x", "POST"), ("restricted",), REFUSED),
    ("restricted-head", lambda c: auth(c.files, "/files/public/x", "HEAD"), None, REFUSED),  # no body
    ("restricted-delete", lambda c: auth(c.files, "/files/public/x", "DELETE"), ("restricted",), REFUSED),
    ("restricted-dotdot", lambda c: auth(c.files, "/files/public/../private/x"), ("restricted",), REFUSED),
    ("restricted-encoded-dotdot", lambda c: auth(c.files, "/files/public/%2e%2e/private/x"), ("restricted",), REFUSED),
    ("restricted-encoded-slash", lambda c: auth(c.files, "/files/public%2F..%2Fprivate/x"), None, (400, 402)),
    ("restricted-prefix-sibling", lambda c: auth(c.files, "/files/publicity/x"), ("restricted",), REFUSED),
    # unpaid requests with forged metering headers
    ("forged-metering-headers-unpaid", lambda c: Req("/v1/forecast", [(h, "forged") for h in GATEWAY_HEADERS]),
     ("payment_required",), REFUSED),
    ("forged-metering-bad-credential", lambda c: Req("/v1/forecast", [("Authorization", "L402 AAAA:" + "00" * 32),
                                                                      ("x-l402-token-id", token_id(c.weather))]),
     ("malformed",), REFUSED),
    ("no-route", lambda c: auth(c.weather, "/secret/thing"), None, (403,)),
    ("no-route-dotdot", lambda c: auth(c.weather, "/v1/../secret/thing"), None, (403,)),
    # path spellings a decoding, twice-decoding or Tomcat-like upstream would serve as another
    # route's path: 400 ambiguous_path from the filter where Envoy's normalization leaves them alone
    # (it resolves `..;` itself, so those get the rule of the path it resolved to)
    ("path-double-encoded-slash", lambda c: Req("/health/..%252fv1/forecast", []), None, (400,)),
    ("path-double-encoded-dots", lambda c: Req("/health/%252e%252e/v1/forecast", []), None, (400,)),
    ("path-semicolon-dotdot", lambda c: Req("/health/..;/v1/forecast", []), ("payment_required",), (400, 402)),
    ("path-semicolon-dotdot-restricted", lambda c: auth(c.files, "/files/public/..;/private/x"), ("restricted",),
     (400, 402)),
    ("path-semicolon-into-rule", lambda c: Req("/v1;x/forecast", []), None, (400,)),
    ("path-encoded-into-rule", lambda c: auth(c.weather, "/%61dmin/panel"), ("wrong_service",), (400, 402)),
]

# single-bit flips at many positions of a paid macaroon's bytes: (field, offset within it, bit)
FLIPS = [
    ("version", 0, 0), ("version", 0, 7), ("tag", 0, 0), ("location", 0, 5), ("location", 3, 0),
    ("identifier", 0, 0), ("identifier", 1, 0), ("identifier", 2, 3), ("identifier", 17, 6),
    ("identifier", 33, 1), ("identifier", 34, 0), ("identifier", 50, 4), ("identifier", 65, 7),
    ("eos", 0, 0), ("caveat0", 0, 2), ("caveat0", 8, 0), ("caveat0", -1, 0), ("caveat0", -3, 5),
    ("caveat1", 0, 1), ("caveat1", -1, 0), ("caveat1", -1, 3), ("signature", 0, 0), ("signature", 15, 4),
    ("signature", 31, 7), ("signature", 31, 0),
]


def _flip_case(spec: tuple[str, int, int]) -> Callable[[Ctx], Req]:
    name, offset, bit = spec

    def build(c: Ctx) -> Req:
        _, raw, pre = split(c.weather)
        fields = [(n, a, b) for n, a, b in v2_fields(raw) if n == name]
        _, a, b = fields[0]
        pos = (b + offset) if offset < 0 else (a + offset)
        assert a <= pos < b or name in ("tag", "eos")
        return auth(credential(flip(raw, pos, bit), pre))
    return build


for spec in FLIPS:
    CASES.append((f"bitflip-{spec[0]}{spec[1]}-b{spec[2]}", _flip_case(spec), None, REFUSED))

for keep in (0, 1, 2, 7, 8, 40, 70, 76, 77, 90, 110, 130, 150, 160, -33, -2, -1):
    CASES.append((f"truncate-keep{keep}", (lambda k: lambda c: auth(credential(split(c.weather)[1][:k],
                                                                                split(c.weather)[2])))(keep),
                  None, REFUSED))

for label, extra in (("zero", b"\x00"), ("ff", b"\xff"), ("random16", None), ("eos-eos", b"\x00\x00"),
                     ("sigfield", b"\x06\x20" + bytes(32)), ("copy", "copy")):
    def _append(c: Ctx, extra=extra) -> Req:
        _, raw, pre = split(c.weather)
        tail = raw if extra == "copy" else (secrets.token_bytes(16) if extra is None else extra)
        return auth(credential(raw + tail, pre))
    CASES.append((f"append-{label}", _append, None, REFUSED))

for label, text in (("base64-truncated-char", lambda c: _parts(c.weather)[1][:-5]),
                    ("base64-extra-char", lambda c: _parts(c.weather)[1].rstrip("=") + "AB"),
                    ("base64-inner-space", lambda c: _parts(c.weather)[1][:20] + " " + _parts(c.weather)[1][20:])):
    CASES.append((label, (lambda t: lambda c: auth(f"L402 {t(c)}:{_parts(c.weather)[2]}"))(text), ("malformed",),
                  REFUSED))


@pytest.mark.parametrize("name,build,reasons,statuses", CASES, ids=[c[0] for c in CASES])
def test_attack_never_reaches_upstream(fresh: Ctx, name, build, reasons, statuses):
    req = build(fresh)
    fresh.up.clear()  # builders may ask for challenges (which never reach the upstream either)
    OUTCOMES[name] = assert_refused(fresh, req, reasons, statuses)


OUTCOMES: dict[str, tuple[int, str | None]] = {}


def test_grpc_content_type_refusal_is_a_grpc_error(fresh: Ctx):
    """gRPC callers get HTTP 200 with grpc-status 13 (spec): still nothing reaches the upstream."""
    req = _grpc(fresh, fresh.weather, ["preimage=" + "11" * 32])
    req.headers.append(("content-type", "application/grpc"))
    status, hdrs, _ = send(fresh, req)
    assert status == 200 and hdrs.get("grpc-status") == "13", (status, hdrs)
    assert fresh.up.requests() == []


# -- the Payment scheme ---------------------------------------------------------------------------
#
# Each builder buys its own charge (a real invoice on the simulator, paid) and spoils it, so the
# spoiling is the only thing wrong with it; a builder that redeems a charge first does so before the
# upstream's log is cleared.

def _bought(c: Ctx, path: str = "/pay/q") -> tuple[dict[str, str], str]:
    challenge, preimage, _ = c.gw.buy_charge(path)
    return challenge, preimage


def _redeemed(c: Ctx, path: str = "/pay/q") -> tuple[dict[str, str], str]:
    """A charge already spent on ``path``."""
    challenge, preimage = _bought(c, path)
    status, _, body = send(c, auth(charge(challenge, preimage), path))
    assert status == 200, (status, body[:300])
    return challenge, preimage


def _pay(cred: str, path: str = "/pay/q") -> Req:
    return auth(cred, path)


def _spoiled(spoil: Callable[[dict[str, str], str], str], path: str = "/pay/q", bought_on: str | None = None
             ) -> Callable[[Ctx], Req]:
    """A charge bought on ``bought_on`` (default: ``path``), spoiled, presented on ``path``."""
    return lambda c: _pay(spoil(*_bought(c, bought_on or path)), path)


def _with_request(challenge: dict[str, str], **changes: Any) -> dict[str, str]:
    request = decoded(challenge["request"])
    details = {**request["methodDetails"], **changes.pop("methodDetails", {})}
    return {**challenge, "request": b64url(canonical({**request, **changes, "methodDetails": details}))}


def _with_opaque(challenge: dict[str, str], **changes: Any) -> dict[str, str]:
    return {**challenge, "opaque": b64url(canonical({**decoded(challenge["opaque"]), **changes}))}


def _own_hash(c: Ctx) -> Req:
    """The invoice's payment hash swapped for one whose preimage the client made up."""
    challenge, _ = _bought(c)
    mine = secrets.token_bytes(32)
    return _pay(charge(_with_request(challenge, methodDetails={"paymentHash": hashlib.sha256(mine).hexdigest()}),
                       mine.hex()))


def _minted(c: Ctx, service: str, amount_sat: int, path: str, *, secret: str | None = None,
            expires_in_s: int = 600) -> Req:
    """A charge challenge minted outside the gateway (under its secret unless told), for an invoice
    the client "paid" with its own preimage: no node involved."""
    preimage = secrets.token_bytes(32)
    challenge = mint_charge(secret or c.secret, service, amount_sat, preimage, secrets.token_hex(32),
                            expires_in_s=expires_in_s)
    return _pay(charge(challenge, preimage.hex()), path)


def _respelled(challenge: dict[str, str], preimage: str) -> str:
    """The same credential in another spelling: members reordered, spaces, padded base64url."""
    body = {"payload": {"preimage": preimage.upper()}, "challenge": dict(reversed(list(challenge.items())))}
    raw = json.dumps(body, indent=1).encode()
    return "Payment " + base64.urlsafe_b64encode(raw).decode()


def _standard_base64(challenge: dict[str, str], preimage: str) -> str:
    """A valid charge in the standard base64 alphabet (`+`, `/`): the description, outside the id,
    is padded until the encoding needs one of them; its base64url spelling would pass."""
    for n in range(64):
        body = {"challenge": {**challenge, "description": "?" * n}, "payload": {"preimage": preimage}}
        text = base64.b64encode(json.dumps(body).encode()).decode().rstrip("=")
        if "+" in text or "/" in text:
            return "Payment " + text
    raise AssertionError("no spelling with + or /")


def _token_of_once(c: Ctx, first: str) -> Req:
    """/once/ (uses: 1, both dialects): one dialect of an invoice spent, the other presented."""
    challenge, preimage, r = c.gw.buy_charge("/once/x")
    token = f"L402 {challenge_parts(r)[0]}:{preimage}"
    paid = charge(challenge, preimage)
    spent, presented = (paid, token) if first == "charge" else (token, paid)
    status, _, body = send(c, auth(spent, "/once/x"))
    assert status == 200, (status, body[:300])
    return auth(presented, "/once/x")


def _repeated(c: Ctx, first: str) -> Req:
    """Two Authorization fields, each valid alone for /dual/: an L402 token and a charge."""
    token = c.gw.buy("/dual/x")
    cred = charge(*_bought(c, "/dual/x"))
    pair = [("Authorization", token), ("Authorization", cred)]
    return Req("/dual/x", pair if first == "l402" else pair[::-1])


# (id, builder, expected reason, expected problem type; None: the L402 JSON body, no problem details)
PAYMENT_CASES: list[tuple[str, Callable[[Ctx], Req], str, str | None]] = [
    # replays: a charge buys one request, whatever its spelling and wherever it goes next
    ("charge-replayed", lambda c: _pay(charge(*_redeemed(c))), "replayed", "invalid-challenge"),
    ("charge-replayed-other-path", lambda c: _pay(charge(*_redeemed(c)), "/pay/other?x=1"), "replayed",
     "invalid-challenge"),
    ("charge-replayed-respelled", lambda c: _pay(_respelled(*_redeemed(c))), "replayed", "invalid-challenge"),
    ("charge-replayed-odd-case", lambda c: _pay("pAyMeNt " + charge(*_redeemed(c)).split(" ", 1)[1]), "replayed",
     "invalid-challenge"),
    ("charge-replayed-dual", lambda c: _pay(charge(*_redeemed(c, "/dual/x")), "/dual/y"), "replayed",
     "invalid-challenge"),
    ("once-token-after-its-charge", lambda c: _token_of_once(c, "charge"), "used_up", None),
    ("once-charge-after-its-token", lambda c: _token_of_once(c, "l402"), "replayed", "invalid-challenge"),
    # expiry, service, price
    ("charge-expired", lambda c: _minted(c, "quotes", 5, "/pay/q", expires_in_s=-5), "expired", "payment-expired"),
    ("charge-other-route", _spoiled(charge, "/dual/x", "/pay/q"), "wrong_service", "invalid-challenge"),
    ("charge-once-on-dual", _spoiled(charge, "/dual/x", "/once/x"), "wrong_service", "invalid-challenge"),
    ("charge-lower-price", lambda c: _minted(c, "quotes", 4, "/pay/q"), "wrong_price", "payment-insufficient"),
    ("charge-lower-price-dual", lambda c: _minted(c, "dual", 1, "/dual/x"), "wrong_price", "payment-insufficient"),
    # the echoed challenge tampered with: the id binds every slot but the description
    ("tampered-request-amount", _spoiled(lambda ch, p: charge(_with_request(ch, amount="1"), p)),
     "invalid_challenge", "invalid-challenge"),
    ("tampered-request-own-hash", _own_hash, "invalid_challenge", "invalid-challenge"),
    ("tampered-opaque-service", _spoiled(lambda ch, p: charge(_with_opaque(ch, service="dual"), p), "/dual/x",
                                         "/pay/q"), "invalid_challenge", "invalid-challenge"),
    ("tampered-opaque-token-id", lambda c: _pay(charge(_with_opaque((r := _redeemed(c))[0],
                                                                    token_id=secrets.token_hex(32)), r[1])),
     "invalid_challenge", "invalid-challenge"),
    ("tampered-realm", _spoiled(lambda ch, p: charge({**ch, "realm": "dual"}, p)), "invalid_challenge",
     "invalid-challenge"),
    ("added-digest", _spoiled(lambda ch, p: charge({**ch, "digest": "sha-256=:AAAA:"}, p)), "invalid_challenge",
     "invalid-challenge"),
    ("forged-id", _spoiled(lambda ch, p: charge({**ch, "id": b64url(secrets.token_bytes(32))}, p)),
     "invalid_challenge", "invalid-challenge"),
    ("id-of-another-challenge", lambda c: _pay(charge({**(a := _bought(c))[0], "id": _bought(c)[0]["id"]}, a[1])),
     "invalid_challenge", "invalid-challenge"),
    ("id-16-bytes", _spoiled(lambda ch, p: charge({**ch, "id": ch["id"][:22]}, p)), "invalid_challenge",
     "invalid-challenge"),
    ("pushed-expiry", _spoiled(lambda ch, p: charge({**ch, "expires": "2099-01-01T00:00:00Z"}, p)),
     "invalid_challenge", "invalid-challenge"),
    ("other-secret", lambda c: _minted(c, "quotes", 5, "/pay/q", secret=new_secret()), "invalid_challenge",
     "invalid-challenge"),
    # preimages
    ("wrong-preimage", _spoiled(lambda ch, p: charge(ch, "00" * 32)), "preimage_mismatch", "verification-failed"),
    ("preimage-of-another-charge", lambda c: _pay(charge(_bought(c)[0], _bought(c)[1])), "preimage_mismatch",
     "verification-failed"),
    ("payment-hash-as-preimage", _spoiled(lambda ch, p: charge(ch, decoded(ch["request"])["methodDetails"]
                                                               ["paymentHash"])), "preimage_mismatch",
     "verification-failed"),
    ("preimage-31-bytes", _spoiled(lambda ch, p: charge(ch, p[:62])), "malformed", "malformed-credential"),
    ("preimage-33-bytes", _spoiled(lambda ch, p: charge(ch, p + "00")), "malformed", "malformed-credential"),
    ("preimage-base64", _spoiled(lambda ch, p: charge(ch, b64url(bytes.fromhex(p)))), "malformed",
     "malformed-credential"),
    ("preimage-0x", _spoiled(lambda ch, p: charge(ch, "0x" + p[2:])), "malformed", "malformed-credential"),
    # the credential's encoding
    ("token-not-base64url", lambda c: _pay("Payment !!!" + "A" * 40), "malformed", "malformed-credential"),
    ("token-standard-base64", _spoiled(_standard_base64), "malformed", "malformed-credential"),
    ("token-inner-space", _spoiled(lambda ch, p: (v := charge(ch, p))[:40] + " " + v[40:]), "malformed",
     "malformed-credential"),
    ("token-over-padded", _spoiled(lambda ch, p: charge(ch, p) + "==="), "malformed", "malformed-credential"),
    ("token-empty", lambda c: _pay("Payment \t "), "payment_required", "payment-required"),  # Envoy trims it
    ("json-array", lambda c: _pay("Payment " + b64url(b"[1,2]")), "malformed", "malformed-credential"),
    ("json-string", lambda c: _pay("Payment " + b64url(b'"challenge"')), "malformed", "malformed-credential"),
    ("json-null", lambda c: _pay("Payment " + b64url(b"null")), "malformed", "malformed-credential"),
    ("json-truncated", _spoiled(lambda ch, p: "Payment " + b64url(json.dumps(
        {"challenge": ch, "payload": {"preimage": p}}).encode()[:-2])), "malformed", "malformed-credential"),
    ("no-payload", _spoiled(lambda ch, p: "Payment " + b64url(json.dumps({"challenge": ch}).encode())), "malformed",
     "malformed-credential"),
    ("payload-without-preimage", _spoiled(lambda ch, p: "Payment " + b64url(json.dumps(
        {"challenge": ch, "payload": {"hash": p}}).encode())), "malformed", "malformed-credential"),
    ("no-challenge", _spoiled(lambda ch, p: "Payment " + b64url(json.dumps({"payload": {"preimage": p}}).encode())),
     "malformed", "malformed-credential"),
    # a valid charge but for its size: the description is outside the id
    ("credential-over-8k", _spoiled(lambda ch, p: charge({**ch, "description": "x" * 9000}, p)), "malformed",
     "malformed-credential"),
    ("non-utf8-credential", lambda c: _pay(b"Payment \xff\xfe" + b"A" * 40), "malformed", "malformed-credential"),
    # other methods and intents
    ("intent-session", _spoiled(lambda ch, p: charge({**ch, "intent": "session"}, p)), "method_unsupported",
     "method-unsupported"),
    ("method-tempo", _spoiled(lambda ch, p: charge({**ch, "method": "tempo"}, p)), "method_unsupported",
     "method-unsupported"),
    ("method-uppercase", _spoiled(lambda ch, p: charge({**ch, "method": "LIGHTNING"}, p)), "method_unsupported",
     "method-unsupported"),
    # the scheme's spelling: any case is the Payment scheme, a near miss is no credential at all
    ("scheme-odd-case-wrong-preimage", _spoiled(lambda ch, p: "pAyMeNt " + charge(ch, "00" * 32).split(" ", 1)[1]),
     "preimage_mismatch", "verification-failed"),
    ("scheme-only", lambda c: _pay("Payment"), "payment_required", "payment-required"),
    ("scheme-payments", _spoiled(lambda ch, p: "Payments " + charge(ch, p).split(" ", 1)[1]), "payment_required",
     "payment-required"),
    ("scheme-glued", _spoiled(lambda ch, p: "Payment" + charge(ch, p).split(" ", 1)[1]), "payment_required",
     "payment-required"),
    # two Authorization fields (Envoy joins them with ','), each valid alone
    ("repeated-l402-then-payment", lambda c: _repeated(c, "l402"), "malformed", None),
    ("repeated-payment-then-l402", lambda c: _repeated(c, "payment"), "malformed", "malformed-credential"),
    ("repeated-payment-twice", lambda c: Req("/pay/q", [("Authorization", charge(*_bought(c)))] * 2),
     "malformed", "malformed-credential"),
    # routes that do not offer the Payment scheme read no Payment credential
    ("charge-on-l402-route", _spoiled(charge, "/v1/forecast", "/pay/q"), "payment_required", None),
    ("minted-charge-on-l402-route", lambda c: _minted(c, "weather", 10, "/v1/forecast"), "payment_required", None),
    ("charge-on-capability-route", lambda c: _minted(c, "admin", 50, "/admin/panel"), "payment_required", None),
    # ... and, the other way round, a route offering only the Payment scheme reads no L402 credential: a
    # token of its service (here minted under the gateway's secret, as `l402 token mint` does; or bought on
    # another route of the same service) would open it for its whole lifetime, uncounted
    ("l402-token-on-payment-only-route", lambda c: auth(credential(*py_mint(c.secret, ["services=quotes:0"])),
                                                        "/pay/q"), "payment_required", "payment-required"),
]

# Cases where the filter does not (yet) answer as it should; strict, so a fix turns them into failures
# to be moved back into the plain cases.


def assert_payment_refused(ctx: Ctx, req: Req, reason: str, problem: str | None) -> tuple[int, str | None]:
    """402 with ``reason``; problem details of type ``problem`` and a Payment challenge, or (problem
    None) the L402 JSON body; a fresh challenge whose id verifies under the gateway's secret; and
    nothing upstream."""
    status, hdrs, body = raw_request(ctx.gw.listen_port, req.method, req.path, req.headers)
    log = ctx.up.requests()
    assert log == [], f"an attack reached the upstream ({status}): {log}"
    assert status == 402, (status, body[:300])
    doc = json.loads(body)
    assert doc.get("reason") == reason, (doc.get("reason"), body[:300])
    content_type = dict(hdrs).get("content-type")
    found = challenges([v for k, v in hdrs if k == "www-authenticate"])
    schemes = [s for s, _ in found]
    if problem is None:
        assert content_type == "application/json" and doc["error"] == "payment_required", (content_type, doc)
        assert "L402" in schemes, schemes
    else:
        assert content_type == "application/problem+json", content_type
        assert doc["type"] == f"https://paymentauth.org/problems/{problem}" and doc["status"] == 402, doc
        assert doc["title"] and doc["detail"], doc
    offered = [p for s, p in found if s == "Payment"]
    route_offers_payment = not req.path.startswith(tuple(PAID_PREFIXES))
    assert len(offered) == (1 if route_offers_payment else 0), schemes
    for fresh in offered:
        assert fresh["id"] == challenge_id(ctx.secret, fresh), fresh
        assert decoded(fresh["request"])["methodDetails"]["invoice"] == doc["invoice"]
    return status, reason


@pytest.mark.parametrize("name,build,reason,problem", [pytest.param(*case, id=case[0]) for case in PAYMENT_CASES])
def test_payment_attack_never_reaches_upstream(fresh: Ctx, name, build, reason, problem):
    req = build(fresh)
    fresh.up.clear()  # builders buy charges, and some redeem one first
    OUTCOMES[f"payment-{name}"] = assert_payment_refused(fresh, req, reason, problem)


def _charge_passes_once(c: Ctx, path: str, service: str, price_msat: int, scheme: str = "Payment",
                        respell: bool = False, description: str | None = None) -> None:
    challenge, preimage = _bought(c, path)
    echoed = challenge if description is None else {**challenge, "description": description}
    cred = _respelled(echoed, preimage) if respell else charge(echoed, preimage)
    cred = scheme + " " + cred.split(" ", 1)[1]
    # An independent check: we issued this challenge (its id under the secret) and its invoice is paid.
    assert challenge["id"] == challenge_id(c.secret, challenge)
    assert hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == decoded(challenge["request"])["methodDetails"][
        "paymentHash"]
    c.up.clear()
    status, hdrs, body = send(c, auth(cred, path + "?n=1"))
    assert status == 200, (status, body[:300])
    receipt = decoded(hdrs["payment-receipt"])
    assert receipt["status"] == "success" and receipt["challengeId"] == challenge["id"], receipt
    (entry,) = c.up.requests()
    assert entry["path"] == path + "?n=1"
    names = [k for k, _ in entry["header_list"]]
    assert "authorization" not in names
    for h in GATEWAY_HEADERS:
        assert names.count(h) == 1, (h, entry["header_list"])
    assert entry["headers"]["x-l402-token-id"] == decoded(challenge["opaque"])["token_id"]
    assert entry["headers"]["x-l402-service"] == service
    assert entry["headers"]["x-l402-price-msat"] == str(price_msat)
    # ... and exactly once.
    c.up.clear()
    assert_payment_refused(c, auth(cred, path + "?n=2"), "replayed", "invalid-challenge")


PAYMENT_CONTROLS: list[tuple[str, Callable[[Ctx], None]]] = [
    ("charge-valid-once", lambda c: _charge_passes_once(c, "/pay/q", "quotes", 5000)),
    ("charge-valid-once-dual", lambda c: _charge_passes_once(c, "/dual/x", "dual", 10000)),
    ("charge-valid-once-uses-1", lambda c: _charge_passes_once(c, "/once/x", "once", 3000)),
    ("charge-scheme-odd-case", lambda c: _charge_passes_once(c, "/pay/q", "quotes", 5000, scheme="pAyMeNt")),
    ("charge-respelled", lambda c: _charge_passes_once(c, "/pay/q", "quotes", 5000, respell=True)),
    # the description is informative, outside the id: what makes credential-over-8k and
    # token-standard-base64 refusals of their size and alphabet alone
    ("charge-description-added", lambda c: _charge_passes_once(c, "/pay/q", "quotes", 5000,
                                                               description="?" * 40 + "x" * 2000)),
]


@pytest.mark.parametrize("name,run", PAYMENT_CONTROLS, ids=[c[0] for c in PAYMENT_CONTROLS])
def test_valid_charge_passes_once(fresh: Ctx, name, run):
    run(fresh)


def test_a_charge_raced_across_workers_passes_once(wasm):
    """Two Envoy workers sharing one gateway's shared data: a charge (and, on a `uses: 1` route with
    both dialects, a charge and the L402 token of its invoice) sent on eight connections at once
    passes once. The upstream's log is the ground truth."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    up = RecordingUpstream().start()
    gw = Gateway(up.port, routes=PAYMENT_ROUTES, concurrency=2)
    try:
        def race(requests: list[Req]) -> list[int]:
            barrier = threading.Barrier(len(requests))

            def one(req: Req) -> int:
                barrier.wait(timeout=10)
                return raw_request(gw.listen_port, req.method, req.path, req.headers)[0]
            with ThreadPoolExecutor(len(requests)) as pool:
                return list(pool.map(one, requests))

        expected = []
        for n in range(3):
            challenge, preimage, _ = gw.buy_charge("/pay/q")
            statuses = race([auth(charge(challenge, preimage), f"/pay/q?round={n}&i={i}") for i in range(8)])
            assert sorted(statuses) == [200] + [402] * 7, statuses
            challenge, preimage, r = gw.buy_charge("/once/x")
            both = [charge(challenge, preimage), f"L402 {challenge_parts(r)[0]}:{preimage}"]
            statuses = race([auth(both[i % 2], f"/once/x?round={n}&i={i}") for i in range(8)])
            assert sorted(statuses) == [200] + [402] * 7, statuses
            expected += [f"/pay/q?round={n}", f"/once/x?round={n}"]
        seen = sorted(e["path"].split("&")[0] for e in up.requests())
        assert seen == sorted(expected), seen
        per_worker = {k: v for k, v in gw.envoy.stats().items()
                      if f"_{gw.listen_port}.worker_" in k and k.endswith(".downstream_cx_total")}
        assert len(per_worker) == 2 and all(v > 0 for v in per_worker.values()), per_worker
    finally:
        gw.stop()
        up.stop()


# -- positive controls ----------------------------------------------------------------------------

def _url_safe_unpadded(cred: str) -> str:
    s, m, p = _parts(cred)
    return f"{s} {m.replace('+', '-').replace('/', '_').rstrip('=')}:{p}"


CONTROLS: list[tuple[str, Callable[[Ctx], tuple[Req, str, str]]]] = [
    ("valid", lambda c: (auth(c.weather), c.weather, "weather")),
    ("valid-second-token", lambda c: (auth(c.weather2, "/v1/other?x=1"), c.weather2, "weather")),
    ("scheme-lowercase", lambda c: (auth("l402 " + c.weather.split(" ", 1)[1]), c.weather, "weather")),
    ("scheme-lsat-mixed-case", lambda c: (auth("LsAt " + c.weather.split(" ", 1)[1]), c.weather, "weather")),
    ("preimage-uppercase-hex", lambda c: (auth(c.weather.rsplit(":", 1)[0] + ":" + _parts(c.weather)[2].upper()),
                                          c.weather, "weather")),
    ("base64-url-safe-unpadded", lambda c: (auth(_url_safe_unpadded(c.weather)), c.weather, "weather")),
    ("grpc-metadata-macaroon", lambda c: (_grpc_valid(c), c.weather, "weather")),
    ("grpc-uppercase-hex", lambda c: (Req("/v1/forecast", [("Grpc-Metadata-macaroon",
                                                             _grpc_valid(c).headers[0][1].upper())]), c.weather, "weather")),
    ("macaroon-header", lambda c: (_grpc(c, c.weather, [f"preimage={split(c.weather)[2].hex()}"], "Macaroon"),
                                   c.weather, "weather")),
    ("admin-with-capability", lambda c: (auth(c.admin, "/admin/panel"), c.admin, "admin")),
    ("files-restricted-allowed", lambda c: (auth(c.files, "/files/public/docs/a.txt"), c.files, "files")),
    ("narrowing-valid-until", lambda c: (auth(extend(c.weather, f"weather_valid_until={NOW + 600}")), c.weather,
                                         "weather")),
    ("duplicate-equal-services", lambda c: (auth(extend(c.weather, "services=weather:0", "services=weather:0")),
                                            c.weather, "weather")),
    ("narrowing-path-prefix", lambda c: (auth(extend(c.files, "files_path_prefix=/files/public/docs/"),
                                              "/files/public/docs/b"), c.files, "files")),
    ("unknown-caveat-ignored", lambda c: (auth(extend(c.weather, "client_note=hello")), c.weather, "weather")),
]


@pytest.mark.parametrize("name,build", CONTROLS, ids=[c[0] for c in CONTROLS])
def test_valid_credential_passes(fresh: Ctx, name, build):
    req, cred, service = build(fresh)
    assert_passes(fresh, req, cred, service)
    (entry,) = fresh.up.requests()
    prefix = next(p for p in PAID_PREFIXES if entry["path"].startswith(p))
    assert PAID_PREFIXES[prefix] == service
    # An independent check (pymacaroons) that the original token grants this very request.
    assert credential_valid(cred, fresh.secret, service, CAPABILITIES.get(prefix, ()), method=entry["method"], path=entry["path"])


# -- metering header smuggling --------------------------------------------------------------------

FORGED = [(h, "forged") for h in GATEWAY_HEADERS] + [("X-L402-Token-Id", "forged-again")]


def test_free_route_strips_client_metering_headers(fresh: Ctx):
    status, _, _ = send(fresh, Req("/health", FORGED))
    assert status == 200
    (entry,) = fresh.up.requests()
    names = [k for k, _ in entry["header_list"]]
    assert not set(GATEWAY_HEADERS) & set(names), entry["header_list"]


def test_paid_route_replaces_client_metering_headers(fresh: Ctx):
    status, _, _ = send(fresh, Req("/v1/forecast", [("Authorization", fresh.weather), *FORGED]))
    assert status == 200
    (entry,) = fresh.up.requests()
    got = [(k, v) for k, v in entry["header_list"] if k in GATEWAY_HEADERS]
    assert sorted(got) == sorted([("x-l402-token-id", token_id(fresh.weather)), ("x-l402-service", "weather"),
                                  ("x-l402-price-msat", "10000")]), got


def test_paid_grpc_route_replaces_client_metering_headers(fresh: Ctx):
    req = _grpc_valid(fresh)
    status, _, _ = send(fresh, Req(req.path, [*req.headers, *FORGED]))
    assert status == 200
    (entry,) = fresh.up.requests()
    got = [(k, v) for k, v in entry["header_list"] if k in GATEWAY_HEADERS]
    assert sorted(got) == sorted([("x-l402-token-id", token_id(fresh.weather)), ("x-l402-service", "weather"),
                                  ("x-l402-price-msat", "10000")]), got
    assert "grpc-metadata-macaroon" not in entry["headers"]


# -- the gateway is still the same, healthy one --------------------------------------------------

def test_independent_check_is_not_a_tautology(ctx: Ctx):
    s = ctx.secret
    assert credential_valid(ctx.files, s, "files", method="GET", path="/files/public/a")
    assert not credential_valid(ctx.files, s, "files", method="GET", path="/files/private/a")
    assert not credential_valid(ctx.files, s, "files", method="POST", path="/files/public/a")
    assert not credential_valid(ctx.weather, s, "admin", method="GET", path="/admin/x")
    assert not credential_valid(ctx.weather, new_secret(), "weather", method="GET", path="/v1/x")
    assert not credential_valid(ctx.admin, s, "admin", ("root",), method="GET", path="/admin/x")
    assert not credential_valid(ctx.weather, s, "weather", now=int(time.time()) + 7200, method="GET", path="/v1/x")
    assert not credential_valid(extend(ctx.weather, "services=weather:0,admin:0"), s, "admin", method="GET", path="/admin/x")


def test_zz_gateway_survived_every_attack(ctx: Ctx):
    import sys
    summary: dict[str, int] = {}
    for status, reason in OUTCOMES.values():
        key = f"{status} {reason}"
        summary[key] = summary.get(key, 0) + 1
    sys.stderr.write(f"\n[adversarial] {len(OUTCOMES)} attacks refused: {summary}\n")
    now = ctx.gw.wasm_stats()
    for name in ("wasm.envoy.wasm.runtime.v8.active", "wasm.envoy.wasm.runtime.v8.created", "wasm.wasm_vm_count"):
        assert now.get(name) == ctx.baseline.get(name), (name, now.get(name), ctx.baseline.get(name))
    for name in ("wasm.l402.vm_reload", "wasm.l402.vm_reload_failure"):
        assert now.get(name, 0) == 0
    log = ctx.gw.envoy.log_text()
    for bad in ("panicked", "Wasm VM failed", "Function: proxy_on"):
        assert bad not in log, log[-2000:]
    ctx.up.clear()
    assert assert_passes(ctx, auth(ctx.weather), ctx.weather, "weather")
