#!/usr/bin/env python3
"""The paid path at Envoy speed: wrk against Envoy on loopback, with and without the l402 filter.

Run it through ``./build.sh bench [--long]`` (it installs wrk and nginx, builds l402.wasm, the
``l402`` CLI and the empty filter first). Layout on a 2-core machine:

* core ``--envoy-cpu`` (0): every Envoy, ``--concurrency 1``, pinned with ``taskset``;
* core ``--load-cpu`` (1): this script and everything it starts besides Envoy: wrk, nginx (one
  worker), the LND simulator.

Configurations, each behind a ``direct_response`` route and in front of nginx serving a small file:

  a  Envoy, no filter                     b  Envoy + an empty proxy-wasm filter (bench/empty-filter)
  c  Envoy + l402, valid 4-caveat token   d  Envoy + envoy.filters.http.jwt_authn, HS256 JWT
  x  diagnostics (direct only): the empty filter reading the three headers l402 reads, and l402
     with the route marked free (header reads and routing, no credential check)
  e  the 402 path: no credential, l402 asks the LND simulator for an invoice (plain HTTP and TLS)
  f  the simulator's own POST /v1/invoices latency, same load, no Envoy

Every Envoy runs for the whole bench; each round runs every configuration once (a warm-up, then a
bounded measured run) in a rotated order, so slow drifts of the machine spread over all of them.
Reported: medians over the rounds with min-max, Envoy CPU per request from /proc/<pid>/stat, and the
CPU the rest of the machine took on Envoy's core during the run (``cpu0_other``: interference).

Writes .run/bench/results.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "tests" / "sim"))

from harness import Envoy, free_port, http  # noqa: E402
from launch import start_sim  # noqa: E402

RUN = ROOT / ".run" / "bench"
EMPTY_WASM = ROOT / "target" / "empty-filter" / "wasm32-wasip1" / "release" / "empty_filter.wasm"
L402_WASM = ROOT / "l402.wasm"
L402_CLI = ROOT / "target" / "release" / "l402"
WRK_SCRIPT = BENCH / "wrk" / "report.lua"
PATH = "/v1/forecast"
BODY = '{"forecast":"sunny"}'
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICE = "weather"
INVOICE_BODY = json.dumps({"value_msat": "10000", "memo": "weather access", "expiry": "600"})
# What nginx answers on POST /v1/invoices as an instant "node": LND's answer, always the same invoice.
CANNED_INVOICE = json.dumps({"r_hash": base64.b64encode(bytes(range(32))).decode(), "add_index": "1",
                             "payment_addr": base64.b64encode(bytes(32)).decode(),
                             "payment_request": "lnbcrt100n1p" + "q" * 320})


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def template(name: str) -> str:
    return (BENCH / "envoy" / name).read_text()


def fill(text: str, **vars: Any) -> str:
    for k, v in vars.items():
        text = text.replace("${%s}" % k, str(v))
    left = set(re.findall(r"\$\{[A-Z_]+\}", text)) - {"${ADMIN_PORT}"}  # the harness fills that one
    if left:
        raise ValueError(f"unfilled placeholders {sorted(set(left))}")
    return text


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------

class PinnedEnvoy(Envoy):
    """The harness' Envoy, started under ``taskset -c CPU`` (taskset execs, so proc.pid is Envoy)."""

    def __init__(self, config: str, cpu: int, **kw: Any):
        super().__init__(config, **kw)
        self.cpu = cpu

    def command(self) -> list[str]:
        return ["taskset", "-c", str(self.cpu)] + super().command()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def core_busy_s(cpu: int) -> float:
    """Busy time of one core (everything but idle and iowait), seconds."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK
    raise RuntimeError(f"cpu{cpu} not in /proc/stat")


def start_nginx(port: int) -> tuple[subprocess.Popen, Path]:
    d = RUN / "nginx"
    shutil.rmtree(d, ignore_errors=True)
    (d / "www" / "v1").mkdir(parents=True)
    (d / "tmp").mkdir()
    (d / "www" / "v1" / "forecast").write_text(BODY)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = d / "nginx.conf"
    conf.write_text(f"""{user}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /v1/invoices {{ return 200 '{CANNED_INVOICE}'; }}
    }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    log_f = open(d / "stderr.log", "wb")
    # Inherits this script's CPU affinity (the load core).
    proc = subprocess.Popen([nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                            stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log_f.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            r = http("GET", f"http://127.0.0.1:{port}{PATH}", timeout=1)
            if r.status == 200 and r.text == BODY:
                return proc, d
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start: {(d / 'error.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)


def stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# credentials
# ---------------------------------------------------------------------------------------------

def mint_l402(secret_hex: str) -> str:
    out = subprocess.run(
        [str(L402_CLI), "token", "mint", "--service", SERVICE, "--capability", "read",
         "--constraint", "tier=gold", "--lifetime-s", "86400"],
        env={**os.environ, "L402_SECRETS": secret_hex}, capture_output=True, text=True, check=True)
    line = out.stdout.strip().splitlines()[-1]
    if not line.startswith("L402 "):
        raise RuntimeError(f"unexpected `l402 token mint` output: {out.stdout!r}")
    return line


def charges(secret_hex: str, count: int, connections: int) -> dict[str, str]:
    """A file of `count` fresh Payment charges (and one spare per connection, for the requests in
    flight when the run stops), for the wrk script: BENCH_CREDENTIALS and BENCH_REQUESTS."""
    from payment_support import credential, mint_charge
    path = RUN / "charges.txt"
    with path.open("w") as f:
        for _ in range(count + connections):
            preimage = secrets.token_bytes(32)
            challenge = mint_charge(secret_hex, SERVICE, 10, preimage, secrets.token_hex(32))
            f.write(credential(challenge, preimage.hex()) + "\n")
    return {"BENCH_CREDENTIALS": str(path), "BENCH_REQUESTS": str(count)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key: bytes, issuer: str, audience: str, target_len: int) -> str:
    """An HS256 JWT padded (with a `jti` claim) to about `target_len` characters."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "bench"}, separators=(",", ":")).encode())
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": "bench-client", "iat": now, "exp": now + 86400,
              "scope": "weather:read", "tier": "gold", "jti": ""}

    def build(jti: str) -> str:
        claims["jti"] = jti
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}"
        sig = b64url(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
        return f"{signing_input}.{sig}"

    jwt = build("")
    pad = max(0, (target_len - len(jwt)) * 3 // 4)
    return build(secrets.token_hex(pad)[:pad])


# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------

def wrk(url: str, seconds: int, connections: int, headers: list[str], env: dict[str, str] | None = None,
        timeout_s: int = 5) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "-s", str(WRK_SCRIPT)]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                         timeout=seconds + 60)
    m = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return json.loads(m.group(1))


# ---------------------------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------------------------

class Target:
    """One measured configuration: a URL, the headers every request carries, the expected status,
    and the Envoy (if any) whose CPU is counted."""

    def __init__(self, key: str, label: str, url: str, headers: list[str], expect: int,
                 envoy: PinnedEnvoy | None, connections: int, env: dict[str, str] | None = None,
                 probe: Any = None, fresh: Any = None):
        self.key, self.label, self.url, self.headers, self.expect = key, label, url, headers, expect
        self.envoy, self.connections, self.env = envoy, connections, env or {}
        self.probe = probe  # (method, body) for the sanity check, default GET
        self.fresh = fresh  # () -> environment for one wrk run, for single-use credentials
        self.runs: list[dict[str, Any]] = []

    def run_env(self) -> dict[str, str]:
        return {**self.env, **(self.fresh() if self.fresh else {})}


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(t: Target, seconds: int, warmup: int, envoy_cpu: int) -> dict[str, Any]:
    if warmup:
        wrk(t.url, warmup, t.connections, t.headers, t.run_env())
    pid = t.envoy.proc.pid if t.envoy else None
    env = t.run_env()  # before the clock: minting single-use credentials is no part of the run
    cpu0 = time.monotonic(), core_busy_s(envoy_cpu), proc_cpu_s(pid) if pid else 0.0
    res = wrk(t.url, seconds, t.connections, t.headers, env)
    cpu1 = time.monotonic(), core_busy_s(envoy_cpu), proc_cpu_s(pid) if pid else 0.0
    n = res["requests"]
    envoy_cpu_s = cpu1[2] - cpu0[2]
    errors = res["errors"]
    # wrk counts every status outside 2xx/3xx as a status error: for the 402 path they all are.
    wrong = errors["status"] if t.expect < 400 else n - errors["status"]
    run = {
        "requests": n,
        "rps": n / (res["duration_us"] / 1e6),
        "p50_us": res["latency_us"]["p50"],
        "p99_us": res["latency_us"]["p99"],
        "mean_us": res["latency_us"]["mean"],
        "envoy_cpu_us_per_req": (envoy_cpu_s / n * 1e6) if (pid and n) else None,
        "envoy_core_busy": (cpu1[1] - cpu0[1]) / (cpu1[0] - cpu0[0]),
        "envoy_core_other_s": (cpu1[1] - cpu0[1]) - envoy_cpu_s,
        "unexpected_status": wrong,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "loadavg1": os.getloadavg()[0],
    }
    return run


def sanity(t: Target) -> None:
    hdrs = dict(h.split(": ", 1) for h in t.headers)
    if t.fresh:
        with open(t.run_env()["BENCH_CREDENTIALS"]) as f:
            hdrs["Authorization"] = f.readline().strip()
    method, body = t.probe or ("GET", None)
    r = http(method, t.url, headers=hdrs, body=body, timeout=10)
    if r.status != t.expect:
        raise RuntimeError(f"{t.key}: expected {t.expect}, got {r.status}: {r.text[:300]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of warm-up before each run")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (throughput runs)")
    ap.add_argument("--challenge-connections", default="1,4",
                    help="wrk connections for the 402 path and the simulator, comma-separated: 1 prices the "
                         "latency the filter adds (no queue at the single-threaded simulator), 4 the load")
    ap.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                    help="niceness of everything the bench runs (default -10 as root): other work on the "
                         "machine disturbs the runs less")
    ap.add_argument("--envoy-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--long", action="store_true", help="also a 1-million-request run of (c), Envoy RSS before/after")
    ap.add_argument("--long-requests", type=int, default=1_000_000)
    ap.add_argument("--charge-requests", type=int, default=20_000,
                    help="requests per run of (g): each presents a new single-use charge")
    ap.add_argument("--only", help="comma-separated target keys (default: all)")
    ap.add_argument("--compare-wasm", type=Path,
                    help="another l402.wasm (an earlier build): adds (c') beside (c) and (e') beside (e), run in the same rounds")
    ap.add_argument("--out", default=str(RUN / "results.json"))
    args = ap.parse_args()

    if (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 cores: Envoy and the load generator share one")
    # This script and all it starts (wrk, nginx, the simulator) run on the load core.
    os.sched_setaffinity(0, {args.load_cpu})
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by Envoy, wrk, nginx, the simulator
    for path in (L402_WASM, EMPTY_WASM, L402_CLI, WRK_SCRIPT):
        if not path.exists():
            raise SystemExit(f"missing {path}: run ./build.sh bench")
    RUN.mkdir(parents=True, exist_ok=True)

    started: list[Any] = []
    nginx = None
    try:
        secret = secrets.token_hex(32)
        credential = mint_l402(secret)
        auth_len = len(credential)
        macaroon_hex = secrets.token_hex(64)
        jwt_key = secrets.token_bytes(32)
        jwt = make_jwt(jwt_key, "bench-issuer", SERVICE, auth_len - len("Bearer "))
        jwks = json.dumps({"keys": [{"kty": "oct", "kid": "bench", "alg": "HS256", "k": b64url(jwt_key)}]},
                          separators=(",", ":"))

        log("LND simulator (plain and TLS), nginx")
        sim = start_sim("lnd", RUN / "sim-plain", credential=macaroon_hex, plain=True)
        started.append(sim)
        sim_tls = start_sim("lnd", RUN / "sim-tls", credential=macaroon_hex, plain=False)
        started.append(sim_tls)
        nginx_port = free_port()
        nginx, _ = start_nginx(nginx_port)

        envoy_env = {"L402_SECRETS": secret, "LND_INVOICE_MACAROON_HEX": macaroon_hex}
        paid_route = {"match": {"path_prefix": "/"}, "service": SERVICE, "price_sat": 10, "capabilities": ["read"]}

        def l402_config(tls: bool = False, free: bool = False, port: int | None = None,
                        route: dict[str, Any] | None = None, **extra: Any) -> str:
            port = port or (sim_tls.port if tls else sim.port)
            node = {"kind": "lnd", "upstream": "lnd", "authority": f"{'localhost' if tls else '127.0.0.1'}:{port}",
                    "credential": {"env": "LND_INVOICE_MACAROON_HEX"}, "timeout_ms": 3000}
            if tls:
                node["tls"] = True
            route = route or ({"match": {"path_prefix": "/"}, "free": True} if free else paid_route)
            return json.dumps({"secrets": {"env": "L402_SECRETS"}, "node": node, "routes": [route], **extra},
                              separators=(",", ":"))

        def envoy(name: str, upstream: str, filters: str, clusters: str = "", route_extra: str = "") -> PinnedEnvoy:
            route = (fill(template("route-direct.yaml"), BODY=BODY.replace('"', '\\"')) if upstream == "direct"
                     else template("route-upstream.yaml")) + route_extra
            if upstream == "nginx":
                clusters = fill(template("cluster-upstream.yaml"), UPSTREAM_PORT=nginx_port) + "\n" + clusters
            listen = free_port()
            cfg = fill(template("base.yaml"), LISTEN_PORT=listen, ADMIN_PORT="${ADMIN_PORT}",
                       ROUTE_ACTION=route.strip(), HTTP_FILTERS=filters.rstrip("\n"),
                       CLUSTERS=clusters.rstrip("\n") or "  []")
            e = PinnedEnvoy(cfg, args.envoy_cpu, env=envoy_env, log_level="warn")
            e.start(timeout=60)
            e.name = name
            e.listen = listen
            started.append(e)
            return e

        def wasm_filter(name: str, wasm: Path, configuration: str) -> str:
            return fill(template("filter-wasm.yaml"), NAME=name, WASM_FILE=wasm, CONFIGURATION=configuration)

        lnd_plain = fill(template("cluster-lnd.yaml"), LND_PORT=sim.port)
        lnd_tls = fill(template("cluster-lnd-tls.yaml"), LND_PORT=sim_tls.port, LND_TLS_CERT=sim_tls.cert_path)
        jwt_filter = fill(template("filter-jwt.yaml"), JWT_ISSUER="bench-issuer", JWT_AUDIENCE=SERVICE, JWKS=jwks)

        auth = [f"Authorization: {credential}"]
        bearer = [f"Authorization: Bearer {jwt}"]
        c = args.connections
        challenge_conns = [int(x) for x in str(args.challenge_connections).split(",") if x]
        targets: list[Target] = []
        only = set(args.only.split(",")) if args.only else None

        def want(key: str) -> bool:
            return only is None or key in only

        log("Envoys (each --concurrency 1, pinned to core %d)" % args.envoy_cpu)
        envoys: dict[str, PinnedEnvoy] = {}
        for up in ("direct", "nginx"):
            if want(f"a-{up}"):
                e = envoy(f"a-{up}", up, "")
                targets.append(Target(f"a-{up}", "(a) no filter", f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
            if want(f"b-{up}"):
                e = envoy(f"b-{up}", up, wasm_filter("empty", EMPTY_WASM, ""))
                targets.append(Target(f"b-{up}", "(b) empty wasm filter", f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
            if want(f"c-{up}") or (up == "direct" and want("e-plain")):
                e = envoy(f"c-{up}", up, wasm_filter("l402", L402_WASM, l402_config()), lnd_plain)
                envoys[f"c-{up}"] = e
                if want(f"c-{up}"):
                    targets.append(Target(f"c-{up}", "(c) l402, paid (4 caveats)", f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
            if want(f"d-{up}"):
                e = envoy(f"d-{up}", up, jwt_filter)
                targets.append(Target(f"d-{up}", "(d) jwt_authn HS256", f"http://127.0.0.1:{e.listen}{PATH}", bearer, 200, e, c))
        if args.compare_wasm and want("c-direct"):
            e = envoy("c-other-direct", "direct", wasm_filter("l402", args.compare_wasm, l402_config()), lnd_plain)
            targets.append(Target("c-other-direct", f"(c') l402, paid, {args.compare_wasm.name}",
                                  f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
        if want("g-direct"):
            # The Payment scheme's paid path: a charge is single-use, so each request presents a
            # new one (minted here as the gateway would issue it), and counts its use in shared data.
            charge_route = {"match": {"path_prefix": "/"}, "service": SERVICE, "price_sat": 10, "schemes": ["payment"]}
            e = envoy("g-direct", "direct", wasm_filter("l402", L402_WASM, l402_config(route=charge_route)), lnd_plain)
            targets.append(Target("g-direct", "(g) l402, paid with a Payment charge", f"http://127.0.0.1:{e.listen}{PATH}",
                                  [], 200, e, c, fresh=lambda: charges(secret, args.charge_requests, c)))
        # A metered route: a bundle no run can spend (LND's largest invoice, 40 million requests), a reservation held before each request and the
        # cost the direct response reports charged after it. Per gateway (shared data), and with the
        # fleet's etcd (a compare-and-swap round trip before each request; one connection, one token).
        metered_route = {"match": {"path_prefix": "/"}, "service": SERVICE, "price_msat": 4_000_000_000,
                         "capabilities": ["read"], "metered": {"reserve_msat": 200, "max_cost_msat": 500}}
        reported_cost = '\n                response_headers_to_add: [{ header: { key: x-l402-cost-msat, value: "100" } }]'
        def bundle(listen: int) -> list[str]:
            """A bundle bought as a client buys one: the 402, the invoice paid at the simulator."""
            r = http("GET", f"http://127.0.0.1:{listen}{PATH}", timeout=10)
            found = re.search(r'L402 macaroon="([^"]+)", invoice="([^"]+)"', r.headers.get("www-authenticate", ""))
            if r.status != 402 or not found:
                raise RuntimeError(f"no L402 challenge to buy a bundle: {r.status} {r.text[:300]}")
            preimage = sim.pay(found.group(2))["payment_preimage"]
            return [f"Authorization: L402 {found.group(1)}:{preimage}"]

        if want("m-direct"):
            e = envoy("m-direct", "direct", wasm_filter("l402", L402_WASM, l402_config(route=metered_route)), lnd_plain,
                      route_extra=reported_cost)
            targets.append(Target("m-direct", "(m) l402, metered: reservation and charge in shared data",
                                  f"http://127.0.0.1:{e.listen}{PATH}", bundle(e.listen), 200, e, c))
        if want("m-etcd-direct"):
            from test_fleet import Etcd  # the fleet tests' etcd on loopback
            etcd = Etcd()
            started.append(etcd)
            fleet = {"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "prefix": "/bench/"}
            e = envoy("m-etcd-direct", "direct",
                      wasm_filter("l402", L402_WASM, l402_config(route=metered_route, fleet=fleet)),
                      lnd_plain + "\n" + fill(template("cluster-etcd.yaml"), ETCD_PORT=etcd.port),
                      route_extra=reported_cost)
            targets.append(Target("m-etcd-direct", "(m) l402, metered with the fleet's etcd, 1 connection",
                                  f"http://127.0.0.1:{e.listen}{PATH}", bundle(e.listen), 200, e, 1))
            if want("c-direct"):
                targets.append(Target("c-direct-c1", "(c) l402, paid, 1 connection", targets[[t.key for t in targets].index("c-direct")].url,
                                      auth, 200, envoys["c-direct"], 1))
        if want("x-headers-direct"):
            e = envoy("x-headers-direct", "direct", wasm_filter("empty", EMPTY_WASM, ":method,:path,authorization"))
            targets.append(Target("x-headers-direct", "(x) empty filter + 3 header reads", f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
        if want("x-allheaders-direct"):
            e = envoy("x-allheaders-direct", "direct", wasm_filter("empty", EMPTY_WASM, "*"))
            targets.append(Target("x-allheaders-direct", "(x) empty filter + the whole header map in one call",
                                  f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
        for way in ("single", "map"):
            if want(f"x-calls-{way}-direct"):
                e = envoy(f"x-calls-{way}-direct", "direct", wasm_filter("empty", EMPTY_WASM, f"calls:{way}"))
                what = "one header at a time (3 reads, 4 writes)" if way == "single" else "the whole map, read and written once"
                targets.append(Target(f"x-calls-{way}-direct", f"(x) empty filter + the paid path's header work, {what}",
                                      f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
        if want("x-nohandoff-direct"):
            no_handoff = {"strip_credential": False, "token_id": None, "service": None, "price_msat": None}
            e = envoy("x-nohandoff-direct", "direct",
                      wasm_filter("l402", L402_WASM, l402_config(upstream_headers=no_handoff)), lnd_plain)
            targets.append(Target("x-nohandoff-direct", "(x) l402, paid, no upstream header changes",
                                  f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
        if want("x-free-direct"):
            e = envoy("x-free-direct", "direct", wasm_filter("l402", L402_WASM, l402_config(free=True)), lnd_plain)
            targets.append(Target("x-free-direct", "(x) l402, free route", f"http://127.0.0.1:{e.listen}{PATH}", auth, 200, e, c))
        invoice_headers = [f"Grpc-Metadata-macaroon: {macaroon_hex}", "Content-Type: application/json"]
        invoice_env = {"BENCH_METHOD": "POST", "BENCH_BODY": INVOICE_BODY}
        e_tls = None
        for cc in challenge_conns:
            if want("e-plain"):
                e = envoys["c-direct"]
                targets.append(Target(f"e-plain-c{cc}", "(e) 402 path, invoice over HTTP",
                                      f"http://127.0.0.1:{e.listen}{PATH}", [], 402, e, cc))
            if want("f-plain"):
                targets.append(Target(f"f-plain-c{cc}", "(f) simulator POST /v1/invoices, HTTP", f"{sim.url}/v1/invoices",
                                      invoice_headers, 200, None, cc, invoice_env, probe=("POST", INVOICE_BODY)))
            if cc != challenge_conns[0]:
                continue  # TLS: latency only
            if want("e-tls"):
                e_tls = e_tls or envoy("e-tls", "direct", wasm_filter("l402", L402_WASM, l402_config(tls=True)), lnd_tls)
                targets.append(Target(f"e-tls-c{cc}", "(e) 402 path, invoice over TLS",
                                      f"http://127.0.0.1:{e_tls.listen}{PATH}", [], 402, e_tls, cc))
            if want("f-tls"):
                targets.append(Target(f"f-tls-c{cc}", "(f) simulator POST /v1/invoices, TLS",
                                      f"https://127.0.0.1:{sim_tls.port}/v1/invoices", invoice_headers, 200, None, cc,
                                      invoice_env))

        if want("e-fast"):
            # The 402 path with an instant node (nginx answers a canned invoice): what Envoy and the
            # filter add, without the simulator's own time and variance.
            cc = challenge_conns[0]
            e = envoy("e-fast", "direct", wasm_filter("l402", L402_WASM, l402_config(port=nginx_port)),
                      fill(template("cluster-lnd.yaml"), LND_PORT=nginx_port))
            targets.append(Target(f"e-fast-c{cc}", "(e) 402 path, instant node (nginx)",
                                  f"http://127.0.0.1:{e.listen}{PATH}", [], 402, e, cc))
            if args.compare_wasm:
                other = envoy("e-other-fast", "direct", wasm_filter("l402", args.compare_wasm, l402_config(port=nginx_port)),
                              fill(template("cluster-lnd.yaml"), LND_PORT=nginx_port))
                targets.append(Target(f"e-other-fast-c{cc}", f"(e') 402 path, instant node, {args.compare_wasm.name}",
                                      f"http://127.0.0.1:{other.listen}{PATH}", [], 402, other, cc))
            # Envoy's own floor of that path: an empty filter that makes the same callout and sends a
            # local 402 of the same size, with none of l402's work.
            floor = envoy("x-callout-fast", "direct", wasm_filter("empty", EMPTY_WASM, "callout:lnd"),
                          fill(template("cluster-lnd.yaml"), LND_PORT=nginx_port))
            targets.append(Target(f"x-callout-fast-c{cc}", "(x) empty filter: the callout and a local 402 only",
                                  f"http://127.0.0.1:{floor.listen}{PATH}", [], 402, floor, cc))
            targets.append(Target(f"f-fast-c{cc}", "(f) instant node POST /v1/invoices",
                                  f"http://127.0.0.1:{nginx_port}/v1/invoices", invoice_headers, 200, None, cc,
                                  invoice_env, probe=("POST", INVOICE_BODY)))

        for t in targets:
            if not t.key.startswith("f-tls"):  # urllib would verify the simulator's self-signed certificate
                sanity(t)
        # jwt_authn and l402 really check: no credential is refused.
        for t in targets:
            if t.key.startswith(("c-", "d-", "g-", "m-")):
                r = http("GET", t.url, timeout=10)
                want_status = 401 if t.key.startswith("d-") else 402
                if r.status != want_status:
                    raise RuntimeError(f"{t.key} without credential: expected {want_status}, got {r.status}")

        all_envoys = [p for p in started if isinstance(p, PinnedEnvoy)]
        rss_start = {e.name: rss_kb(e.proc.pid) for e in all_envoys}
        log(f"{len(targets)} targets, {len(all_envoys)} Envoys; global warm-up 3 s each")
        for t in targets:
            wrk(t.url, 3, t.connections, t.headers, t.run_env())

        meta = machine_info()
        meta["loadavg_start"] = os.getloadavg()
        t_start = time.monotonic()
        rng = random.Random(402)
        for rnd in range(args.rounds):
            order = targets[:]
            rng.shuffle(order)
            for t in order:
                run = measure(t, args.duration, args.warmup, args.envoy_cpu)
                run["round"] = rnd
                t.runs.append(run)
                log(f"round {rnd + 1}/{args.rounds} {t.key:18s} {run['rps']:9.0f} req/s  p50 {run['p50_us']:6d} us  "
                    f"p99 {run['p99_us']:6d} us  cpu/req {fmt_opt(run['envoy_cpu_us_per_req'])} us  "
                    f"other on envoy core {run['envoy_core_other_s']:.2f} s  load {run['loadavg1']:.2f}")
        meta["loadavg_end"] = os.getloadavg()
        meta["bench_seconds"] = round(time.monotonic() - t_start, 1)

        rss_end = {e.name: rss_kb(e.proc.pid) for e in all_envoys}
        wasm_stats = {}
        for e in all_envoys:
            try:
                wasm_stats[e.name] = {k: v for k, v in e.stats("wasm").items()}
            except Exception as exc:  # noqa: BLE001
                wasm_stats[e.name] = {"error": str(exc)}

        long_run = None
        if args.long and "c-direct" in envoys:
            long_run = run_long(envoys["c-direct"], auth, c, args.long_requests)

        results = build_results(targets, meta, args, rss_start, rss_end, wasm_stats, long_run, auth_len, len(jwt) + 7)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(markdown(results))
        log(f"results: {out}")
        return 0
    finally:
        for p in reversed(started):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass
        stop_group(nginx)


def run_long(e: PinnedEnvoy, headers: list[str], connections: int, total: int) -> dict[str, Any]:
    """(c) until `total` requests, in bounded chunks; Envoy RSS and wasm stats before and after."""
    log(f"long run: {total} requests of (c) direct")
    before = {"rss_kb": rss_kb(e.proc.pid), "wasm_stats": e.stats("wasm"), "cpu_s": proc_cpu_s(e.proc.pid)}
    done, chunks, t0 = 0, 0, time.monotonic()
    while done < total and time.monotonic() - t0 < 900:
        res = wrk(f"http://127.0.0.1:{e.listen}{PATH}", 10, connections, headers)
        if res["errors"]["status"]:
            raise RuntimeError(f"long run: {res['errors']['status']} unexpected statuses")
        done += res["requests"]
        chunks += 1
        log(f"long run: {done} requests, RSS {rss_kb(e.proc.pid) / 1024:.1f} MiB")
    after = {"rss_kb": rss_kb(e.proc.pid), "wasm_stats": e.stats("wasm"), "cpu_s": proc_cpu_s(e.proc.pid)}
    return {"requests": done, "seconds": round(time.monotonic() - t0, 1), "before": before, "after": after,
            "rss_growth_kb": after["rss_kb"] - before["rss_kb"],
            "envoy_cpu_us_per_req": (after["cpu_s"] - before["cpu_s"]) / done * 1e6}


def machine_info() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy_version = subprocess.run([str(ROOT / ".venv" / "bin" / "envoy"), "--version"], capture_output=True,
                                   text=True).stdout.strip().split("version:")[-1].strip()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "envoy": envoy_version, "wrk": wrk_version.strip(), "nginx": nginx_version,
            "l402_wasm_bytes": L402_WASM.stat().st_size, "empty_wasm_bytes": EMPTY_WASM.stat().st_size,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def build_results(targets: list[Target], meta: dict[str, Any], args: argparse.Namespace, rss_start: dict,
                  rss_end: dict, wasm_stats: dict, long_run: Any, auth_len: int, jwt_header_len: int) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for t in targets:
        runs = t.runs
        cpu = [r["envoy_cpu_us_per_req"] for r in runs if r["envoy_cpu_us_per_req"] is not None]
        configs[t.key] = {
            "label": t.label, "url_path": PATH, "connections": t.connections, "expect_status": t.expect,
            "rps": summarize([r["rps"] for r in runs]),
            "p50_us": summarize([r["p50_us"] for r in runs]),
            "p99_us": summarize([r["p99_us"] for r in runs]),
            "envoy_cpu_us_per_req": summarize(cpu) if cpu else None,
            "envoy_core_other_s": summarize([r["envoy_core_other_s"] for r in runs]),
            "unexpected_status": sum(r["unexpected_status"] for r in runs),
            "socket_errors": sum(r["socket_errors"] for r in runs),
            "requests": sum(r["requests"] for r in runs),
            "runs": runs,
        }

    def med(key: str, metric: str) -> float | None:
        c = configs.get(key)
        return c[metric]["median"] if c and c.get(metric) else None

    def ratio(n: str, d: str) -> dict[str, Any] | None:
        if n not in configs or d not in configs:
            return None
        per_round = [a["rps"] / b["rps"] for a, b in zip(configs[n]["runs"], configs[d]["runs"])]
        return {"value": med(n, "rps") / med(d, "rps"), "per_round_min": min(per_round), "per_round_max": max(per_round)}

    def diff(n: str, d: str, metric: str) -> float | None:
        a, b = med(n, metric), med(d, metric)
        return None if a is None or b is None else a - b

    derived = {
        "c/a direct": ratio("c-direct", "a-direct"), "c/a nginx": ratio("c-nginx", "a-nginx"),
        "c/b direct": ratio("c-direct", "b-direct"), "c/b nginx": ratio("c-nginx", "b-nginx"),
        "c/d direct": ratio("c-direct", "d-direct"), "c/d nginx": ratio("c-nginx", "d-nginx"),
        "cpu_us c-a direct": diff("c-direct", "a-direct", "envoy_cpu_us_per_req"),
        "cpu_us c-a nginx": diff("c-nginx", "a-nginx", "envoy_cpu_us_per_req"),
        "cpu_us b-a direct": diff("b-direct", "a-direct", "envoy_cpu_us_per_req"),
        "cpu_us c-b direct": diff("c-direct", "b-direct", "envoy_cpu_us_per_req"),
        "cpu_us c' - c direct": diff("c-other-direct", "c-direct", "envoy_cpu_us_per_req"),
        "cpu_us d-a direct": diff("d-direct", "a-direct", "envoy_cpu_us_per_req"),
        "cpu_us x-headers - b direct": diff("x-headers-direct", "b-direct", "envoy_cpu_us_per_req"),
        "cpu_us x-allheaders - b direct": diff("x-allheaders-direct", "b-direct", "envoy_cpu_us_per_req"),
        "cpu_us x-calls-single - b direct": diff("x-calls-single-direct", "b-direct", "envoy_cpu_us_per_req"),
        "cpu_us x-calls-map - b direct": diff("x-calls-map-direct", "b-direct", "envoy_cpu_us_per_req"),
        "cpu_us x-free - x-headers direct": diff("x-free-direct", "x-headers-direct", "envoy_cpu_us_per_req"),
        "cpu_us x-nohandoff - x-headers direct": diff("x-nohandoff-direct", "x-headers-direct", "envoy_cpu_us_per_req"),
        "cpu_us c - x-nohandoff direct": diff("c-direct", "x-nohandoff-direct", "envoy_cpu_us_per_req"),
        # The Payment scheme's paid path beside L402's: a charge, counted single-use in shared data.
        "g/b direct": ratio("g-direct", "b-direct"),
        "cpu_us g-b direct": diff("g-direct", "b-direct", "envoy_cpu_us_per_req"),
        "cpu_us g-c direct": diff("g-direct", "c-direct", "envoy_cpu_us_per_req"),
        # The 402 path over Envoy's own floor for it (a callout and a local reply).
        "cpu_us e-fast - x-callout": diff(f"e-fast-c{str(args.challenge_connections).split(',')[0]}",
                                          f"x-callout-fast-c{str(args.challenge_connections).split(',')[0]}",
                                          "envoy_cpu_us_per_req"),
        "cpu_us e' - e fast": diff(f"e-other-fast-c{str(args.challenge_connections).split(',')[0]}",
                                   f"e-fast-c{str(args.challenge_connections).split(',')[0]}", "envoy_cpu_us_per_req"),
        # A metered route's paid path beside the flat one: per gateway, and with etcd (1 connection).
        "cpu_us m-c direct": diff("m-direct", "c-direct", "envoy_cpu_us_per_req"),
        "cpu_us m-etcd - c, 1 connection": diff("m-etcd-direct", "c-direct-c1", "envoy_cpu_us_per_req"),
        "p50 ms m-etcd - c, 1 connection": _ms(diff("m-etcd-direct", "c-direct-c1", "p50_us")),
    }
    # Under contention the least-disturbed round is the better estimate of a cost: also the
    # differences of the per-configuration minima.
    for n, d in (("c-direct", "a-direct"), ("b-direct", "a-direct"), ("c-direct", "b-direct"), ("d-direct", "a-direct"),
                 ("c-nginx", "a-nginx"), ("x-headers-direct", "b-direct"), ("x-nohandoff-direct", "b-direct"),
                 ("c-direct", "x-nohandoff-direct"), ("g-direct", "b-direct"), ("g-direct", "c-direct"),
                 ("m-direct", "c-direct")):
        if n in configs and d in configs and configs[n]["envoy_cpu_us_per_req"] and configs[d]["envoy_cpu_us_per_req"]:
            derived[f"cpu_us {n[:-len(n.split('-')[-1]) - 1]}-{d[:-len(d.split('-')[-1]) - 1]} {n.split('-')[-1]}, minima"] = (
                configs[n]["envoy_cpu_us_per_req"]["min"] - configs[d]["envoy_cpu_us_per_req"]["min"])
    for key in configs:
        if key.startswith("e-"):
            f_key = "f-" + key[2:]
            derived[f"e-f p50 ms {key[2:]}"] = _ms(diff(key, f_key, "p50_us"))
            derived[f"e-f p99 ms {key[2:]}"] = _ms(diff(key, f_key, "p99_us"))

    def goal(name: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
        ok = None if value is None else (value >= limit if op == ">=" else value <= limit if op == "<=" else value < limit)
        return {"goal": name, "value": value, "target": f"{op} {limit}", "met": ok}

    def rv(key: str) -> float | None:
        r = derived.get(key)
        return r["value"] if r else None

    cc0 = str(args.challenge_connections).split(",")[0]
    def minima(n: str, d: str) -> float | None:
        return derived.get(f"cpu_us {n}-{d} direct, minima")

    c_b, d_a = derived["cpu_us c-b direct"], derived["cpu_us d-a direct"]
    c_b_min, d_a_min = minima("c", "b"), minima("d", "a")
    fast_cpu = med(f"e-fast-c{cc0}", "envoy_cpu_us_per_req")
    goals = [
        goal("nginx upstream c/a (req/s)", rv("c/a nginx"), ">=", 0.90),
        goal("direct c/b (req/s)", rv("c/b direct"), ">=", 0.93),
        # Verification over the wasm floor costs no more than native JWT verification in all.
        goal("(c - b) - (d - a), medians (us)", None if c_b is None or d_a is None else c_b - d_a, "<=", 0),
        goal("(c - b) - (d - a), minima (us)", None if c_b_min is None or d_a_min is None else c_b_min - d_a_min,
             "<=", 0),
        goal("(c - b) / (d - a), medians", None if c_b is None or not d_a else c_b / d_a, "<=", 1),
        goal("402 path, instant node, Envoy CPU per challenge (us; half of 485)", fast_cpu, "<=", 242),
        goal(f"(e - f) p50, plain HTTP, {cc0} connection(s) (ms)", derived.get(f"e-f p50 ms plain-c{cc0}"), "<", 0.5),
        goal("l402.wasm size (KB)", meta["l402_wasm_bytes"] / 1000, "<=", 350),
    ]
    return {
        "machine": meta,
        "method": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                   "connections": args.connections, "challenge_connections": args.challenge_connections,
                   "envoy_cpu": args.envoy_cpu, "load_cpu": args.load_cpu, "path": PATH, "body": BODY,
                   "authorization_header_bytes": {"l402": auth_len, "jwt": jwt_header_len}},
        "configs": configs, "derived": derived, "goals": goals,
        "envoy_rss_kb": {"start": rss_start, "end": rss_end}, "wasm_stats_end": wasm_stats, "long_run": long_run,
    }


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def fmt_opt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def fmt_range(s: dict[str, float] | None, spec: str, scale: float = 1.0) -> str:
    if not s:
        return "-"
    return f"{format(s['median'] * scale, spec)} ({format(s['min'] * scale, spec)}–{format(s['max'] * scale, spec)})"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; Envoy {m['envoy']}; load avg "
        f"{m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}; {res['method']['rounds']} rounds × "
        f"{res['method']['duration_s']} s; medians (min–max).",
        "",
        "| config | upstream | conns | req/s | p50 ms | p99 ms | Envoy CPU µs/req |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, c in res["configs"].items():
        up = ("direct_response" if key.endswith("-direct") or key.startswith("c-direct") else "nginx" if key.endswith("-nginx")
              else "nginx (canned invoice)" if "-fast" in key else "LND sim, " + ("TLS" if "-tls" in key else "HTTP"))
        lines.append(f"| {c['label']} | {up} | {c['connections']} | {fmt_range(c['rps'], '.0f')} | "
                     f"{fmt_range(c['p50_us'], '.3f', 1e-3)} | {fmt_range(c['p99_us'], '.3f', 1e-3)} | "
                     f"{fmt_range(c['envoy_cpu_us_per_req'], '.1f')} |")
    bad = [k for k, c in res["configs"].items() if c["unexpected_status"] or c["socket_errors"]]
    if bad:
        lines += ["", "Unexpected statuses or socket errors in: " + ", ".join(
            f"{k} ({res['configs'][k]['unexpected_status']}/{res['configs'][k]['socket_errors']})" for k in bad)]
    lines += ["", "| derived | value |", "|---|---:|"]
    for k, v in res["derived"].items():
        if v is None:
            continue
        if isinstance(v, dict):
            lines.append(f"| {k} (req/s) | {v['value']:.3f} (rounds {v['per_round_min']:.3f}–{v['per_round_max']:.3f}) |")
        else:
            lines.append(f"| {k} | {v:.3f} |")
    lines += ["", "| goal | target | value | met |", "|---|---|---:|---|"]
    for g in res["goals"]:
        val = "-" if g["value"] is None else f"{g['value']:.3f}"
        met = "-" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {g['target']} | {val} | {met} |")
    rss = res["envoy_rss_kb"]
    lines += ["", "Envoy RSS (MiB) start → end of bench: " + ", ".join(
        f"{k} {rss['start'][k] / 1024:.1f}→{rss['end'][k] / 1024:.1f}" for k in rss["start"])]
    if res.get("long_run"):
        lr = res["long_run"]
        lines.append(f"Long run (c, direct): {lr['requests']} requests in {lr['seconds']} s, Envoy RSS "
                     f"{lr['before']['rss_kb'] / 1024:.1f} → {lr['after']['rss_kb'] / 1024:.1f} MiB, "
                     f"{lr['envoy_cpu_us_per_req']:.1f} µs CPU/req")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
