"""The l402 demo: a real Envoy with l402.wasm in front of an API, a real LNbits issuing invoices,
and a client that walks the whole L402 flow, step by step.

    ./build.sh demo            run the walk, then stop everything
    ./build.sh demo --serve    keep everything running and print curl commands to try

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import signal
import sys
import time
from pathlib import Path

import bolt11

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import Envoy, LNbits, Upstream, free_port, http  # noqa: E402

BOLD, DIM, GREEN, YELLOW, RED, RESET = "\033[1m", "\033[2m", "\033[32m", "\033[33m", "\033[31m", "\033[0m"
if not sys.stdout.isatty():
    BOLD = DIM = GREEN = YELLOW = RED = RESET = ""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say(f"\n{BOLD}{n}. {title}{RESET}")


def show(response, elapsed: float) -> None:
    colour = GREEN if response.status == 200 else YELLOW if response.status == 402 else RED
    say(f"   {colour}HTTP {response.status}{RESET} in {elapsed * 1000:.1f} ms")


def timed_get(url: str, headers: dict[str, str] | None = None):
    start = time.perf_counter()
    response = http("GET", url, headers=headers or {})
    return response, time.perf_counter() - start


def challenge_params(response) -> dict[str, str]:
    """The parameters of the L402 challenge (the header a current client reads)."""
    for value in response.header_values("www-authenticate"):
        if value.startswith("L402 "):
            return dict(re.findall(r'(\w+)="([^"]*)"', value))
    raise SystemExit(f"no L402 challenge in {response.header_list}")


def short(text: str, keep: int = 28) -> str:
    return text if len(text) <= 2 * keep else f"{text[:keep]}…{text[-keep:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", action="store_true", help="keep everything running after the walk")
    args = parser.parse_args()

    # SIGTERM (a service manager, `timeout`, `kill`) and SIGHUP (a closed terminal) stop the demo
    # as Ctrl-C does: through the `finally` below, which stops everything it started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    say(f"{BOLD}l402 demo{RESET}: an API behind an L402 paywall in Envoy, invoices from LNbits")
    step(0, "Starting LNbits (FakeWallet), the upstream API and Envoy with l402.wasm")
    lnbits, upstream, envoy = LNbits(), Upstream(), None
    try:
        lnbits.start()
        upstream.start()
        gateway = lnbits.create_wallet("gateway")
        payer = lnbits.create_wallet("payer")
        lnbits.fund(payer.id, 100_000)
        say(f"   LNbits ready in {lnbits.start_seconds:.1f} s at {lnbits.url}; payer wallet funded with 100000 sat")
        listen = free_port()
        envoy = Envoy(
            (ROOT / "envoy" / "demo.yaml").read_text(),
            vars={"LISTEN_PORT": listen, "UPSTREAM_PORT": upstream.port, "LNBITS_PORT": lnbits.port},
            env={"L402_SECRETS": secrets.token_hex(32), "LNBITS_INVOICE_KEY": gateway.inkey},
        ).start()
        api = f"http://127.0.0.1:{listen}"
        say(f"   Envoy listening at {api} (route /v1/ costs 10 sat, /health is free)")

        step(1, f"GET {api}/v1/forecast without paying")
        response, elapsed = timed_get(f"{api}/v1/forecast")
        show(response, elapsed)
        if response.status != 402:
            raise SystemExit(f"expected 402, got {response.status}: {response.text}")
        params = challenge_params(response)
        invoice = bolt11.decode(params["invoice"])
        say(f"   WWW-Authenticate: L402 macaroon=\"{short(params['macaroon'])}\", invoice=\"{short(params['invoice'])}\"")
        say(f"   invoice: {invoice.amount_msat // 1000} sat, \"{invoice.description}\", payment hash {short(invoice.payment_hash, 8)}")
        identifier = base64.b64decode(params["macaroon"])
        say(f"   the macaroon is bound to that payment hash: {identifier.hex().find(invoice.payment_hash) > 0}")

        step(2, "Paying the invoice from the payer's wallet")
        start = time.perf_counter()
        preimage = lnbits.pay(payer.adminkey, params["invoice"])
        say(f"   paid in {(time.perf_counter() - start) * 1000:.1f} ms; preimage {short(preimage, 8)}")
        credential = f"L402 {params['macaroon']}:{preimage}"

        step(3, "GET /v1/forecast with Authorization: L402 <macaroon>:<preimage>")
        response, elapsed = timed_get(f"{api}/v1/forecast", {"Authorization": credential})
        show(response, elapsed)
        say(f"   upstream answered: {response.text.strip()}")
        if response.status != 200:
            raise SystemExit("the paid request was refused")

        step(4, "Reusing the token: 5 more requests, no new invoice, no call to the node")
        for path in ("/v1/forecast", "/v1/radar", "/v1/alerts", "/v1/forecast?days=3", "/v1/uv"):
            response, elapsed = timed_get(f"{api}{path}", {"Authorization": credential})
            say(f"   {path:<20} HTTP {response.status} in {elapsed * 1000:.1f} ms")
            if response.status != 200:
                raise SystemExit("the token was refused on reuse")

        step(5, "A forged credential (someone else's preimage) never reaches the API")
        forged = f"L402 {params['macaroon']}:{secrets.token_hex(32)}"
        response, elapsed = timed_get(f"{api}/v1/forecast", {"Authorization": forged})
        show(response, elapsed)
        say(f"   reason: {response.json()['reason']} ({response.json()['detail']})")

        step(6, "The same 402 for a person: a browser gets a payable page")
        response, elapsed = timed_get(f"{api}/v1/forecast", {"Accept": "text/html"})
        show(response, elapsed)
        say(f"   {response.headers.get('content-type')}: the invoice as a QR code and text, an \"Open in wallet\" link,")
        say("   \"Pay with WebLN\" where a browser wallet is installed; once paid, the browser lands on the API")
        say(f"   Open it: {BOLD}{api}/v1/forecast{RESET}" + ("" if args.serve else " (with --serve, to try it)"))

        paid_paths = [p for p in upstream.paths() if p.startswith("/v1/")]
        say(f"\n{GREEN}Done.{RESET} The upstream saw {len(paid_paths)} requests on /v1/, all paid.")

        if args.serve:
            say(f"\n{BOLD}Serving. Try:{RESET}")
            say(f"   in a browser: {api}/v1/forecast  (the payable 402 page; pay its invoice with the command below)")
            say(f"   curl -i {api}/health")
            say(f"   curl -i {api}/v1/forecast")
            say(f"   curl -i -H 'Authorization: {credential}' {api}/v1/forecast")
            say(f"   pay an invoice: curl -s -X POST {lnbits.url}/api/v1/payments -H 'X-Api-Key: {payer.adminkey}' "
                "-H 'Content-Type: application/json' -d '{\"out\": true, \"bolt11\": \"<invoice>\"}'")
            say("Ctrl-C (or SIGTERM) to stop.")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if envoy:
            envoy.stop()
        upstream.stop()
        lnbits.stop()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
