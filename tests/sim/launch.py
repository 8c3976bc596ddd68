"""Start and drive the Lightning node simulator (tests/sim/lnsim.py) from tests.

Standard library only, so any test can use it::

    from tests.sim.launch import start_sim   # or: sys.path + `from launch import start_sim`

    sim = start_sim("lnd", tmp_path / "lnd", credential="0201036c6e64")
    status, body = sim.request("POST", "/v1/invoices", {"value": "10", "memo": "x"})
    sim.pay(body["payment_request"])          # -> {"payment_preimage": hex, "payment_hash": hex}
    sim.set_fault("hang")
    sim.stats()                               # counters of node API calls
    sim.stop()
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

LNSIM = Path(__file__).resolve().with_name("lnsim.py")


class Sim:
    """A running simulator process."""

    def __init__(self, kind: str, state_dir: Path, proc: subprocess.Popen, host: str,
                 port: int, credential: str, tls: bool):
        self.kind = kind
        self.state_dir = state_dir
        self.proc = proc
        self.host = host
        self.port = port
        self.credential = credential
        self.tls = tls
        self.cert_path = str(state_dir / "tls.cert") if tls else None
        scheme = "https" if tls else "http"
        self.url = "%s://%s:%d" % (scheme, host, port)

    # -- auth ---------------------------------------------------------------

    @property
    def auth_header(self) -> tuple[str, str]:
        """(name, value) of the header the real node authenticates with."""
        if self.kind == "lnd":
            return ("Grpc-Metadata-macaroon", self.credential)
        return ("Rune", self.credential)

    def auth_headers(self) -> dict:
        name, value = self.auth_header
        return {name: value}

    # -- HTTP ---------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.cert_path)
        return ctx

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        if self.tls:
            # Connect to the IP but verify the certificate for "localhost"'s SAN set,
            # which includes 127.0.0.1 as an IP SAN.
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.ssl_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def raw_request(self, method: str, path: str, body: bytes | None = None,
                    headers: dict | None = None, timeout: float = 10.0):
        """Send one request; returns (status, headers dict, raw body bytes)."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                auth: bool = True, timeout: float = 10.0):
        """JSON request to the node API; returns (status, parsed JSON body).

        The auth header is added unless auth=False; `headers` override it.
        """
        h = {"Content-Type": "application/json"}
        if auth:
            h.update(self.auth_headers())
        h.update(headers or {})
        data = None if body is None else json.dumps(body).encode()
        status, _, raw = self.raw_request(method, path, data, h, timeout)
        return status, json.loads(raw) if raw else None

    # -- node operations (as the filter would do them) -----------------------

    def create_invoice(self, amount_msat: int, memo: str = "", expiry: int | None = None,
                       label: str | None = None) -> dict:
        """Create an invoice the node's own way.

        Returns {"payment_hash": hex, "payment_request": bolt11, "raw": response}.
        """
        if self.kind == "lnd":
            req = {"value_msat": str(amount_msat), "memo": memo}
            if expiry is not None:
                req["expiry"] = str(expiry)
            status, body = self.request("POST", "/v1/invoices", req)
            if status != 200:
                raise RuntimeError("create invoice failed: %s %s" % (status, body))
            import base64
            return {"payment_hash": base64.b64decode(body["r_hash"]).hex(),
                    "payment_request": body["payment_request"], "raw": body}
        req = {"amount_msat": amount_msat, "label": label or secrets.token_hex(16),
               "description": memo}
        if expiry is not None:
            req["expiry"] = expiry
        status, body = self.request("POST", "/v1/invoice", req)
        if status != 201:
            raise RuntimeError("create invoice failed: %s %s" % (status, body))
        return {"payment_hash": body["payment_hash"], "payment_request": body["bolt11"],
                "raw": body}

    def lookup_invoice(self, payment_hash_hex: str):
        """(status, body) of the node's own lookup call."""
        if self.kind == "lnd":
            return self.request("GET", "/v1/invoice/" + payment_hash_hex)
        return self.request("POST", "/v1/listinvoices", {"payment_hash": payment_hash_hex})

    # -- simulator controls -------------------------------------------------

    def sim(self, method: str, path: str, body=None, timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        status, _, raw = self.raw_request(method, path, data,
                                          {"Content-Type": "application/json"}, timeout)
        return status, json.loads(raw) if raw else None

    def pay(self, payment_request: str, amount_msat: int | None = None) -> dict:
        """Pay an invoice as a client wallet; returns {"payment_preimage", "payment_hash"} (hex).

        Raises RuntimeError (with the status and error) if the payment fails.
        """
        body = {"payment_request": payment_request}
        if amount_msat is not None:
            body["amount_msat"] = amount_msat
        status, res = self.sim("POST", "/sim/pay", body)
        if status != 200:
            raise RuntimeError("payment failed: %s %s" % (status, res))
        return res

    def try_pay(self, payment_request: str, amount_msat: int | None = None):
        """Like pay() but returns (status, body) instead of raising."""
        body = {"payment_request": payment_request}
        if amount_msat is not None:
            body["amount_msat"] = amount_msat
        return self.sim("POST", "/sim/pay", body)

    def set_fault(self, mode: str, delay_ms: int = 0) -> None:
        status, res = self.sim("POST", "/sim/fault", {"mode": mode, "delay_ms": delay_ms})
        if status != 200:
            raise RuntimeError("set_fault failed: %s %s" % (status, res))

    def stats(self) -> dict:
        return self.sim("GET", "/sim/stats")[1]

    def reset_stats(self) -> None:
        self.sim("POST", "/sim/reset-stats", {})

    # -- lifecycle ----------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if needed. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def stderr_text(self) -> str:
        """What the simulator wrote to stderr so far (only after stop())."""
        path = self.state_dir / "stderr.log"
        return path.read_text() if path.exists() else ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_sim(kind: str, state_dir, credential: str | None = None, plain: bool = False,
              host: str = "127.0.0.1", port: int = 0, python: str | None = None,
              network: str = "regtest", timeout: float = 20.0) -> Sim:
    """Start lnsim.py and wait until it listens.

    kind: "lnd" or "cln". state_dir: created if missing; receives tls.cert, ready,
    credential, node.json and stderr.log. credential: LND macaroon hex / CLN rune
    (random if None; read it back from Sim.credential). port 0 picks a free port.
    python: interpreter with bolt11, bitstring<5 and cryptography (default: this one).
    """
    if kind not in ("lnd", "cln"):
        raise ValueError("kind must be lnd or cln")
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir / "ready"
    if ready.exists():
        ready.unlink()
    cmd = [python or sys.executable, str(LNSIM), "--kind", kind, "--port", str(port),
           "--host", host, "--state-dir", str(state_dir), "--network", network]
    if credential:
        cmd += ["--credential", credential]
    if plain:
        cmd.append("--plain")
    err = open(state_dir / "stderr.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=err, close_fds=True)
    err.close()
    deadline = time.monotonic() + timeout
    while True:
        if ready.exists():
            text = ready.read_text().strip()
            if text:
                break
        if proc.poll() is not None:
            raise RuntimeError("lnsim exited with %s: %s" % (
                proc.returncode, (state_dir / "stderr.log").read_text()[-4000:]))
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("lnsim did not become ready in %.0f s" % timeout)
        time.sleep(0.02)
    cred = (state_dir / "credential").read_text()
    return Sim(kind, state_dir, proc, host, int(text), cred, not plain)
