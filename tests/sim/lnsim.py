#!/usr/bin/env python3
"""Lightning node simulator for tests: LND REST or Core Lightning clnrest.

Neither lnd nor lightningd can run on the test machines, so the filter is tested
against this program, which speaks their REST APIs the way the real daemons do:

* HTTPS with a self-signed certificate generated at start (DIR/tls.cert),
* the real authentication headers (``Grpc-Metadata-macaroon`` / ``Rune``),
* real encodings (LND: proto3 JSON with base64 bytes and 64-bit integers as
  strings; CLN: plain JSON, hex hashes, integer msat),
* real status codes and error bodies (grpc-gateway errors for LND, clnrest's
  RpcError objects for CLN),
* real BOLT11 invoices signed with a secp256k1 node key, whose payment hash is
  sha256 of a random preimage the node keeps secret until the invoice is paid.

Test-only endpoints (no authentication) under ``/sim/``:

* ``POST /sim/pay {"payment_request": "...", ["amount_msat": N]}`` pays an invoice
  of this node, as a client wallet would, and returns the preimage (hex).
* ``POST /sim/fault {"mode": ..., "delay_ms": N}`` switches fault injection for the
  node API (none, error500, garbage, slow, hang, reset, huge).
* ``GET /sim/stats`` and ``POST /sim/reset-stats``: counters of node API calls.

Usage::

    lnsim.py --kind lnd|cln --port P [--host 127.0.0.1] --state-dir DIR
             [--credential X] [--plain] [--network regtest|mainnet|testnet|signet]

``--port 0`` binds a free port; the port actually bound is written to DIR/ready.
Without ``--credential`` a random one is generated. The credential in force is
always written to DIR/credential.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as _dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from bolt11 import Bolt11, MilliSatoshi, Tags, TagChar
from bolt11 import encode as bolt11_encode
from bolt11.models.features import Feature, Features, FeatureState
from coincurve import PrivateKey

FAULT_MODES = ("none", "error500", "garbage", "slow", "hang", "reset", "huge")
HUGE_BODY_BYTES = 5 * 1024 * 1024
# BOLT11 tagged fields carry at most 1023 5-bit groups: 639 whole bytes.
BOLT11_FIELD_BYTE_LIMIT = 639
# Without the wumbo feature LND refuses invoices above 2^32-1 msat.
LND_MAX_PAYMENT_MSAT = 4294967295
LND_DEFAULT_EXPIRY = 86400
LND_MAX_EXPIRY = 365 * 24 * 3600
LND_CLTV_EXPIRY = 80
CLN_DEFAULT_EXPIRY = 7 * 24 * 3600
CLN_CLTV_FINAL = 18
# How long a "hang" holds a connection at most, whatever the mode does meanwhile.
HANG_LIMIT_S = 600.0

CURRENCIES = {"mainnet": "bc", "testnet": "tb", "signet": "tbs", "regtest": "bcrt"}

# grpc status code -> HTTP status, as grpc-gateway maps them.
GRPC_HTTP = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}

# CLN JSON-RPC error codes used here.
CLN_PARAM_INVALID = -32602
CLN_UNKNOWN_COMMAND = -32601
CLN_INVOICE_LABEL_ALREADY_EXISTS = 900
CLN_INVOICE_PREIMAGE_ALREADY_EXISTS = 901
CLN_RUNE_NOT_AUTHORIZED = 1501

LND_FEATURES = {
    "9": {"name": "tlv-onion", "is_required": True, "is_known": True},
    "14": {"name": "payment-addr", "is_required": True, "is_known": True},
    "17": {"name": "multi-path-payments", "is_required": False, "is_known": True},
}


class ApiError(Exception):
    """An error answered to the client: HTTP status and JSON body."""

    def __init__(self, status: int, body: dict):
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body


def grpc_error(code: int, message: str) -> ApiError:
    return ApiError(GRPC_HTTP.get(code, 500), {"code": code, "message": message, "details": []})


def cln_error(status: int, code, message: str, data=None) -> ApiError:
    return ApiError(status, {"code": code, "message": message, "data": data})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def go_hex_error(s: str) -> str | None:
    """The message Go's encoding/hex gives for a bad hex string, or None if valid."""
    for i, ch in enumerate(s):
        if ch not in "0123456789abcdefABCDEF":
            return "encoding/hex: invalid byte: U+%04X %s" % (ord(ch), repr(ch).replace('"', "'"))
    if len(s) % 2:
        return "encoding/hex: odd length hex string"
    return None


# ---------------------------------------------------------------------------
# TLS certificate


def make_tls_cert(state_dir: str) -> tuple[str, str]:
    """Self-signed ECDSA P-256 certificate for localhost/127.0.0.1, like lnd's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lnsim autogenerated cert"),
        x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
    ])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1))
        .not_valid_after(now + _dt.timedelta(days=425))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=True,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(state_dir, "tls.cert")
    key_path = os.path.join(state_dir, "tls.key")
    write_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()), mode=0o600)
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def write_file(path: str, data, mode: int = 0o644) -> None:
    """Write atomically (readers never see a partial file)."""
    if isinstance(data, str):
        data = data.encode()
    tmp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The node: invoices, payments, stats


class Invoice:
    __slots__ = (
        "preimage", "payment_hash", "payment_addr", "amount_msat", "description",
        "expiry", "created", "bolt11", "index", "label", "paid", "paid_at",
        "amount_received_msat", "settle_index", "cltv",
    )

    def expired(self, now: float | None = None) -> bool:
        if self.paid:
            return False
        return (time.time() if now is None else now) > self.created + self.expiry


class Node:
    def __init__(self, kind: str, network: str):
        self.kind = kind
        self.currency = CURRENCIES[network]
        self.key = PrivateKey()
        self.pubkey = self.key.public_key.format(compressed=True).hex()
        self.lock = threading.Lock()
        self.by_hash: dict[bytes, Invoice] = {}
        self.by_label: dict[str, Invoice] = {}
        self.next_index = 1
        self.next_settle_index = 1
        self.stats = self._zero_stats()
        self.fault_mode = "none"
        self.fault_delay_ms = 0
        self.fault_changed = threading.Condition(self.lock)
        self.stopping = False

    @staticmethod
    def _zero_stats() -> dict:
        return {
            "requests": 0,          # every call to the node API (not /sim/*)
            "invoice_create": 0,    # LND POST /v1/invoices, CLN invoice
            "invoice_lookup": 0,    # LND GET /v1/invoice/{hash}, CLN listinvoices
            "payments": 0,          # LND POST /v1/channels/transactions
            "auth_failures": 0,
            "faults_injected": 0,
            "sim_pay": 0,
        }

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    # -- invoices ---------------------------------------------------------

    def create_invoice(self, amount_msat: int, description: str, expiry: int,
                       label: str | None = None, preimage: bytes | None = None,
                       cltv: int = 18) -> Invoice:
        if preimage is None:
            preimage = secrets.token_bytes(32)
        inv = Invoice()
        inv.preimage = preimage
        inv.payment_hash = hashlib.sha256(preimage).digest()
        inv.payment_addr = secrets.token_bytes(32)
        inv.amount_msat = amount_msat
        inv.description = description
        inv.expiry = expiry
        inv.created = int(time.time())
        inv.label = label
        inv.paid = False
        inv.paid_at = 0
        inv.amount_received_msat = 0
        inv.settle_index = 0
        inv.cltv = cltv
        inv.bolt11 = self._encode(inv)
        with self.lock:
            if inv.payment_hash in self.by_hash:
                raise KeyError("hash")
            if label is not None and label in self.by_label:
                raise KeyError("label")
            inv.index = self.next_index
            self.next_index += 1
            self.by_hash[inv.payment_hash] = inv
            if label is not None:
                self.by_label[label] = inv
        return inv

    def _encode(self, inv: Invoice) -> str:
        tags = Tags()
        tags.add(TagChar.payment_hash, inv.payment_hash.hex())
        tags.add(TagChar.description, inv.description)
        tags.add(TagChar.expire_time, inv.expiry)
        tags.add(TagChar.min_final_cltv_expiry, inv.cltv)
        tags.add(TagChar.payment_secret, inv.payment_addr.hex())
        tags.add(TagChar.features, Features.from_feature_list({
            Feature.var_onion_optin: FeatureState.required,
            Feature.payment_secret: FeatureState.required,
            Feature.basic_mpp: FeatureState.supported,
        }))
        b = Bolt11(
            currency=self.currency,
            date=inv.created,
            tags=tags,
            amount_msat=MilliSatoshi(inv.amount_msat) if inv.amount_msat else None,
        )
        return bolt11_encode(b, self.key.secret.hex())

    def find_by_request(self, payment_request: str) -> Invoice | None:
        with self.lock:
            for inv in self.by_hash.values():
                if inv.bolt11 == payment_request.strip().lower():
                    return inv
        return None

    def settle(self, inv: Invoice, amount_msat: int | None) -> tuple[bool, str]:
        """Pay an invoice of this node. Returns (newly_paid, error)."""
        with self.lock:
            if inv.paid:
                return False, ""
            if inv.expired():
                return False, "invoice expired"
            amt = inv.amount_msat
            if not amt:
                if not amount_msat or amount_msat <= 0:
                    return False, "amount must be specified when paying a zero amount invoice"
                amt = amount_msat
            elif amount_msat and amount_msat != amt:
                return False, "amount must not be specified when paying a non-zero amount invoice"
            inv.paid = True
            inv.paid_at = int(time.time())
            inv.amount_received_msat = amt
            inv.settle_index = self.next_settle_index
            self.next_settle_index += 1
            return True, ""


def decode_payment_request(pr: str):
    """Decode with the bolt11 package; returns the Bolt11 object or an error string."""
    from bolt11 import decode as bolt11_decode
    try:
        return bolt11_decode(pr.strip()), ""
    except Exception as exc:  # the decoder raises many exception types
        return None, "invalid payment request: %s" % (exc.__class__.__name__ if not str(exc) else exc)


# ---------------------------------------------------------------------------
# proto3 JSON helpers (LND)

_CAMEL = re.compile(r"(?<!^)([A-Z])")


def proto_keys(body: dict) -> dict:
    """protojson accepts both the proto name and the lowerCamelCase JSON name."""
    out = {}
    for k, v in body.items():
        out[_CAMEL.sub(lambda m: "_" + m.group(1).lower(), k)] = v
    return out


def proto_int64(body: dict, name: str) -> int:
    v = body.get(name)
    if v is None:
        return 0
    if isinstance(v, bool):
        raise grpc_error(3, "proto: (line 1:1): invalid value for int64 field %s: %s" % (name, json.dumps(v)))
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        try:
            f = float(s)
            if f.is_integer():
                return int(f)
        except ValueError:
            pass
    raise grpc_error(3, "proto: (line 1:1): invalid value for int64 field %s: %s" % (name, json.dumps(v)))


def proto_string(body: dict, name: str) -> str:
    v = body.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise grpc_error(3, "proto: (line 1:1): invalid value for string field %s: %s" % (name, json.dumps(v)))
    return v


def proto_bytes(body: dict, name: str) -> bytes:
    v = body.get(name)
    if v is None or v == "":
        return b""
    if not isinstance(v, str):
        raise grpc_error(3, "proto: (line 1:1): invalid value for bytes field %s: %s" % (name, json.dumps(v)))
    s = v.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise grpc_error(3, "proto: (line 1:1): invalid value for bytes field %s: %s" % (name, json.dumps(v)))


# ---------------------------------------------------------------------------
# HTTP


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, node: Node, credential: str, ssl_ctx):
        self.node = node
        self.credential = credential
        self.ssl_ctx = ssl_ctx
        super().__init__(addr, handler)

    def get_request(self):
        sock, addr = super().get_request()
        if self.ssl_ctx is not None:
            # Handshake later, in the connection's own thread.
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, TimeoutError)):
            return
        sys.stderr.write("lnsim: error serving %s:\n%s" % (client_address, traceback.format_exc()))


class _Drop(Exception):
    """The connection was closed without an answer."""


class _Sent(Exception):
    """A response was already written: stop processing this request."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "lnsim/1"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are closed after this

    server: Server

    def setup(self):
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # quiet: errors only
        pass

    def log_error(self, fmt, *args):
        sys.stderr.write("lnsim: %s - %s\n" % (self.address_string(), fmt % args))

    # -- plumbing ---------------------------------------------------------

    def read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status: int, obj) -> None:
        self.send(status, json.dumps(obj, separators=(",", ":")).encode())

    def drop(self, rst: bool) -> None:
        """Close the connection with no response at all (TCP RST if rst).

        TLS connections get no close_notify either: the socket is simply closed.
        The descriptor is really closed once the handler's file objects are
        released, right after this request; SO_LINGER 0 turns that close into RST.
        """
        self.close_connection = True
        sock = self.connection
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass
        raise _Drop()

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except _Drop:
            self.close_connection = True
        except _Sent:
            pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_HEAD(self):
        self.dispatch("HEAD")

    # -- routing ----------------------------------------------------------

    def dispatch(self, method: str) -> None:
        node = self.server.node
        body = self.read_body()
        path = urlsplit(self.path).path
        if path.startswith("/sim/"):
            self.sim_endpoint(method, path, body)
            return
        node.count("requests")
        self.apply_fault()
        try:
            if node.kind == "lnd":
                status, obj = self.lnd(method, path, body)
            else:
                status, obj = self.cln(method, path, body)
        except ApiError as e:
            status, obj = e.status, e.body
        if self.server.node.fault_mode == "huge" and status < 300:
            obj = dict(obj)
            obj["sim_padding"] = "x" * HUGE_BODY_BYTES
        self.send_json(status, obj)

    def apply_fault(self) -> None:
        node = self.server.node
        with node.lock:
            mode, delay = node.fault_mode, node.fault_delay_ms
            if mode != "none":
                node.stats["faults_injected"] += 1
        if mode == "none" or mode == "huge":
            return
        if mode == "slow":
            time.sleep(max(0, delay) / 1000.0)
            return
        if mode == "error500":
            if node.kind == "lnd":
                err = {"code": 2, "message": "lnsim: injected failure", "details": []}
            else:
                err = {"code": -1, "message": "lnsim: injected failure", "data": None}
            self.send_json(500, err)
            raise _Sent()
        if mode == "garbage":
            self.send(200, b"<html>\x00\xff not json {{{ " + secrets.token_bytes(32) + b"\n")
            raise _Sent()
        if mode == "reset":
            self.drop(rst=True)
        if mode == "hang":
            deadline = time.monotonic() + HANG_LIMIT_S
            with node.lock:
                while node.fault_mode == "hang" and not node.stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    node.fault_changed.wait(min(left, 1.0))
            self.drop(rst=False)

    # -- /sim/* -----------------------------------------------------------

    def sim_endpoint(self, method: str, path: str, body: bytes) -> None:
        node = self.server.node
        try:
            obj = json.loads(body) if body.strip() else {}
        except ValueError:
            self.send_json(400, {"error": "body is not JSON"})
            return
        if path == "/sim/stats" and method == "GET":
            with node.lock:
                self.send_json(200, dict(node.stats, fault_mode=node.fault_mode))
        elif path == "/sim/reset-stats" and method == "POST":
            with node.lock:
                node.stats = node._zero_stats()
            self.send_json(200, {})
        elif path == "/sim/fault" and method == "POST":
            mode = obj.get("mode") if isinstance(obj, dict) else None
            if mode not in FAULT_MODES:
                self.send_json(400, {"error": "mode must be one of %s" % ", ".join(FAULT_MODES)})
                return
            delay = obj.get("delay_ms", 0)
            if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
                self.send_json(400, {"error": "delay_ms must be a non-negative integer"})
                return
            with node.lock:
                node.fault_mode, node.fault_delay_ms = mode, delay
                node.fault_changed.notify_all()
            self.send_json(200, {"mode": mode, "delay_ms": delay})
        elif path == "/sim/info" and method == "GET":
            self.send_json(200, {"kind": node.kind, "pubkey": node.pubkey,
                                 "currency": node.currency})
        elif path == "/sim/pay" and method == "POST":
            node.count("sim_pay")
            if not isinstance(obj, dict) or not isinstance(obj.get("payment_request"), str):
                self.send_json(400, {"error": "payment_request (string) is required"})
                return
            amt = obj.get("amount_msat")
            if amt is not None and (not isinstance(amt, int) or isinstance(amt, bool) or amt <= 0):
                self.send_json(400, {"error": "amount_msat must be a positive integer"})
                return
            status, res = self.pay(obj["payment_request"], amt, idempotent=True)
            self.send_json(status, res)
        else:
            self.send_json(404, {"error": "no such simulator endpoint: %s %s" % (method, path)})

    def pay(self, pr: str, amount_msat, idempotent: bool):
        """Pay an invoice of this node. Returns (http status, body)."""
        node = self.server.node
        decoded, err = decode_payment_request(pr)
        if decoded is None:
            return 400, {"error": err}
        with node.lock:
            inv = node.by_hash.get(bytes.fromhex(decoded.payment_hash))
        if inv is None or inv.bolt11 != pr.strip().lower():
            return 404, {"error": "unknown invoice: no invoice of this node has payment hash %s"
                         % decoded.payment_hash}
        newly, err = node.settle(inv, amount_msat)
        if err:
            status = 410 if err == "invoice expired" else 400
            return status, {"error": err, "payment_hash": inv.payment_hash.hex()}
        if not newly and not idempotent:
            return 409, {"error": "invoice is already paid"}
        return 200, {"payment_preimage": inv.preimage.hex(),
                     "payment_hash": inv.payment_hash.hex(),
                     "amount_msat": inv.amount_received_msat}

    # -- LND REST ---------------------------------------------------------

    def lnd_auth(self) -> None:
        node = self.server.node
        values = self.headers.get_all("Grpc-Metadata-macaroon") or []
        if len(values) != 1:
            node.count("auth_failures")
            raise grpc_error(2, "expected 1 macaroon, got %d" % len(values))
        mac = values[0].strip()
        bad_hex = go_hex_error(mac)
        if bad_hex:
            node.count("auth_failures")
            raise grpc_error(2, bad_hex)
        if mac.lower() != self.server.credential.lower():
            node.count("auth_failures")
            raise grpc_error(2, "verification failed: signature mismatch after caveat verification")

    def lnd_body(self, body: bytes) -> dict:
        if not body.strip():
            return {}
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise grpc_error(3, "proto: syntax error (line 1:1): unexpected token")
        if not isinstance(obj, dict):
            raise grpc_error(3, "proto: syntax error (line 1:1): unexpected token %s" % json.dumps(obj)[:20])
        return proto_keys(obj)

    def lnd(self, method: str, path: str, body: bytes):
        node = self.server.node
        if path == "/v1/invoices":
            if method != "POST" and method != "GET":
                raise grpc_error(12, "Method Not Allowed")
            if method == "GET":
                raise grpc_error(12, "lnsim: ListInvoices is not simulated")
            req = self.lnd_body(body)
            node.count("invoice_create")
            self.lnd_auth()
            return 200, self.lnd_add_invoice(req)
        m = re.fullmatch(r"/v1/invoice/([^/]+)", path)
        if m:
            if method != "GET":
                raise grpc_error(12, "Method Not Allowed")
            node.count("invoice_lookup")
            self.lnd_auth()
            return 200, self.lnd_lookup(unquote(m.group(1)))
        if path == "/v1/channels/transactions":
            if method != "POST":
                raise grpc_error(12, "Method Not Allowed")
            req = self.lnd_body(body)
            node.count("payments")
            self.lnd_auth()
            return 200, self.lnd_send_payment_sync(req)
        if path == "/v1/getinfo" and method == "GET":
            self.lnd_auth()
            return 200, {"identity_pubkey": node.pubkey, "alias": "lnsim", "synced_to_chain": True,
                         "num_active_channels": 1, "version": "0.18.5-beta lnsim"}
        raise grpc_error(5, "Not Found")

    def lnd_add_invoice(self, req: dict) -> dict:
        node = self.server.node
        value = proto_int64(req, "value")
        value_msat = proto_int64(req, "value_msat")
        memo = proto_string(req, "memo")
        expiry = proto_int64(req, "expiry")
        preimage = proto_bytes(req, "r_preimage")
        if value != 0 and value_msat != 0:
            raise grpc_error(2, "sat and msat arguments are mutually exclusive")
        if value < 0 or value_msat < 0:
            raise grpc_error(2, "amount cannot be negative")
        amount_msat = value * 1000 if value else value_msat
        if amount_msat > LND_MAX_PAYMENT_MSAT:
            raise grpc_error(2, "payment of %d mSAT is too large, max payment allowed is %.8f BTC"
                             % (amount_msat, LND_MAX_PAYMENT_MSAT // 1000 / 1e8))
        if len(memo.encode()) > BOLT11_FIELD_BYTE_LIMIT:
            raise grpc_error(2, "memo too large: %d bytes (maxsize=%d)"
                             % (len(memo.encode()), BOLT11_FIELD_BYTE_LIMIT))
        if expiry < 0:
            raise grpc_error(2, "expiry must be non-negative")
        if expiry > LND_MAX_EXPIRY:
            raise grpc_error(2, "expiry of %d seconds greater than max of %d" % (expiry, LND_MAX_EXPIRY))
        if preimage and len(preimage) != 32:
            raise grpc_error(2, "payment preimage must be exactly 32 bytes, is instead %d" % len(preimage))
        try:
            inv = node.create_invoice(amount_msat, memo, expiry or LND_DEFAULT_EXPIRY,
                                      preimage=preimage or None, cltv=LND_CLTV_EXPIRY)
        except KeyError:
            raise grpc_error(2, "invoice with payment hash already exists")
        return {
            "r_hash": b64(inv.payment_hash),
            "payment_request": inv.bolt11,
            "add_index": str(inv.index),
            "payment_addr": b64(inv.payment_addr),
        }

    def lnd_lookup(self, r_hash_str: str) -> dict:
        node = self.server.node
        bad = go_hex_error(r_hash_str)
        if bad:
            raise grpc_error(2, bad)
        rhash = bytes.fromhex(r_hash_str)
        if len(rhash) != 32:
            raise grpc_error(2, "payment hash must be exactly 32 bytes, is instead %d" % len(rhash))
        with node.lock:
            inv = node.by_hash.get(rhash)
            empty = not node.by_hash
        if inv is None:
            raise grpc_error(5, "there are no existing invoices" if empty else "unable to locate invoice")
        return self.lnd_invoice_json(inv)

    def lnd_invoice_json(self, inv: Invoice) -> dict:
        if inv.paid:
            state = "SETTLED"
        elif inv.expired():
            state = "CANCELED"
        else:
            state = "OPEN"
        paid_msat = inv.amount_received_msat if inv.paid else 0
        htlcs = []
        if inv.paid:
            htlcs.append({
                "chan_id": "128642860515328",
                "htlc_index": str(inv.settle_index - 1),
                "amt_msat": str(paid_msat),
                "accept_height": 150,
                "accept_time": str(inv.paid_at),
                "resolve_time": str(inv.paid_at),
                "expiry_height": 150 + inv.cltv,
                "state": "SETTLED",
                "custom_records": {},
                "mpp_total_amt_msat": str(paid_msat),
                "amp": None,
                "custom_channel_data": "",
            })
        return {
            "memo": inv.description,
            "r_preimage": b64(inv.preimage),
            "r_hash": b64(inv.payment_hash),
            "value": str(inv.amount_msat // 1000),
            "value_msat": str(inv.amount_msat),
            "settled": inv.paid,
            "creation_date": str(inv.created),
            "settle_date": str(inv.paid_at if inv.paid else 0),
            "payment_request": inv.bolt11,
            "description_hash": "",
            "expiry": str(inv.expiry),
            "fallback_addr": "",
            "cltv_expiry": str(inv.cltv),
            "route_hints": [],
            "private": False,
            "add_index": str(inv.index),
            "settle_index": str(inv.settle_index),
            "amt_paid": str(paid_msat),
            "amt_paid_sat": str(paid_msat // 1000),
            "amt_paid_msat": str(paid_msat),
            "state": state,
            "htlcs": htlcs,
            "features": LND_FEATURES,
            "is_keysend": False,
            "payment_addr": b64(inv.payment_addr),
            "is_amp": False,
            "amp_invoice_state": {},
            "is_blinded": False,
            "blinded_path_config": None,
        }

    def lnd_send_payment_sync(self, req: dict) -> dict:
        """SendPaymentSync: errors while paying come back in payment_error (HTTP 200)."""
        node = self.server.node
        pr = proto_string(req, "payment_request")
        amt = proto_int64(req, "amt")
        amt_msat = proto_int64(req, "amt_msat")
        if not pr:
            raise grpc_error(2, "payment hash must be exactly 32 bytes, is instead 0")
        decoded, err = decode_payment_request(pr)
        if decoded is None:
            raise grpc_error(2, err)
        if decoded.has_expired():
            raise grpc_error(2, "invoice expired. Valid until %s" % time.strftime(
                "%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(decoded.expiry_time)))
        phash = bytes.fromhex(decoded.payment_hash)
        empty = {"payment_error": "", "payment_preimage": "", "payment_route": None,
                 "payment_hash": b64(phash)}
        with node.lock:
            inv = node.by_hash.get(phash)
        if inv is None or inv.bolt11 != pr.strip().lower():
            return dict(empty, payment_error="unable to find a path to destination")
        if inv.paid:
            return dict(empty, payment_error="invoice is already paid")
        want = amt * 1000 if amt else amt_msat
        _, err = node.settle(inv, want or None)
        if err:
            if err == "invoice expired":
                raise grpc_error(2, "invoice expired")
            raise grpc_error(2, err)
        paid = inv.amount_received_msat
        return {
            "payment_error": "",
            "payment_preimage": b64(inv.preimage),
            "payment_route": {
                "total_time_lock": 150 + inv.cltv,
                "total_fees": "0",
                "total_amt": str(paid // 1000),
                "hops": [],
                "total_fees_msat": "0",
                "total_amt_msat": str(paid),
                "first_hop_amount_msat": str(paid),
                "custom_channel_data": "",
            },
            "payment_hash": b64(inv.payment_hash),
        }

    # -- CLN clnrest ------------------------------------------------------

    def cln_auth(self, method_name: str) -> None:
        node = self.server.node
        rune = self.headers.get("Rune")
        if rune is None:
            node.count("auth_failures")
            raise cln_error(403, CLN_RUNE_NOT_AUTHORIZED, "Not authorized: Missing rune")
        if rune != self.server.credential:
            node.count("auth_failures")
            raise cln_error(401, CLN_RUNE_NOT_AUTHORIZED, "Not authorized: Not derived from master")

    @staticmethod
    def cln_params(body: bytes):
        """clnrest: JSON body, else form-encoded pairs; null members are dropped."""
        try:
            params = json.loads(body) if body.strip() else {}
        except (ValueError, UnicodeDecodeError):
            params = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if isinstance(params, dict):
            params = {k: v for k, v in params.items() if v is not None}
        return params

    def cln(self, method: str, path: str, body: bytes):
        node = self.server.node
        m = re.fullmatch(r"/v1/([^/]+)", path)
        if not m or method not in ("GET", "POST"):
            if method in ("GET", "POST") and path.startswith("/v1/"):
                raise cln_error(404, CLN_UNKNOWN_COMMAND, "Path not registered")
            self.send(404, b"", content_type="text/plain")
            raise _Sent()
        rpc = m.group(1)
        params = self.cln_params(body) if method == "POST" else {}
        if rpc == "invoice":
            node.count("invoice_create")
        elif rpc == "listinvoices":
            node.count("invoice_lookup")
        self.cln_auth(rpc)
        if not isinstance(params, dict):
            raise cln_error(500, CLN_PARAM_INVALID, "lnsim: only named (object) params are simulated")
        if rpc == "invoice":
            return 201, self.cln_invoice(params)
        if rpc == "listinvoices":
            return 201, self.cln_listinvoices(params)
        if rpc == "getinfo":
            return 201, {"id": node.pubkey, "alias": "lnsim", "version": "v24.11-lnsim",
                         "network": {"bc": "bitcoin", "tb": "testnet", "tbs": "signet",
                                     "bcrt": "regtest"}[node.currency]}
        raise cln_error(404, CLN_UNKNOWN_COMMAND, "Unknown command '%s'" % rpc)

    @staticmethod
    def badparam(name: str, why: str, value) -> ApiError:
        return cln_error(500, CLN_PARAM_INVALID,
                         "%s: %s: invalid token '%s'" % (name, why, json.dumps(value)))

    @staticmethod
    def cln_msat(name: str, v, allow_any: bool):
        if allow_any and v == "any":
            return 0
        if isinstance(v, bool):
            raise Handler.badparam(name, "should be positive msat or 'any'", v)
        if isinstance(v, int) and v > 0:
            return v
        if isinstance(v, str):
            m = re.fullmatch(r"(\d+)(msat|sat)?", v)
            if m and int(m.group(1)) > 0:
                return int(m.group(1)) * (1000 if m.group(2) == "sat" else 1)
            m = re.fullmatch(r"(\d+)\.(\d{1,11})btc", v)
            if m:
                msat = int(m.group(1)) * 10**11 + int(m.group(2).ljust(11, "0"))
                if msat > 0:
                    return msat
        raise Handler.badparam(name, "should be positive msat or 'any'", v)

    def cln_invoice(self, params: dict) -> dict:
        node = self.server.node
        for name in ("amount_msat", "label", "description"):
            if name not in params:
                raise cln_error(500, CLN_PARAM_INVALID, "missing required parameter: %s" % name)
        amount_msat = self.cln_msat("amount_msat", params["amount_msat"], allow_any=True)
        label = params["label"]
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            raise self.badparam("label", "should be a string or a number", label)
        label = label if isinstance(label, str) else json.dumps(label)
        desc = params["description"]
        if not isinstance(desc, str):
            raise self.badparam("description", "should be a string", desc)
        expiry = params.get("expiry", CLN_DEFAULT_EXPIRY)
        if isinstance(expiry, str) and expiry.isdigit():
            expiry = int(expiry)
        if isinstance(expiry, bool) or not isinstance(expiry, int) or expiry < 0:
            raise self.badparam("expiry", "should be an unsigned 64 bit integer", params.get("expiry"))
        preimage = None
        if "preimage" in params:
            p = params["preimage"]
            if not isinstance(p, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", p):
                raise self.badparam("preimage", "should be a 32 byte hex value", p)
            preimage = bytes.fromhex(p)
        if len(desc.encode()) > BOLT11_FIELD_BYTE_LIMIT:
            raise cln_error(500, CLN_PARAM_INVALID,
                            "Descriptions greater than %d bytes not yet supported "
                            "(description length %d)" % (BOLT11_FIELD_BYTE_LIMIT, len(desc.encode())))
        with node.lock:
            if label in node.by_label:
                raise cln_error(500, CLN_INVOICE_LABEL_ALREADY_EXISTS, "Duplicate label '%s'" % label)
        try:
            inv = node.create_invoice(amount_msat, desc, expiry, label=label,
                                      preimage=preimage, cltv=CLN_CLTV_FINAL)
        except KeyError as e:
            if e.args[0] == "label":
                raise cln_error(500, CLN_INVOICE_LABEL_ALREADY_EXISTS, "Duplicate label '%s'" % label)
            raise cln_error(500, CLN_INVOICE_PREIMAGE_ALREADY_EXISTS, "preimage already used")
        return {
            "payment_hash": inv.payment_hash.hex(),
            "expires_at": inv.created + inv.expiry,
            "bolt11": inv.bolt11,
            "payment_secret": inv.payment_addr.hex(),
            "created_index": inv.index,
        }

    def cln_listinvoices(self, params: dict) -> dict:
        node = self.server.node
        given = [k for k in ("label", "invstring", "payment_hash", "offer_id") if k in params]
        if len(given) > 1:
            raise cln_error(500, CLN_PARAM_INVALID,
                            "Can only specify one of {label}, {invstring}, {payment_hash} or {offer_id}")
        with node.lock:
            if "label" in params:
                label = params["label"]
                if isinstance(label, bool) or not isinstance(label, (str, int, float)):
                    raise self.badparam("label", "should be a string or a number", label)
                label = label if isinstance(label, str) else json.dumps(label)
                invs = [node.by_label[label]] if label in node.by_label else []
            elif "payment_hash" in params:
                ph = params["payment_hash"]
                if not isinstance(ph, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", ph):
                    raise self.badparam("payment_hash", "should be a 32 byte hex value", ph)
                inv = node.by_hash.get(bytes.fromhex(ph))
                invs = [inv] if inv is not None and inv.label is not None else []
            elif "invstring" in params:
                s = params["invstring"]
                invs = [i for i in node.by_hash.values()
                        if isinstance(s, str) and i.bolt11 == s.strip().lower()]
            elif "offer_id" in params:
                invs = []
            else:
                invs = sorted(node.by_hash.values(), key=lambda i: i.index)
        return {"invoices": [self.cln_invoice_json(i) for i in invs]}

    @staticmethod
    def cln_invoice_json(inv: Invoice) -> dict:
        status = "paid" if inv.paid else ("expired" if inv.expired() else "unpaid")
        out = {"label": inv.label, "bolt11": inv.bolt11, "payment_hash": inv.payment_hash.hex()}
        if inv.amount_msat:
            out["amount_msat"] = inv.amount_msat
        out["status"] = status
        if inv.paid:
            out["pay_index"] = inv.settle_index
            out["amount_received_msat"] = inv.amount_received_msat
            out["paid_at"] = inv.paid_at
            out["payment_preimage"] = inv.preimage.hex()
        out["description"] = inv.description
        out["expires_at"] = inv.created + inv.expiry
        out["created_index"] = inv.index
        if inv.paid:
            out["updated_index"] = inv.settle_index
        return out


# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("lnd", "cln"), required=True)
    ap.add_argument("--port", type=int, required=True, help="0 binds a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--credential", help="LND: macaroon hex; CLN: rune. Random if absent.")
    ap.add_argument("--plain", action="store_true", help="serve plain HTTP instead of HTTPS")
    ap.add_argument("--network", choices=sorted(CURRENCIES), default="regtest")
    args = ap.parse_args(argv)

    os.makedirs(args.state_dir, exist_ok=True)
    ready_path = os.path.join(args.state_dir, "ready")
    if os.path.exists(ready_path):
        os.unlink(ready_path)

    credential = args.credential
    if not credential:
        if args.kind == "lnd":
            credential = secrets.token_bytes(96).hex()
        else:
            credential = base64.urlsafe_b64encode(secrets.token_bytes(40)).decode()
    if args.kind == "lnd" and go_hex_error(credential):
        ap.error("an LND credential (macaroon) must be hex")
    write_file(os.path.join(args.state_dir, "credential"), credential, mode=0o600)

    ssl_ctx = None
    if not args.plain:
        cert_path, key_path = make_tls_cert(args.state_dir)
        ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_ctx.load_cert_chain(cert_path, key_path)
        ssl_ctx.set_alpn_protocols(["http/1.1"])

    node = Node(args.kind, args.network)
    Server.address_family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    httpd = Server((args.host, args.port), Handler, node, credential, ssl_ctx)
    port = httpd.server_address[1]
    write_file(os.path.join(args.state_dir, "node.json"), json.dumps(
        {"kind": args.kind, "pubkey": node.pubkey, "port": port, "tls": not args.plain}))

    def on_term(signum, frame):
        with node.lock:
            node.stopping = True
            node.fault_changed.notify_all()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    write_file(ready_path, "%d\n" % port)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        try:
            os.unlink(ready_path)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
