"""A bad plugin configuration in a real Envoy 1.40: the plugin refuses it (on_configure returns
false), Envoy's log names the field, and nothing ever reaches the upstream.

What Envoy 1.40 does with it (measured here):
* static config: Envoy does not start at all ("Unable to create Wasm plugin l402", exit status 1),
  whatever the failure_policy (FAIL_CLOSED, or even the deprecated fail_open: true);
* `envoy --mode validate` runs the plugin's on_configure too, so it catches the same mistakes;
* a listener delivered over LDS: the update is rejected (listener_manager.lds.update_rejected);
  a listener that was serving keeps its previous, valid config; a new listener never binds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from harness import WASM, Envoy, _tmpdir, free_port, http
from test_filter_support import (
    assert_challenge, get, new_secret, plugin_config, render, shipped, with_plugin_config,
)

FIELD_LINE = "invalid configuration: "


def demo_vars(upstream, lnbits_port: int = 9) -> dict[str, Any]:
    return {"LISTEN_PORT": free_port(), "UPSTREAM_PORT": upstream.port, "LNBITS_PORT": lnbits_port}


def demo_env(secret: str | None = None) -> dict[str, str]:
    return {"L402_SECRETS": secret or new_secret(), "LNBITS_INVOICE_KEY": "invoice-key"}


def mutated(vars: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> str:
    template = shipped("demo.yaml")
    cfg = plugin_config(render(template, vars))
    replacement = change(cfg)
    return with_plugin_config(template, replacement if isinstance(replacement, str) else cfg)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def set_timeout_zero(c):
    c["node"]["timeout_ms"] = 0


def set_price_zero(c):
    c["routes"][1]["price_sat"] = 0


def add_unknown_field(c):
    c["node"]["timeout"] = 5


def bad_secret(c):
    c["secrets"] = ["not-hex"]


BAD_CONFIGS = [
    # id, change, env without, expected log text (after "invalid configuration: ")
    ("timeout_ms", set_timeout_zero, None, "node.timeout_ms: must be between 1 and 60000"),
    ("price", set_price_zero, None, "routes[1].price_sat: price must be a positive amount"),
    ("unknown_field", add_unknown_field, None, "node.timeout: unknown field `timeout`"),
    ("secret_not_hex", bad_secret, None, "secrets[0]: must be hex"),
    ("secret_env_unset", lambda c: None, "L402_SECRETS", "secrets: environment variable L402_SECRETS is not set"),
    ("credential_env_unset", lambda c: None, "LNBITS_INVOICE_KEY",
     "node.credential: environment variable LNBITS_INVOICE_KEY is not set"),
    ("not_json", lambda c: "{ not json", None, "config: not JSON: expected a member name at byte 2"),
]


def run_to_exit(envoy: Envoy, env: dict[str, str]) -> tuple[int, str]:
    """Starts Envoy with only `env` of the test's secrets, and waits for it to give up: its exit
    status and log."""
    base_env = {k: v for k, v in os.environ.items() if k not in ("L402_SECRETS", "LNBITS_INVOICE_KEY")}
    with open(envoy.log_path, "wb") as log:
        proc = subprocess.Popen(envoy.command(), cwd=envoy.dir, env={**base_env, **env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, envoy.log_text()


@pytest.mark.parametrize("change,unset,expected", [b[1:] for b in BAD_CONFIGS], ids=[b[0] for b in BAD_CONFIGS])
def test_envoy_refuses_to_start(upstream, clean_upstream, wasm, change, unset, expected):
    vars = demo_vars(upstream)
    env = demo_env()
    if unset:
        env.pop(unset)
    envoy = Envoy(mutated(vars, change), vars=vars, env=env)
    rc, text = run_to_exit(envoy, env)
    assert rc != 0, text
    assert FIELD_LINE + expected in text, text
    assert "Unable to create Wasm plugin l402" in text
    assert refused(vars["LISTEN_PORT"])
    assert clean_upstream.requests() == []

    # `envoy --mode validate` runs the plugin's configuration too: CI catches the same mistake.
    res = Envoy.validate(envoy.config_path, env={**env, **({unset: ""} if unset else {})})
    assert res.returncode != 0 and FIELD_LINE + expected in res.stdout, res.stdout


def test_fail_open_does_not_open_the_gate_on_a_bad_config(upstream, clean_upstream, wasm):
    """Even the deprecated fail_open: true does not let Envoy serve without a configured plugin."""
    vars = demo_vars(upstream)
    text = mutated(vars, set_timeout_zero).replace("                name: l402\n",
                                                    "                name: l402\n                fail_open: true\n")
    assert "fail_open: true" in text
    envoy = Envoy(text, vars=vars, env=demo_env())
    with pytest.raises(RuntimeError, match="Envoy did not start"):
        envoy.start(timeout=20)
    assert FIELD_LINE + "node.timeout_ms" in envoy.log_text()
    assert refused(vars["LISTEN_PORT"])
    assert clean_upstream.requests() == []


# -- configuration delivered over LDS -------------------------------------------------------------

class LdsEnvoy:
    """Envoy whose listeners come from a watched file (LDS); clusters from envoy/demo.yaml."""

    def __init__(self, upstream, env: dict[str, str]):
        self.vars = demo_vars(upstream)
        self.dir = _tmpdir("lds-")
        self.lds = self.dir / "lds.json"
        doc = yaml.safe_load(Envoy.render(shipped("demo.yaml"), {**self.vars, "ADMIN_PORT": 9, "WASM": str(WASM)}))
        self.listener = doc["static_resources"]["listeners"][0]
        self.write([self.listener])
        boot = {
            "node": {"id": "l402-e2e", "cluster": "l402-e2e"},
            "dynamic_resources": {"lds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": str(self.lds), "watched_directory": {"path": str(self.dir)}}}},
            "static_resources": {"clusters": doc["static_resources"]["clusters"]},
        }
        self.envoy = Envoy(yaml.safe_dump(boot), env=env).start()

    def write(self, listeners: list[dict[str, Any]]) -> None:
        doc = {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **l}
                             for l in listeners]}
        tmp = self.dir / "lds.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.lds)  # the move is what Envoy's watch reacts to

    def listener_with(self, change: Callable[[dict[str, Any]], Any], name: str | None = None,
                      port: int | None = None) -> dict[str, Any]:
        listener = json.loads(json.dumps(self.listener))
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        holder = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]
        cfg = json.loads(holder["value"])
        change(cfg)
        holder["value"] = json.dumps(cfg)
        if name:
            listener["name"] = name
        if port:
            listener["address"]["socket_address"]["port_value"] = port
        return listener

    def wait_stat(self, name: str, value: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.envoy.stats().get(name) != value:
            assert time.monotonic() < deadline, (name, self.envoy.stats().get(name))
            time.sleep(0.05)

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.vars['LISTEN_PORT']}{path}"


@pytest.fixture
def lds_envoy(upstream, wasm):
    g = LdsEnvoy(upstream, demo_env())
    try:
        yield g
    finally:
        g.envoy.stop()


def test_lds_update_with_bad_config_is_rejected_and_old_config_keeps_serving(lds_envoy, clean_upstream):
    g = lds_envoy
    g.wait_stat("listener_manager.lds.update_success", 1)
    assert get(g.url("/health")).status == 200
    assert get(g.url("/nope")).status == 403

    g.write([g.listener_with(set_timeout_zero)])
    g.wait_stat("listener_manager.lds.update_rejected", 1)
    log = g.envoy.wait_log(r"invalid configuration: node\.timeout_ms: must be between 1 and 60000")
    assert log
    g.envoy.wait_log(r"listener 'api' config rejected: Unable to create Wasm plugin l402")
    # The listener still runs the previous config: free route open, unmatched denied, paid route
    # gated (LNbits is not running here, so the challenge fails closed with a 503).
    assert get(g.url("/health")).status == 200
    assert get(g.url("/nope")).json()["reason"] == "no_route"
    r = get(g.url("/v1/x"))
    assert r.status == 503 and r.json()["error"] == "node_unavailable"
    assert [e["path"] for e in clean_upstream.requests()] == ["/health", "/health"]
    assert g.envoy.stats().get("listener_manager.total_listeners_active") == 1


def test_lds_new_listener_with_bad_config_never_binds(lds_envoy, clean_upstream):
    g = lds_envoy
    g.wait_stat("listener_manager.lds.update_success", 1)
    port = free_port()
    g.write([g.listener, g.listener_with(set_price_zero, name="api2", port=port)])
    g.wait_stat("listener_manager.lds.update_rejected", 1)
    g.envoy.wait_log(r"invalid configuration: routes\[1\]\.price_sat")
    assert refused(port)
    assert port not in g.envoy.listener_ports()
    assert get(g.url("/health")).status == 200
    assert [e["path"] for e in clean_upstream.requests()] == ["/health"]
