"""Fixtures of the Kong engine suite: the engines named in the environment (engine.py), the session's
real LNbits (tests/e2e/conftest.py's fixture), the LND simulator in plain HTTP and over TLS, and a
recording API. Without an engine every test here is skipped, with one plain reason."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE.parent / "sim"))

from attacks import RecordingUpstream  # noqa: E402
from engine import ENGINES, LEGACY_ENGINES, SKIPPED, Engine  # noqa: E402
from harness import MissingComponent, require_wasm  # noqa: E402
from launch import start_sim  # noqa: E402

# The Envoy suites' session LNbits (a gateway wallet and a funded payer), shared rather than copied.
_spec = importlib.util.spec_from_file_location("e2e_conftest", HERE.parent / "e2e" / "conftest.py")
_e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_e2e)
lnbits = _e2e.lnbits


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if ENGINES or LEGACY_ENGINES:
        return
    skip = pytest.mark.skip(reason=SKIPPED)
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ENGINES or LEGACY_ENGINES:
        return
    if any(r.nodeid.startswith("tests/kong/") for r in terminalreporter.stats.get("skipped", [])):
        terminalreporter.write_line(SKIPPED)


@pytest.fixture(scope="session")
def wasm_module() -> Path:
    try:
        return require_wasm()
    except MissingComponent as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def lnd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The LND simulator over plain HTTP; a test that sets a fault sets it back (see `faulty`)."""
    sim = start_sim("lnd", tmp_path_factory.mktemp("kong-lnd"), plain=True)
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def lnd_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The LND simulator over TLS with its self-signed certificate (issued for `localhost`)."""
    sim = start_sim("lnd", tmp_path_factory.mktemp("kong-lnd-tls"))
    yield sim
    sim.stop()


@pytest.fixture
def faulty(lnd: Any, lnd_tls: Any) -> Iterator[None]:
    """Both simulators answer normally again after the test, whatever fault it set."""
    yield
    lnd.set_fault("none")
    lnd_tls.set_fault("none")


@pytest.fixture(scope="session")
def api() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as up:
        yield up


@pytest.fixture
def gateway(request: pytest.FixtureRequest, api: RecordingUpstream,
            wasm_module: Path) -> Iterator[Callable[..., Engine]]:
    """`gateway(config, nginx, **Engine kwargs)` → a started engine serving the filter in front of the
    recording API (or of 127.0.0.1:`api_port`, e.g. a server of `http_extra` in front of it), stopped
    after the test (its error log's tail printed if the test failed); the API's log starts empty."""
    started: list[Engine] = []
    api.clear()

    def make(config: Any, nginx: str, api_port: int | None = None, **kw: Any) -> Engine:
        engine = Engine(nginx, api_port or api.port, config, **kw)
        started.append(engine)
        return engine.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for engine in started:
        if rep is not None and rep.failed:
            sys.stderr.write(f"\n--- {engine.dir}/logs/error.log (tail) ---\n{engine.error_log[-3000:]}\n")
        engine.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
