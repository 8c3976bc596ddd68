"""Configs, tokens and small checks shared by the Kong engine tests."""

from __future__ import annotations

import re
import secrets
import threading
from typing import Any

from attacks import ROUTES, credential, py_mint

SECRET = secrets.token_hex(32)
OTHER_SECRET = secrets.token_hex(32)
METERING = ("x-l402-token-id", "x-l402-service", "x-l402-price-msat")
# Credential headers: on Kong they reach the API blanked (nginx forwards a removed request header).
CREDENTIAL_HEADERS = ("authorization", "grpc-metadata-macaroon", "macaroon")


def lnd_node(sim: Any, timeout_ms: int = 1000, port: int | None = None, **extra: Any) -> dict[str, Any]:
    """node{} for the LND simulator (or for 127.0.0.1:`port`): on Kong `upstream` is host:port."""
    port = port or sim.port
    return {"kind": "lnd", "upstream": f"127.0.0.1:{port}", "authority": f"127.0.0.1:{port}",
            "credential": sim.credential, "timeout_ms": timeout_ms, **extra}


def lnd_tls_node(sim: Any, timeout_ms: int = 1000, **extra: Any) -> dict[str, Any]:
    """node{} for the simulator over TLS: the authority is the TLS server name, a host name."""
    return lnd_node(sim, timeout_ms, authority=f"localhost:{sim.port}", tls=True, **extra)


def lnbits_node(ln: Any) -> dict[str, Any]:
    return {"kind": "lnbits", "upstream": f"127.0.0.1:{ln.port}", "authority": f"127.0.0.1:{ln.port}",
            "credential": ln.gateway.inkey}


def config(node: dict[str, Any], routes: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"secrets": [SECRET], "node": node, "routes": ROUTES if routes is None else routes, **extra}


def token(service: str = "weather", *caveats: str, secret: str = SECRET) -> str:
    """A credential minted with the published key derivation (pymacaroons), as if paid."""
    mac, pre = py_mint(secret, [f"services={service}:0", *caveats])
    return credential(mac, pre)


def challenge_of(r: Any) -> tuple[str, str]:
    """(macaroon, invoice) of the L402 challenge in the one WWW-Authenticate value nginx sends."""
    value = r.headers["www-authenticate"]
    l402 = value[value.index(", L402 ") + 2:]
    return re.search(r'macaroon="([^"]+)"', l402).group(1), re.search(r'invoice="([^"]+)"', l402).group(1)


def assert_joined_challenge(r: Any, reason: str | None = None) -> str:
    """A 402 whose two challenges share one WWW-Authenticate value, LSAT first; returns the value."""
    assert r.status == 402, (r.status, r.text)
    values = r.header_values("www-authenticate")
    assert len(values) == 1, values
    value = values[0]
    m = re.fullmatch(r'LSAT macaroon="([^"]+)", invoice="([^"]+)", '
                     r'L402 macaroon="([^"]+)", invoice="([^"]+)", version="0", token="([^"]+)"', value)
    assert m, value
    assert m.group(1) == m.group(3) == m.group(5) and m.group(2) == m.group(4), value
    assert r.headers.get("cache-control") == "no-store"
    body = r.json()
    assert body["invoice"] == m.group(2)
    if reason is not None:
        assert body["reason"] == reason, body
    return value


def api_paths(api: Any) -> list[str]:
    return [entry["path"] for entry in api.requests()]


def handed_off(entry: dict[str, Any]) -> dict[str, str]:
    """The headers of one request the API received, after checking the hand-off on Kong: every
    credential header blanked (never the macaroon or the preimage) and one copy of each metering
    header."""
    names = [k for k, _ in entry["header_list"]]
    for name, value in entry["header_list"]:
        if name in CREDENTIAL_HEADERS:
            assert value == "", f"{name} reached the API with a value: {value[:40]}"
    for name in METERING:
        assert names.count(name) == 1, (name, entry["header_list"])
    return dict(entry["header_list"])


def concurrently(engine: Any, path: str, headers: dict[str, str], n: int) -> list[int]:
    """`n` requests at once, each on its own connection; their statuses."""
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one() -> None:
        barrier.wait()
        s = engine.get(path, headers).status
        with lock:
            statuses.append(s)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses
