"""Fleet mode end to end: two real Envoys sharing a secret and a real etcd (Debian etcd-server,
started here on loopback). A token used up on one gateway is refused on the other; a token revoked
in etcd is refused by both within the poll interval; an etcd outage fails closed."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from typing import Any, Iterator

import pytest

from harness import _kill_group, _tmpdir, free_port, http, wait_http
from test_filter_support import Backend, Gateway, assert_challenge, new_secret, token_id_of

POLL_S = 1
ROUTES = [{"match": {"path_prefix": "/v1/"}, "service": "weather", "price_sat": 10, "uses": 2, "lifetime_s": 3600}]


class Etcd:
    """A single-member etcd on loopback with its v3 JSON gateway."""

    def __init__(self) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd is not installed: run ./build.sh test (it installs Debian's etcd-server)", pytrace=False)
        self.port, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = _tmpdir("etcd-")
        self.log = open(data / "etcd.log", "wb")
        self.proc = subprocess.Popen([
            binary, "--name", "l402-test", "--data-dir", str(data / "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"l402-test=http://127.0.0.1:{peer}",
        ], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"{self.url}/health", 30, ok=lambda r: r.status == 200, proc=self.proc, what="etcd")

    def put(self, key: str, value: str = "") -> None:
        r = http("POST", f"{self.url}/v3/kv/put", json_body={
            "key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()})
        assert r.status == 200, r.text

    def get(self, key: str) -> str | None:
        r = http("POST", f"{self.url}/v3/kv/range", json_body={"key": base64.b64encode(key.encode()).decode()})
        assert r.status == 200, r.text
        kvs = r.json().get("kvs", [])
        return base64.b64decode(kvs[0]["value"]).decode() if kvs else None

    def stop(self) -> None:
        _kill_group(self.proc)
        self.log.close()


def with_etcd_cluster(port: int):
    def edit(template: str) -> str:
        cluster = (
            "  - name: etcd\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: etcd\n"
            "      endpoints:\n      - lb_endpoints:\n"
            f"        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
        )
        return template.replace("  clusters:\n", "  clusters:\n" + cluster, 1)
    return edit


@pytest.fixture(scope="module")
def fleet(upstream) -> Iterator[dict[str, Any]]:
    etcd = Etcd()
    backend = Backend("lnd")
    secret = new_secret()
    settings = {"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "prefix": "/l402-test/",
                "revocation_poll_s": POLL_S}
    gateways = [Gateway(backend, upstream.port, ROUTES, secrets=secret, template_edit=with_etcd_cluster(etcd.port),
                        fleet=settings) for _ in range(2)]
    try:
        yield {"etcd": etcd, "backend": backend, "gateways": gateways}
    finally:
        for g in gateways:
            g.stop()
        backend.stop()
        etcd.stop()


def test_a_token_used_up_on_one_gateway_is_refused_on_the_other(fleet, clean_upstream):
    a, b = fleet["gateways"]
    credential = a.buy("/v1/forecast")
    assert a.request("/v1/forecast", credential).status == 200
    assert b.request("/v1/forecast", credential).status == 200
    assert fleet["etcd"].get(f"/l402-test/uses/{token_id_of(credential)}") == "2"
    for gateway in (a, b):
        assert_challenge(gateway.request("/v1/forecast", credential), "used_up", "weather")
    assert len(clean_upstream.requests()) == 2


def test_concurrent_uses_never_exceed_the_limit(fleet, clean_upstream):
    from concurrent.futures import ThreadPoolExecutor
    a, b = fleet["gateways"]
    credential = a.buy("/v1/forecast")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: (a, b)[i % 2].request(f"/v1/x?{i}", credential).status, range(8)))
    assert statuses.count(200) == 2, statuses
    assert set(statuses) <= {200, 402}, statuses
    assert len(clean_upstream.requests()) == 2


def test_a_token_revoked_in_etcd_is_refused_by_both_within_the_poll(fleet, clean_upstream):
    a, b = fleet["gateways"]
    credential = a.buy("/v1/forecast")
    fleet["etcd"].put(f"/l402-test/revoked/{token_id_of(credential)}")
    time.sleep(POLL_S + 1.5)  # one poll interval, plus the one-second tick the poll rides on
    for gateway in (a, b):
        assert_challenge(gateway.request("/v1/forecast", credential), "revoked", "weather")
    other = b.buy("/v1/forecast")
    assert b.request("/v1/forecast", other).status == 200
    assert [r["headers"].get("x-l402-token-id") for r in clean_upstream.requests()] == [token_id_of(other)]


def test_an_etcd_outage_fails_closed(upstream, clean_upstream):
    etcd = Etcd()
    backend = Backend("lnd")
    gateway = Gateway(backend, upstream.port, ROUTES, template_edit=with_etcd_cluster(etcd.port),
                      fleet={"upstream": "etcd", "authority": f"127.0.0.1:{etcd.port}", "timeout_ms": 300})
    try:
        credential = gateway.buy("/v1/forecast")
        etcd.stop()
        r = gateway.request("/v1/forecast", credential)
        assert r.status == 503 and r.json()["reason"] == "gateway_error", (r.status, r.text)
        assert clean_upstream.requests() == []
    finally:
        gateway.stop()
        backend.stop()
