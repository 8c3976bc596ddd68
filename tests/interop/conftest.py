"""Fixtures for the interop tests: the `l402` CLI (built once), the Node peers, a Lightning node
simulator. Missing components fail loudly (never skip): run `./build.sh test`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .peers import CLIENTS, ROOT, L402Cli, NodePeer

sys.path.insert(0, str(ROOT / "tests"))
from sim.launch import start_sim  # noqa: E402


@pytest.fixture(scope="session")
def l402() -> L402Cli:
    """The native CLI, built once per session with `cargo build --bin l402`."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("cargo not found", pytrace=False)
    p = subprocess.run([cargo, "build", "--bin", "l402"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        pytest.fail("cargo build --bin l402 failed:\n" + p.stderr[-4000:], pytrace=False)
    path = ROOT / "target" / "debug" / "l402"
    assert path.is_file(), path
    return L402Cli(path)


@pytest.fixture(scope="session")
def js() -> NodePeer:
    """The npm libraries (tests/clients, installed by `npm ci`), behind tests/interop/js/peer.mjs."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: run ./build.sh test", pytrace=False)
    if not (CLIENTS / "node_modules" / "macaroon").is_dir():
        pytest.fail("tests/clients/node_modules missing: run `npm ci` in tests/clients", pytrace=False)
    peer = NodePeer(node)
    versions = peer("versions")
    # The pinned versions these tests were written against.
    assert versions == {"macaroon": "3.0.4", "lsat-js": "2.0.6", "@getalby/lightning-tools": "9.0.1",
                        "bolt11": "1.4.1", "lsat-js/macaroon": "3.0.4"}, versions
    return peer


@pytest.fixture(scope="module")
def lnd(tmp_path_factory):
    """A simulated LND REST node (regtest) on 127.0.0.1 that issues real signed BOLT11 invoices."""
    sim = start_sim("lnd", tmp_path_factory.mktemp("lnd"))
    try:
        yield sim
    finally:
        sim.stop()
