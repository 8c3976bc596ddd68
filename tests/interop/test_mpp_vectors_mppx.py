"""Aperture's cross-implementation vectors for the Payment HTTP authentication scheme
(vectors/mpp_vectors.json, see vectors/README.md) run through a real third-party implementation:
the npm package `mppx` (tests/clients, pinned), behind tests/interop/js/mpp_vectors.mjs.

Each test compares what mppx produces with the vector's value. Where mppx disagrees with a vector the
case stays, marked xfail(strict=True) with the difference stated, so the list below documents how
this client differs from Aperture; a change of behaviour in a new mppx makes the xfail pass and
fail the run. Vector sections without a matching mppx function are not run: the raw HMAC input of
`challengeIds` (mppx computes the id but does not expose the input).

A few cases are derived from a vector and say so in their id (`derived`): the `challengeLists`
vectors use request values that are not base64url JSON ("cQ" is "q"), which mppx decodes eagerly and
so rejects the whole header; the derived cases put JSON requests in their place so that mppx's list
splitting itself is tested. The `+L402` cases put a vector's challenge beside an L402 challenge in
one field value, as this project's filter sends them.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
VECTORS = json.loads((HERE / "vectors" / "mpp_vectors.json").read_text(encoding="utf-8"))
SCRIPT = HERE / "js" / "mpp_vectors.mjs"
CLIENTS = HERE.parents[1] / "tests" / "clients"
MPPX_VERSION = "0.11.0"
SECRET = bytes.fromhex(VECTORS["hmacSecretHex"]).decode("utf-8")  # mppx takes the key as a string

L402 = 'L402 macaroon="AgEEbHNhdAJCAAA=", invoice="lnbcrt10u1pexample"'


def b64url_decode(text: str) -> bytes:
    """Python's strict-enough base64url decoder, for reading mppx's output."""
    assert re.fullmatch(r"[A-Za-z0-9_-]*", text), "not unpadded base64url: %r" % text
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# -- the cases -------------------------------------------------------------------------------------
# (id, op request for the node script, check(result), xfail reason or None, observed(result) or None).
# `check` asserts the vector's value; for a case mppx disagrees with, `observed` asserts what mppx does
# instead (test_mppx_differs_as_stated), so an xfail cannot hide a different failure.

CASES: list[tuple[str, dict, object, str | None, object]] = []


def case(case_id: str, request: dict, check, xfail: str | None = None, observed=None):
    assert (xfail is None) == (observed is None), case_id
    CASES.append((case_id, request, check, xfail, observed))


def observe_ok(r):
    assert r.get("ok"), r


def observe_error(fragment: str):
    def observed(r):
        assert fragment in r.get("error", ""), r
    return observed


def expect_error(r):
    assert "error" in r, "mppx accepted it: %r" % r


def expect_ok(r):
    assert r.get("ok"), r["error"]


# canonicalization: PaymentRequest.serialize = base64url(ox Json.canonicalize(value)), unpadded.
for v in VECTORS["canonicalization"]:
    if v.get("error"):
        case("canonicalization:" + v["name"], {"op": "canonicalize", "input": v["input"]}, expect_error)
        continue

    def check(r, v=v):
        expect_ok(r)
        assert b64url_decode(r["encoded"]) == v["canonical"].encode("utf-8")
    case("canonicalization:" + v["name"], {"op": "canonicalize", "input": v["input"]}, check)

# base64url: ox's Base64, the codec mppx calls.
B64_LENIENT = {
    "reject non-zero trailing bits": "ox Base64.toBytes ignores the bits the last character cannot carry: 'AB' decodes to 00",
    "reject embedded newline": "ox Base64.toBytes maps characters outside the alphabet to 0 instead of failing, so a newline is decoded as 'A'",
    "reject embedded carriage return": "ox Base64.toBytes maps characters outside the alphabet to 0 instead of failing, so a CR is decoded as 'A'",
    "reject standard rather than url alphabet": "ox Base64.toBytes accepts both alphabets ('+' and '/' as well as '-' and '_')",
    "reject internal padding": "ox Base64.toBytes decodes an '=' inside the text as the value 0",
    "reject excess padding": "ox Base64.toBytes strips any number of trailing '=' before decoding",
    "reject padded to a length that is not a multiple of four": "ox Base64.toBytes strips trailing '=' without checking the padded length",
    "reject dangling character": "ox Base64.toBytes drops a lone final character (length 1 mod 4) instead of failing",
    "reject not base64 at all": "ox Base64.toBytes maps characters outside the alphabet to 0, so any text decodes",
}
for v in VECTORS["base64url"]:
    if v.get("error"):
        lenient = B64_LENIENT.get(v["name"])
        case("base64url:decode:" + v["name"], {"op": "b64decode", "encoded": v["encoded"]}, expect_error,
             lenient, observe_ok if lenient else None)
        continue

    def check_decode(r, v=v):
        expect_ok(r)
        assert r["hex"] == v.get("decodedHex", "")
    case("base64url:decode:" + v["name"], {"op": "b64decode", "encoded": v["encoded"]}, check_decode)
    if v["canonical"]:
        def check_encode(r, v=v):
            expect_ok(r)
            assert r["encoded"] == v["encoded"]
        case("base64url:encode:" + v["name"], {"op": "b64encode", "hex": v.get("decodedHex", "")}, check_encode)


# challengeHeaders: Challenge.deserialize / deserializeList, and Challenge.serialize.
def check_challenge(expected: dict):
    def check(r):
        expect_ok(r)
        assert r["challenge"] == expected
    return check


def check_challenges(expected: list[dict]):
    def check(r):
        expect_ok(r)
        assert r["challenges"] == expected
    return check


MPPX_PARAM_ORDER = ["id", "realm", "method", "intent", "request", "description", "digest", "expires", "opaque"]


def observe_mppx_param_order(r):
    observe_ok(r)
    names = re.findall(r'(?:^Payment |, )([a-z]+)="', r["header"])
    assert names == [n for n in MPPX_PARAM_ORDER if n in names], names


SERIALIZE_ORDER = ("mppx writes the parameters in the order id, realm, method, intent, request, description, "
                   "digest, expires, opaque; the vector has expires and digest before description")
for v in VECTORS["challengeHeaders"]:
    name = v["name"]
    case("challengeHeaders:deserialize:" + name, {"op": "challenge_parse", "header": v["header"]},
         check_challenge(v["parsed"]))
    case("challengeHeaders:deserializeList:" + name, {"op": "challenge_list", "header": v["header"]},
         check_challenges([v["parsed"]]))
    for where, header in (("before", L402 + ", " + v["header"]), ("after", v["header"] + ", " + L402)):
        case("challengeHeaders:deserializeList:derived+L402 %s:%s" % (where, name),
             {"op": "challenge_list", "header": header}, check_challenges([v["parsed"]]))

    def check_serialize(r, v=v):
        expect_ok(r)
        assert r["header"] == v["header"]
    order_differs = list(v["params"]) != [k for k in ("id", "realm", "method", "intent", "request", "description",
                                                       "digest", "expires", "opaque") if k in v["params"]]
    case("challengeHeaders:serialize:" + name, {"op": "challenge_serialize", "params": v["params"]},
         check_serialize, *((SERIALIZE_ORDER, observe_mppx_param_order) if order_differs else ()))

# challengeLists: Challenge.deserializeList.
NOT_JSON = ("mppx decodes each request eagerly (PaymentRequest.deserialize = JSON.parse of the base64url text) "
            "and this vector's request values ('cQ' = 'q', 'Q0hBUkdF' = 'CHARGE', 'U0VTU0lPTg' = 'SESSION') are "
            "not JSON, so Challenge.deserializeList throws for the whole header")
LIST_XFAIL = {
    "repeated parameter takes the first occurrence":
        "mppx rejects a repeated auth-param ('Duplicate parameter: id') and so the whole header, instead of "
        "taking the first occurrence",
    "an incomplete offer is skipped, not fatal":
        "mppx's Challenge.deserializeList throws on the first incomplete Payment challenge ('Missing request "
        "parameter.') instead of skipping it",
}
LIST_OBSERVED = {
    NOT_JSON: observe_error("is not valid JSON"),
    LIST_XFAIL["repeated parameter takes the first occurrence"]: observe_error("Duplicate parameter: id"),
    LIST_XFAIL["an incomplete offer is skipped, not fatal"]: observe_error("Missing request parameter."),
}
SUBSTITUTES = {raw: b64url(json.dumps({"v": base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()},
                                      separators=(",", ":")).encode())
               for raw in ("cQ", "Q0hBUkdF", "U0VTU0lPTg")}
REQUEST_VALUE = re.compile(r'(?i)(\brequest\s*=\s*"?)(%s)(?=["\s,]|$)' % "|".join(SUBSTITUTES))

for v in VECTORS["challengeLists"]:
    name = v["name"]
    request = {"op": "challenge_list", "header": v["header"]}
    if v.get("error"):
        case("challengeLists:" + name, request, expect_error)
        continue
    # mppx checks the auth-params before it decodes `request`, so these two fail on their own point first.
    reason = LIST_XFAIL.get(name, NOT_JSON)
    case("challengeLists:" + name, request, check_challenges(v["challenges"]), reason, LIST_OBSERVED[reason])
    derived = REQUEST_VALUE.sub(lambda m: m.group(1) + SUBSTITUTES[m.group(2)], v["header"])
    assert derived != v["header"], name
    expected = [{**c, "request": SUBSTITUTES[c["request"]]} for c in v["challenges"]]
    xfail = (LIST_XFAIL[name], LIST_OBSERVED[LIST_XFAIL[name]]) if name in LIST_XFAIL else ()
    case("challengeLists:derived JSON requests:" + name, {"op": "challenge_list", "header": derived},
         check_challenges(expected), *xfail)
    case("challengeLists:derived JSON requests+L402:" + name,
         {"op": "challenge_list", "header": L402 + ", " + derived + ", " + L402},
         check_challenges(expected), *xfail)

# challengeIds: Challenge.from({..., secretKey}).id and Challenge.verify.
for v in VECTORS["challengeIds"]:
    def check_id(r, v=v):
        expect_ok(r)
        assert r["id"] == v["params"]["id"]
        assert r["verifies"] is True
    not_json = v["params"]["request"] == "cQ"
    case("challengeIds:" + v["name"], {"op": "challenge_id", "params": v["params"], "secret": SECRET}, check_id,
         ("mppx binds PaymentRequest.serialize(decoded request) rather than the request text, so a request "
          "that is not base64url JSON ('cQ' = 'q') cannot be bound: Challenge.from throws") if not_json else None,
         observe_error("is not valid JSON") if not_json else None)

# credentials: Credential.deserialize and Credential.serialize.
MPPX_CREDENTIAL_ORDER = ["description", "digest", "expires", "id", "intent", "method", "realm", "opaque", "request"]


def observe_payload_missing(r):
    observe_ok(r)
    assert r["credential"]["payload"] is None, r


def observe_mppx_credential_order(r):
    observe_ok(r)
    wire = json.loads(b64url_decode(r["header"].partition(" ")[2]))
    keys = list(wire["challenge"])
    assert keys == [k for k in MPPX_CREDENTIAL_ORDER if k in keys], keys
    assert [k for k in wire if k != "challenge"] == [k for k in ("payload", "source") if k in wire], list(wire)


CREDENTIAL_ORDER = ("mppx emits the credential's challenge with the keys in its schema order (description, "
                    "digest, expires, id, intent, method, realm, opaque, request last) and `source` after "
                    "`payload`; the vector starts with id and has request before expires/description")
for v in VECTORS["credentials"]:
    name = v["name"]
    request = {"op": "credential_parse", "header": v["header"]}
    if v.get("error"):
        case("credentials:deserialize:" + name, request, expect_error)
        token = v["header"].partition(" ")[2]
        if name.startswith("reject missing "):
            # These two carry request "cQ" ('q', not JSON), which mppx refuses whatever else is wrong:
            # the derived case gives them a JSON request so that only the missing member is tested.
            wire = json.loads(b64url_decode(token))
            assert wire["challenge"]["request"] == "cQ", name
            wire["challenge"]["request"] = SUBSTITUTES["cQ"]
            derived = "Payment " + b64url(json.dumps(wire, separators=(",", ":")).encode())
            case("credentials:deserialize:derived JSON request:" + name, {"op": "credential_parse", "header": derived},
                 expect_error,
                 "mppx's Credential.deserialize does not require `payload`: it returns the credential with "
                 "payload undefined" if name == "reject missing payload" else None,
                 observe_payload_missing if name == "reject missing payload" else None)
        continue
    expected = json.loads(v["credentialJson"])

    def check_parse(r, expected=expected):
        expect_ok(r)
        assert r["credential"] == expected
    case("credentials:deserialize:" + name, request, check_parse)
    if not v["header"].startswith("Payment "):
        continue  # a vector for parsing only (e.g. the lowercased scheme token)

    def check_semantic(r, expected=expected):
        expect_ok(r)
        scheme, _, token = r["header"].partition(" ")
        assert scheme == "Payment"
        assert json.loads(b64url_decode(token)) == expected

    def check_bytes(r, v=v):
        expect_ok(r)
        assert r["header"] == v["header"]
    case("credentials:serialize-json:" + name, {"op": "credential_serialize", "credential": expected},
         check_semantic)
    case("credentials:serialize-bytes:" + name, {"op": "credential_serialize", "credential": expected},
         check_bytes, CREDENTIAL_ORDER, observe_mppx_credential_order)

# receipts: Receipt.deserialize and Receipt.serialize.
DOUBLE = ("mppx parses and writes receipts with JSON.parse/JSON.stringify, so a number above 2^53 "
          "becomes the nearest IEEE double (%s)")
NOT_A_RECEIPT = ("Receipt.deserialize validates the Payment-Receipt schema (status 'success', method, reference, "
                 "timestamp required); this need-top-up event has none of them and is rejected")
RECEIPT_PARSE_XFAIL = {
    "refund beyond the exactly representable range": DOUBLE % "9007199254740993 -> 9007199254740992",
    "largest refund an int64 can hold": DOUBLE % "9223372036854775807 -> 2^63, read back as 9223372036854776000",
    "need top-up event": NOT_A_RECEIPT,
    "need top-up beyond the safe integer range": NOT_A_RECEIPT,
}
RECEIPT_SERIALIZE_XFAIL = {
    "refund beyond the exactly representable range": DOUBLE % "written 9007199254740992",
    "largest refund an int64 can hold": DOUBLE % "written 9223372036854776000",
    "need top-up beyond the safe integer range": DOUBLE % "written 36028797018963970 and 1234567890123456800",
}
for v in VECTORS["receipts"]:
    name = v["name"]
    expected = json.loads(v["receiptJson"])

    def check_receipt(r, expected=expected):
        expect_ok(r)
        assert r["receipt"] == expected

    def check_header(r, v=v):
        expect_ok(r)
        assert r["header"] == v["header"]
    reason = RECEIPT_PARSE_XFAIL.get(name)
    case("receipts:deserialize:" + name, {"op": "receipt_parse", "header": v["header"]}, check_receipt,
         reason, None if reason is None else observe_error("ZodError") if reason == NOT_A_RECEIPT else observe_ok)
    reason = RECEIPT_SERIALIZE_XFAIL.get(name)
    case("receipts:serialize:" + name, {"op": "receipt_serialize", "json": v["receiptJson"]}, check_header,
         reason, observe_ok if reason else None)


# -- running mppx once for all cases ---------------------------------------------------------------

@pytest.fixture(scope="module")
def mppx_results() -> list[dict]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: run ./build.sh test", pytrace=False)
    if not (CLIENTS / "node_modules" / "mppx").is_dir():
        pytest.fail("tests/clients/node_modules missing mppx: run `npm ci` in tests/clients", pytrace=False)
    p = subprocess.run([node, str(SCRIPT)], input=json.dumps({"cases": [c[1] for c in CASES]}),
                       capture_output=True, text=True, cwd=str(CLIENTS), timeout=120)
    assert p.returncode == 0, "mpp_vectors.mjs failed (%s): %s" % (p.returncode, p.stderr)
    out = json.loads(p.stdout)
    versions = out["versions"]
    # The pinned version these expectations were written against; mppx must use its own ox.
    assert versions["mppx"] == MPPX_VERSION, versions
    assert versions["ox"] == versions["mppx_wants_ox"], versions
    assert len(out["results"]) == len(CASES)
    return out["results"]


def test_vector_file_is_the_expected_version():
    assert VECTORS["version"] == 1
    assert set(VECTORS) >= {"canonicalization", "base64url", "challengeHeaders", "challengeLists", "challengeIds",
                            "credentials", "receipts"}


@pytest.mark.parametrize(
    "index",
    [pytest.param(i, id=c[0], marks=[pytest.mark.xfail(strict=True, reason=c[3])] if c[3] else [])
     for i, c in enumerate(CASES)],
)
def test_mppx_matches_vector(mppx_results, index):
    check = CASES[index][2]
    check(mppx_results[index])


@pytest.mark.parametrize("index", [pytest.param(i, id=c[0]) for i, c in enumerate(CASES) if c[3]])
def test_mppx_differs_as_stated(mppx_results, index):
    """For each xfailed case: mppx does what the xfail reason says (and nothing else went wrong)."""
    observed = CASES[index][4]
    observed(mppx_results[index])
