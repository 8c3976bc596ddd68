"""Client libraries reading our challenge: lsat-js 2.0.6 and @getalby/lightning-tools 9.0.1.

The challenge carries a real BOLT11 invoice from the LND simulator and a macaroon minted by
`l402 token mint --payment-hash <the invoice's hash>`; it is written exactly as the filter writes it
(src/l402/header.rs challenge_from_base64, src/response.rs: the LSAT header first, then L402).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

AMOUNT_MSAT = 21_000
SERVICE = "weather"
SECRET = secrets.token_bytes(32)


def l402_challenge(mac_b64: str, invoice: str) -> str:
    return 'L402 macaroon="%s", invoice="%s", version="0", token="%s"' % (mac_b64, invoice, mac_b64)


def lsat_challenge(mac_b64: str, invoice: str) -> str:
    return 'LSAT macaroon="%s", invoice="%s"' % (mac_b64, invoice)


class Challenge:
    def __init__(self, invoice: dict, minted: dict):
        self.invoice = invoice["payment_request"]
        self.payment_hash = invoice["payment_hash"]
        self.minted = minted
        self.macaroon = minted["macaroon"]
        self.token_id = minted["identifier"]["token_id"]
        self.headers = {
            "L402": l402_challenge(self.macaroon, self.invoice),
            "LSAT": lsat_challenge(self.macaroon, self.invoice),
        }
        # what fetch() hands a client when both headers are sent: the values joined with ", "
        self.headers["both"] = self.headers["LSAT"] + ", " + self.headers["L402"]
        self._preimage = None

    def pay(self, lnd) -> str:
        """Pays the invoice once (as a client wallet would); returns the preimage hex."""
        if self._preimage is None:
            res = lnd.pay(self.invoice)
            assert res["payment_hash"] == self.payment_hash
            self._preimage = res["payment_preimage"]
        return self._preimage


def new_challenge(lnd, l402) -> Challenge:
    inv = lnd.create_invoice(AMOUNT_MSAT, "interop", 600)
    assert inv["payment_request"].startswith("lnbcrt210n1"), inv["payment_request"]
    minted = l402.mint(SECRET, SERVICE, capabilities=("read",), lifetime_s=3600,
                       payment_hash=bytes.fromhex(inv["payment_hash"]))
    assert minted["identifier"]["payment_hash"] == inv["payment_hash"]
    return Challenge(inv, minted)


@pytest.fixture(scope="module")
def challenge(lnd, l402) -> Challenge:
    return new_challenge(lnd, l402)


FORMS = ["L402", "LSAT", "both"]


# -- lsat-js -------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_lsat_js_reads_our_challenge(js, challenge, form):
    res = js("lsat.challenge", header=challenge.headers[form])
    assert "error" not in res, res
    assert res["baseMacaroon"] == challenge.macaroon
    assert res["invoice"] == challenge.invoice
    assert res["paymentHash"] == challenge.payment_hash          # from the invoice
    assert res["invoiceAmount"] == AMOUNT_MSAT // 1000           # satoshis
    # lsat-js' own Identifier decoding of our macaroon's identifier
    assert res["identifier"] == {"version": 0, "paymentHash": challenge.payment_hash,
                                 "tokenId": challenge.token_id}
    # Lsat.fromMacaroon(mac, invoice) checks the identifier's hash against the invoice's
    assert res["fromMacaroon"] == {"paymentHash": challenge.payment_hash,
                                   "invoiceAmount": AMOUNT_MSAT // 1000}
    assert [(c["condition"], c["value"]) for c in res["caveats"]] == [
        (k, v) for k, v in (c.split("=", 1) for c in challenge.minted["caveats"])]
    # lsat-js only knows an `expiration` caveat, not Aperture's `<service>_valid_until`
    assert res["validUntil"] == 0
    assert res["isPending"] is True


@pytest.mark.parametrize("form", FORMS)
def test_lsat_js_token_is_accepted_after_payment(js, l402, lnd, challenge, form):
    preimage = challenge.pay(lnd)
    assert hashlib.sha256(bytes.fromhex(preimage)).hexdigest() == challenge.payment_hash
    res = js("lsat.challenge", header=challenge.headers[form], preimage=preimage)
    assert "preimageError" not in res, res
    assert res["isSatisfied"] is True
    token = res["token"]
    assert token == "LSAT %s:%s" % (challenge.macaroon, preimage)
    out = l402.verify(token, SECRET, SERVICE, capabilities=("read",))
    assert out.rc == 0, out
    assert out.out["token_id"] == challenge.token_id
    out = l402.verify(token, SECRET, "maps")
    assert (out.rc, out.out["reason"]) == (1, "wrong_service"), out


def test_lsat_js_refuses_a_preimage_of_another_invoice(js, challenge):
    res = js("lsat.challenge", header=challenge.headers["L402"], preimage=secrets.token_hex(32))
    assert "did not match" in res.get("preimageError", ""), res


def test_lsat_js_notices_a_macaroon_for_another_invoice(js, lnd, l402, challenge):
    """Our macaroon bound to invoice A, served with invoice B: lsat-js' fromMacaroon refuses it."""
    other = lnd.create_invoice(AMOUNT_MSAT, "other", 600)
    res = js("lsat.challenge", header=l402_challenge(challenge.macaroon, other["payment_request"]))
    assert res["paymentHash"] == other["payment_hash"]
    assert res["identifier"]["paymentHash"] == challenge.payment_hash
    assert "did not match" in res["fromMacaroon"].get("error", ""), res


# -- @getalby/lightning-tools --------------------------------------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_alby_parse_l402_reads_our_challenge(js, challenge, form):
    res = js("alby.parse", header=challenge.headers[form])
    assert "error" not in res, res
    parsed = res["parsed"]
    assert parsed["token"] == challenge.macaroon
    assert parsed["invoice"] == challenge.invoice
    if form == "LSAT":
        # no token= parameter: parseL402 moves macaroon= to token
        assert set(parsed) == {"token", "invoice"}
    else:
        assert parsed["macaroon"] == challenge.macaroon
        assert parsed["version"] == "0"
    assert res["invoice"] == {"paymentHash": challenge.payment_hash, "millisatoshi": AMOUNT_MSAT,
                              "satoshi": AMOUNT_MSAT // 1000}


class _Gate(BaseHTTPRequestHandler):
    """A stand-in for the filter: 402 with our challenge headers until `l402 token verify` accepts."""

    def do_GET(self):
        st = self.server.state
        auth = self.headers.get("Authorization")
        st["authorizations"].append(auth)
        if auth is not None and st["verify"](auth).rc == 0:
            body = b"paid content"
            self.send_response(200)
        else:
            body = b'{"error":"payment_required"}'
            self.send_response(402)
            for value in st["challenges"]:
                self.send_header("WWW-Authenticate", value)
            self.send_header("Access-Control-Expose-Headers", "WWW-Authenticate")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("form", FORMS)
def test_alby_fetch_with_l402_pays_and_is_accepted(js, l402, lnd, form):
    c = new_challenge(lnd, l402)
    preimage = c.pay(lnd)
    challenges = {"both": [c.headers["LSAT"], c.headers["L402"]]}.get(form, [c.headers[form]])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gate)
    server.state = {"authorizations": [], "challenges": challenges,
                    "verify": lambda auth: l402.verify(auth, SECRET, SERVICE, ("read",))}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = "http://127.0.0.1:%d/weather" % server.server_address[1]
        res = js("alby.fetch", url=url, preimage=preimage)
    finally:
        server.shutdown()
        server.server_close()
    assert res["invoices"] == [c.invoice], res
    assert res["status"] == 200 and res["body"] == "paid content", res
    auths = server.state["authorizations"]
    assert auths[0] is None and len(auths) == 2, auths
    scheme = "L402" if form == "L402" else "LSAT"   # it answers in the scheme of the first challenge
    assert auths[1] == "%s %s:%s" % (scheme, c.macaroon, preimage)
    assert res["payment"]["paid"] is True and res["payment"]["amountSat"] == AMOUNT_MSAT // 1000
