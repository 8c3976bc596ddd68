"""Shared pieces of the hardening tests (test_adversarial.py, test_metrics.py, test_soak.py and
scripts/soak.py): a gateway (real Envoy + l402.wasm) in front of the LND simulator over TLS, a
recording upstream that keeps every header copy, tokens minted independently with pymacaroons, a
small V2 macaroon codec for byte-level tampering, and raw HTTP/1.1 requests (repeated headers,
non-UTF-8 bytes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from pymacaroons import MACAROON_V2, Macaroon
from pymacaroons.serializers.binary_serializer import BinarySerializer

sys.path.insert(0, str(Path(__file__).resolve().parent))

import upstream as _upstream_module  # noqa: E402
from harness import ROOT, Envoy, _tmpdir, http  # noqa: E402
from test_filter_nodes import new_credential, sim_env, sim_vars  # noqa: E402
from test_filter_support import (  # noqa: E402
    challenge_parts, credential_valid, new_secret, plugin_config, render, shipped, with_plugin_config,
)
from upstream import Upstream  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "sim"))
from launch import Sim, start_sim  # noqa: E402

LOCATION = "lsat"
GATEWAY_HEADERS = ("x-l402-token-id", "x-l402-service", "x-l402-price-msat")

# -- a recording upstream that keeps every copy of every header ----------------------------------


class RecordingUpstream(Upstream):
    """tests/e2e/upstream.py's Upstream; each log entry also has ``header_list``: every header line
    as received, in order (``headers`` keeps only the last copy of a repeated name)."""

    _local = threading.local()

    def _record(self, entry: dict[str, Any]) -> None:
        entry["header_list"] = getattr(self._local, "headers", None) or list(entry["headers"].items())
        super()._record(entry)

    def start(self) -> "RecordingUpstream":
        local = self._local
        base = _upstream_module._service_handler(self)

        class Handler(base):  # type: ignore[misc, valid-type]
            def _handle(self) -> None:
                local.headers = [(k.lower(), v) for k, v in self.headers.items()]
                try:
                    base._handle(self)
                finally:
                    local.headers = None

        for m in _upstream_module.METHODS:
            setattr(Handler, f"do_{m}", Handler._handle)
        for port, handler in ((self.port, Handler), (self.control_port, _upstream_module._control_handler(self))):
            srv = _upstream_module._Server((self.host, port), handler)
            t = threading.Thread(target=srv.serve_forever, name=f"upstream-{port}", daemon=True)
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        return self


# -- tokens minted independently (pymacaroons + the published key derivation) --------------------


def root_key(secret_hex: str, identifier: bytes) -> bytes:
    return hmac.new(bytes.fromhex(secret_hex), identifier, hashlib.sha256).digest()


def identifier(payment_hash: bytes, token_id: bytes | None = None, version: int = 0) -> bytes:
    return version.to_bytes(2, "big") + payment_hash + (token_id or secrets.token_bytes(32))


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def raw_of(mac: Macaroon) -> bytes:
    return BinarySerializer().serialize_raw(mac)


def mac_of(raw: bytes) -> Macaroon:
    return BinarySerializer().deserialize_raw(raw)


def py_mint(secret_hex: str, caveats: Iterable[str], *, preimage: bytes | None = None, version: int = 0,
            location: str = LOCATION, ident: bytes | None = None) -> tuple[Macaroon, bytes]:
    """A macaroon the way the gateway mints one (or with the given oddities); returns it and its
    preimage."""
    preimage = preimage if preimage is not None else secrets.token_bytes(32)
    ident = ident if ident is not None else identifier(hashlib.sha256(preimage).digest(), version=version)
    m = Macaroon(location=location, identifier=ident, key=root_key(secret_hex, ident), version=MACAROON_V2)
    for c in caveats:
        m.add_first_party_caveat(c)
    return m, preimage


def credential(raw: bytes | Macaroon, preimage: bytes, scheme: str = "L402") -> str:
    if isinstance(raw, Macaroon):
        raw = raw_of(raw)
    return f"{scheme} {b64(raw)}:{preimage.hex()}"


def split(cred: str) -> tuple[str, bytes, bytes]:
    """``L402 <b64>:<hex>`` → (scheme, macaroon bytes, preimage)."""
    scheme, _, rest = cred.partition(" ")
    mac, _, pre = rest.rpartition(":")
    return scheme, base64.b64decode(mac + "=" * (-len(mac) % 4)), bytes.fromhex(pre)


def extend(cred: str, *caveats: str) -> str:
    """A holder appends first-party caveats to a real token: the signature chain stays valid."""
    scheme, raw, pre = split(cred)
    m = mac_of(raw)
    for c in caveats:
        m.add_first_party_caveat(c)
    return credential(m, pre, scheme)


def token_id(cred: str) -> str:
    return mac_of(split(cred)[1]).identifier_bytes[34:66].hex()


# -- V2 binary fields, for byte-level tampering -----------------------------------------------------


def v2_fields(raw: bytes) -> list[tuple[str, int, int]]:
    """(name, start, end) of the value bytes of each field of a V2 macaroon, plus the tag/varint
    bytes as ``tag`` entries. Names: location, identifier, caveat<i>, signature."""
    out: list[tuple[str, int, int]] = [("version", 0, 1)]
    i, section, caveat = 1, "header", 0
    while i < len(raw):
        tag = raw[i]
        if tag == 0:
            out.append(("eos", i, i + 1))
            i += 1
            if section == "header":
                section = "caveats"
            elif section == "caveats" and i < len(raw) and raw[i] == 0:
                out.append(("eos", i, i + 1))
                i += 1
                section = "sig"
            elif section == "caveats":
                caveat += 1
            continue
        n, j, shift = 0, i + 1, 0
        while True:
            b = raw[j]
            n |= (b & 0x7F) << shift
            j += 1
            shift += 7
            if not b & 0x80:
                break
        out.append(("tag", i, j))
        name = {1: "location", 2: "identifier" if section == "header" else f"caveat{caveat}", 4: "vid",
                6: "signature"}.get(tag, f"tag{tag}")
        out.append((name, j, j + n))
        i = j + n
    return out


def field(raw: bytes, name: str) -> tuple[int, int]:
    for n, a, b in v2_fields(raw):
        if n == name:
            return a, b
    raise KeyError(name)


def flip(raw: bytes, byte: int, bit: int) -> bytes:
    out = bytearray(raw)
    out[byte] ^= 1 << bit
    return bytes(out)


# -- raw HTTP/1.1 -----------------------------------------------------------------------------------


def raw_request(port: int, method: str, path: str, headers: list[tuple[bytes | str, bytes | str]],
                timeout: float = 10.0, host: str = "127.0.0.1") -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 request written byte for byte (repeated headers, any bytes in a value or the
    path); returns (status, headers, body). Status 0 means Envoy closed the connection without
    answering."""
    def enc(x: bytes | str) -> bytes:
        return x if isinstance(x, bytes) else x.encode("latin-1")

    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}".encode(), b"Connection: close"]
    lines += [enc(k) + b": " + enc(v) for k, v in headers]
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        resp = b""
        while not _complete(resp):
            try:
                c = s.recv(65536)
            except ConnectionResetError:
                break
            if not c:
                break
            resp += c
    if not resp:
        return 0, [], b""
    head, _, body = resp.partition(b"\r\n\r\n")
    first, *rest = head.decode("latin-1").split("\r\n")
    status = int(first.split(" ")[1])
    hdrs = [(k.strip().lower(), v.strip()) for k, _, v in (l.partition(":") for l in rest)]
    return status, hdrs, body


def _complete(resp: bytes) -> bool:
    """A whole response with a Content-Length: done without waiting for Envoy to close (it delays
    the close of a connection it answered locally)."""
    head, sep, body = resp.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return bool(sep and length and len(body) >= int(length.group(1)))


# -- the gateway ------------------------------------------------------------------------------------

PRICES_SAT = {"weather": 10, "admin": 50, "files": 5}

ROUTES: list[dict[str, Any]] = [
    {"match": {"path_prefix": "/health"}, "free": True},
    {"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "lifetime_s": 3600},
    {"match": {"path_prefix": "/admin/"}, "service": "admin", "price_sat": 50, "lifetime_s": 3600,
     "capabilities": ["admin"]},
    {"match": {"path_prefix": "/files/"}, "service": "files", "price_sat": 5, "lifetime_s": 3600,
     "restrict": {"path_prefix": "/files/public/", "methods": ["GET"]}},
]
PAID_PREFIXES = {"/v1/": "weather", "/admin/": "admin", "/files/": "files"}
CAPABILITIES = {"/admin/": ("admin",)}


class Gateway:
    """The LND simulator (TLS) and a real Envoy running envoy/lnd-tls.yaml with ``routes`` (and
    optional plugin/Envoy settings: ``plugin`` adds top-level fields to the plugin config,
    ``template_edit`` rewrites the Envoy config) in front of ``upstream``."""

    def __init__(self, upstream_port: int, *, routes: list[dict[str, Any]] | None = None,
                 stats_flush_interval: str | None = None, timeout_ms: int | None = None,
                 concurrency: int = 1, envoy_log_level: str = "warn", plugin: Mapping[str, Any] | None = None,
                 template_edit: Callable[[str], str] | None = None):
        self.tmp = _tmpdir("lndsim-gw-")
        self.sim: Sim = start_sim("lnd", self.tmp, credential=new_credential("lnd"))
        self.secret = new_secret()
        vars = sim_vars("lnd", self.sim, upstream_port)
        template = shipped("lnd-tls.yaml")
        cfg = plugin_config(render(template, vars))
        cfg["routes"] = routes if routes is not None else ROUTES
        if timeout_ms is not None:
            cfg["node"]["timeout_ms"] = timeout_ms
        cfg.update(plugin or {})
        template = with_plugin_config(template, cfg)
        if template_edit:
            template = template_edit(template)
        if stats_flush_interval:
            template = f"stats_flush_interval: {stats_flush_interval}\n" + template
        self.listen_port = vars["LISTEN_PORT"]
        self.envoy = Envoy(template, vars=vars, env=sim_env("lnd", self.sim, self.secret),
                           concurrency=concurrency, log_level=envoy_log_level)
        try:
            self.envoy.start()
        except Exception:
            self.sim.stop()
            raise

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.listen_port}{path}"

    def get(self, path: str, headers: Mapping[str, str] | None = None, method: str = "GET"):
        return http(method, self.url(path), headers=dict(headers or {}))

    def buy(self, path: str = "/v1/forecast", scheme: str = "L402") -> str:
        """Ask, pay the invoice from the simulator's wallet, and return the paid credential."""
        r = self.get(path)
        assert r.status == 402, (r.status, r.text)
        mac, invoice = challenge_parts(r)
        return f"{scheme} {mac}:{self.sim.pay(invoice)['payment_preimage']}"

    def challenge(self, path: str = "/v1/forecast") -> tuple[str, str]:
        r = self.get(path)
        assert r.status == 402, (r.status, r.text)
        return challenge_parts(r)

    def buy_charge(self, path: str) -> tuple[dict[str, str], str, Any]:
        """Ask for ``path`` on a route offering the Payment scheme and pay the Payment challenge's
        invoice: (the challenge's parameters, the preimage hex, the 402)."""
        from payment_support import decoded, payment_challenge
        r = self.get(path)
        assert r.status == 402, (r.status, r.text)
        challenge = payment_challenge(r)
        invoice = decoded(challenge["request"])["methodDetails"]["invoice"]
        return challenge, self.sim.pay(invoice)["payment_preimage"], r

    def stop(self) -> None:
        self.envoy.stop()
        self.sim.stop()

    # -- observability --------------------------------------------------------------------------
    def prometheus(self) -> str:
        return self.envoy.stats_prometheus()

    def counters(self) -> dict[str, float]:
        """Every ``l402_*`` sample in /stats/prometheus (histogram series by their full name)."""
        out: dict[str, float] = {}
        for line in self.prometheus().splitlines():
            if line.startswith("#") or not line.startswith("l402_"):
                continue
            name, _, value = line.rpartition(" ")
            out[re.sub(r"\{\}$", "", name)] = float(value)
        return out

    def wasm_stats(self) -> dict[str, Any]:
        return {k: v for k, v in self.envoy.stats().items() if k.startswith("wasm")}

    def rss_kb(self) -> int:
        """Resident memory of the Envoy process (kB)."""
        assert self.envoy.proc is not None
        pid = envoy_pid(self.envoy.proc.pid)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def envoy_pid(pid: int) -> int:
    """.venv/bin/envoy may be a wrapper script: the Envoy process is then its child (or itself)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    if "python" not in exe and not exe.endswith(("sh", "bash", "dash")):
        return pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for c in children:
        return envoy_pid(int(c))
    return pid


def paid_requests_valid(log: list[dict[str, Any]], valid_token_ids: Mapping[str, str]) -> list[dict[str, Any]]:
    """The upstream entries on a paid prefix that are NOT explained by a valid token of that
    prefix's service (``valid_token_ids``: token id hex → service). Empty means no false accept."""
    bad = []
    for e in log:
        for prefix, service in PAID_PREFIXES.items():
            if e["path"].startswith(prefix):
                tids = [v for k, v in e.get("header_list", e["headers"].items()) if k == "x-l402-token-id"]
                ok = (len(tids) == 1 and valid_token_ids.get(tids[0]) == service
                      and "authorization" not in e["headers"])
                if not ok:
                    bad.append(e)
    return bad


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# -- soak: mixed valid, invalid and unauthenticated load ---------------------------------------------

SOAK_MIX = (  # kind, weight
    ("paid", 28), ("paid-narrowed", 8), ("paid-grpc", 4), ("free", 10), ("no-route", 4), ("unauthenticated", 8),
    ("forged", 37), ("buy", 1),
)
VM_STATS = ("wasm.envoy.wasm.runtime.v8.active", "wasm.envoy.wasm.runtime.v8.created", "wasm.wasm_vm_count")
RELOAD_STATS = ("wasm.l402.vm_reload", "wasm.l402.vm_reload_failure", "wasm.l402.vm_reload_backoff")


class SoakResult:
    def __init__(self) -> None:
        self.sent: dict[int, tuple[str, bool, str | None, int]] = {}  # n → (kind, should pass, token id, status)
        self.errors: list[str] = []
        self.rss: list[tuple[float, int]] = []          # (seconds since start, kB)
        self.allocated: list[tuple[float, int]] = []    # (seconds since start, server.memory_allocated)
        self.duration = 0.0
        self.false_accepts: list[dict[str, Any]] = []
        self.false_refusals: list[tuple[int, str, int]] = []
        self.upstream_entries = 0
        self.vm_before: dict[str, Any] = {}
        self.vm_after: dict[str, Any] = {}
        self.tokens_bought = 0

    def by_outcome(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, _, _, status in self.sent.values():
            key = f"{kind} {status}"
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))

    def rss_at(self, t: float) -> int:
        """The first RSS sample at or after ``t`` seconds."""
        return next(kb for s, kb in self.rss if s >= t)

    def summary(self) -> str:
        rss = ", ".join(f"{s:.0f}s:{kb // 1024}MB" for s, kb in self.rss[:: max(1, len(self.rss) // 12)])
        rate = len(self.sent) / self.duration if self.duration else 0
        return "\n".join([
            f"requests: {len(self.sent)} in {self.duration:.0f}s ({rate:.0f}/s), upstream saw {self.upstream_entries}, "
            f"tokens bought {self.tokens_bought}",
            f"by outcome: {json.dumps(self.by_outcome())}",
            f"false accepts: {len(self.false_accepts)}, false refusals: {len(self.false_refusals)}, "
            f"client errors: {len(self.errors)}",
            f"Envoy RSS: {rss}",
            f"wasm VM stats before/after: {self.vm_before} / {self.vm_after}",
        ])


def run_soak(gw: Gateway, up: Upstream, seconds: float, threads: int = 4, seed: int = 1,
             warm_tokens: int = 4, log: Callable[[str], None] | None = None) -> SoakResult:
    """Drive ``seconds`` of mixed load through ``gw`` on keep-alive connections and judge every request
    the upstream received against what the client sent (each request carries a unique ``n``)."""
    import http.client
    import random

    res = SoakResult()
    lock = threading.Lock()
    tokens: list[tuple[str, str]] = []  # (credential, service)
    for _ in range(warm_tokens):
        tokens.append((gw.buy("/v1/forecast"), "weather"))
    tokens.append((gw.buy("/files/public/x"), "files"))
    tokens.append((gw.buy("/files/public/y"), "files"))
    res.tokens_bought = len(tokens)
    other_secret = new_secret()
    seq = iter(range(1, 1 << 62))
    up.clear()
    time.sleep(0.5)
    res.vm_before = {k: v for k, v in gw.envoy.stats().items() if k in VM_STATS + RELOAD_STATS}
    t0 = time.monotonic()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            t = time.monotonic() - t0
            try:
                res.rss.append((t, gw.rss_kb()))
                res.allocated.append((t, int(gw.envoy.stat("server.memory_allocated", 0))))
            except Exception as e:  # noqa: BLE001
                res.errors.append(f"sampler: {e!r}")
            stop.wait(1.0)

    def forged(rng: random.Random, cred: str, service: str) -> tuple[str, list[tuple[str, str]]]:
        _, raw, pre = split(cred)
        path = "/v1/f" if service == "weather" else "/files/public/f"
        choice = rng.randrange(9)
        if choice == 0:
            pos = rng.randrange(len(raw))
            return path, [("Authorization", credential(flip(raw, pos, rng.randrange(8)), pre))]
        if choice == 1:
            return path, [("Authorization", credential(raw, secrets.token_bytes(32)))]
        if choice == 2:
            m, p = py_mint(other_secret, [f"services={service}:0"])
            return path, [("Authorization", credential(m, p))]
        if choice == 3:
            return "/admin/f", [("Authorization", extend(cred, f"services={service}:0,admin:0"))]
        if choice == 4:
            m, p = py_mint(gw.secret, ["services=weather:0", f"weather_valid_until={int(time.time()) - 1}"])
            return "/v1/f", [("Authorization", credential(m, p))]
        if choice == 5:
            return ("/files/public/f" if service == "weather" else "/v1/f"), [("Authorization", cred)]
        if choice == 6:
            return "/files/private/f", [("Authorization", cred if service == "files" else extend(cred, "x=1"))]
        if choice == 7:
            return path, [("Authorization", credential(raw[: rng.randrange(len(raw))], pre))]
        m = mac_of(raw)
        m.add_first_party_caveat("preimage=" + secrets.token_hex(32))
        return path, [("Grpc-Metadata-macaroon", raw_of(m).hex())]

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        conn = http.client.HTTPConnection("127.0.0.1", gw.listen_port, timeout=10)
        kinds = [k for k, _ in SOAK_MIX]
        weights = [w for _, w in SOAK_MIX]
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            with lock:
                n = next(seq)
                cred, service = rng.choice(tokens)
            tid = token_id(cred)
            method, should_pass = "GET", False
            if kind == "buy":
                try:
                    new = gw.buy("/v1/forecast")
                except Exception as e:  # noqa: BLE001
                    res.errors.append(f"buy: {e!r}")
                    continue
                with lock:
                    tokens.append((new, "weather"))
                    res.tokens_bought += 1
                    res.sent[n] = (kind, False, None, 402)
                continue
            base = "/v1/f" if service == "weather" else "/files/public/f"
            if kind == "paid":
                path, headers, should_pass = base, [("Authorization", cred)], True
            elif kind == "paid-narrowed":  # a unique, valid header each time: exercises the cache
                path, should_pass = base, True
                headers = [("Authorization", extend(cred, f"{service}_valid_until={int(time.time()) + 600}",
                                                    f"nonce={rng.getrandbits(64):x}"))]
            elif kind == "paid-grpc":
                m = mac_of(split(cred)[1])
                m.add_first_party_caveat(f"preimage={split(cred)[2].hex()}")
                path, headers, should_pass = base, [("Grpc-Metadata-macaroon", raw_of(m).hex())], True
            elif kind == "free":
                path, headers, should_pass, tid = "/health", [("x-l402-token-id", "forged")], True, None
            elif kind == "no-route":
                path, headers, tid = "/elsewhere", [("Authorization", cred)], None
            elif kind == "unauthenticated":
                path, headers, tid = base, [("x-l402-token-id", tid)], None
            else:
                path, headers = forged(rng, cred, service)
            target = f"{path}?n={n}"
            status = -1
            for attempt in range(2):
                try:
                    conn.putrequest(method, target, skip_accept_encoding=True)
                    for k, v in headers:
                        conn.putheader(k, v)
                    conn.endheaders()
                    r = conn.getresponse()
                    r.read()
                    status = r.status
                    if r.getheader("connection", "").lower() == "close":
                        conn.close()
                    break
                except (http.client.HTTPException, OSError) as e:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", gw.listen_port, timeout=10)
                    if attempt:
                        res.errors.append(f"{kind} n={n}: {e!r}")
            with lock:
                res.sent[n] = (kind, should_pass, tid, status)
        conn.close()

    samp = threading.Thread(target=sampler, daemon=True)
    samp.start()
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    next_report = 10.0
    while time.monotonic() - t0 < seconds:
        time.sleep(0.5)
        if log and time.monotonic() - t0 >= next_report:
            log(f"{time.monotonic() - t0:.0f}s: {len(res.sent)} requests, RSS {res.rss[-1][1] // 1024 if res.rss else '?'} MB")
            next_report += 10.0
    stop.set()
    for w in workers:
        w.join(timeout=15)
    samp.join(timeout=5)
    res.duration = time.monotonic() - t0
    time.sleep(0.5)
    res.vm_after = {k: v for k, v in gw.envoy.stats().items() if k in VM_STATS + RELOAD_STATS}

    # Judge: the upstream's log is the ground truth.
    entries = up.requests()
    res.upstream_entries = len(entries)
    for e in entries:
        m = re.search(r"[?&]n=(\d+)", e["path"])
        sent = res.sent.get(int(m.group(1))) if m else None
        tids = [v for k, v in e.get("header_list", e["headers"].items()) if k == "x-l402-token-id"]
        if sent is None or not sent[1]:
            res.false_accepts.append(e)
        elif sent[2] is None:
            if tids or "authorization" in e["headers"]:  # free: no client copy of metering headers
                res.false_accepts.append(e)
        elif tids != [sent[2]] or "authorization" in e["headers"]:
            res.false_accepts.append(e)
    for n, (kind, should_pass, _, status) in res.sent.items():
        if should_pass and status != 200:
            res.false_refusals.append((n, kind, status))
    return res
