"""pytest fixtures for the end-to-end tests: real LNbits, real Envoy, recording upstream.

Missing components fail loudly (never skip): run `./build.sh test`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    LNbits, MissingComponent, Envoy, Upstream, Wallet, require_envoy, require_lnbits, require_wasm,
)


class LNbitsSession:
    """The session's LNbits plus its two wallets."""

    def __init__(self, node: LNbits, gateway: Wallet, payer: Wallet):
        self.node = node
        self.gateway = gateway  # the wallet the filter invoices on (inkey)
        self.payer = payer      # a funded wallet that pays the filter's invoices (adminkey)

    def __getattr__(self, name: str) -> Any:  # lnbits.url, lnbits.pay(...), ...
        return getattr(self.node, name)


PAYER_FUNDS_SAT = 10_000_000


@pytest.fixture(scope="session")
def lnbits() -> Iterator[LNbitsSession]:
    """A real LNbits (FakeWallet) for the whole session, with a gateway wallet and a payer wallet
    funded with PAYER_FUNDS_SAT."""
    try:
        require_lnbits()
    except MissingComponent as e:
        pytest.fail(str(e), pytrace=False)
    node = LNbits().start()
    try:
        gateway = node.create_wallet("gateway")
        payer = node.create_wallet("payer")
        node.fund(payer.id, PAYER_FUNDS_SAT)
        sys.stderr.write(f"\n[harness] LNbits ready in {node.start_seconds:.1f}s at {node.url}\n")
        yield LNbitsSession(node, gateway, payer)
    finally:
        node.stop()


@pytest.fixture(scope="session")
def wasm() -> Path:
    """Path of the built l402.wasm (fails if it was not built). Envoy templates can also use ${WASM}."""
    try:
        return require_wasm()
    except MissingComponent as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    """A recording upstream for the whole session (its log is cleared before each test by
    the ``clean_upstream`` fixture)."""
    with Upstream() as up:
        yield up


@pytest.fixture
def clean_upstream(upstream: Upstream) -> Upstream:
    upstream.clear()
    return upstream


@pytest.fixture
def envoy_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Envoy]]:
    """``envoy_factory(config_yaml, vars={...}, **Envoy kwargs)`` → a started Envoy, stopped after
    the test. When the test fails, the tail of each Envoy's log is printed."""
    try:
        require_envoy()
    except MissingComponent as e:
        pytest.fail(str(e), pytrace=False)
    started: list[Envoy] = []

    def make(config: str, vars: Mapping[str, Any] | None = None, **kw: Any) -> Envoy:
        e = Envoy(config, vars=vars, **kw)
        started.append(e)
        return e.start()

    yield make
    for e in started:
        e.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for e in started:
            tail = "\n".join(e.log_text().splitlines()[-30:])
            sys.stderr.write(f"\n--- Envoy log {e.log_path} (tail) ---\n{tail}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
