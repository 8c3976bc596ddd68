"""gRPC through the paywall: a grpcio client calls a grpcio server through a real Envoy (h2c listener,
HTTP/2 to the upstream) with l402.wasm invoicing on the LND simulator. An unpaid call fails with
INTERNAL (13, what Aperture answers) and the challenge in its metadata; a paid call, with the macaroon
(preimage caveat appended) in `grpc-metadata-macaroon` or with `authorization: L402 <mac>:<pre>`,
reaches the server, which is the ground truth for what passed."""

from __future__ import annotations

import base64
import re
import threading
from concurrent import futures
from typing import Any, Iterator

import bolt11
import grpc
import pytest
from pymacaroons.serializers.binary_serializer import BinarySerializer

from harness import free_port
from test_filter_support import Backend, Gateway, inspect

METHOD = "/l402.test.Echo/Say"
PRICE_MSAT = 10_000


class GrpcServer:
    """A grpcio server on loopback with one generic handler, recording each call in `calls`."""

    def __init__(self, service: str, methods: dict[str, Any], workers: int = 4) -> None:
        self.calls: list[Any] = []
        self.lock = threading.Lock()
        self.port = free_port()
        handler = grpc.method_handlers_generic_handler(service, methods)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), handlers=[handler])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    def start(self) -> "GrpcServer":
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None)

    def __enter__(self) -> "GrpcServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()


class EchoServer(GrpcServer):
    """`l402.test.Echo/Say` echoes the request bytes and records each call's metadata."""

    def __init__(self) -> None:
        def say(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self.lock:
                self.calls.append({"request": request, "metadata": list(context.invocation_metadata())})
            return b"echo:" + request

        super().__init__("l402.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})


def h2(template: str) -> str:
    """The shipped template with a listener that also speaks h2c (codec AUTO: HTTP/1.1 or HTTP/2 with
    prior knowledge, as gRPC clients send it) and HTTP/2 to the upstream (gRPC needs it)."""
    stat = "          stat_prefix: api\n"
    assert stat in template
    template = template.replace(stat, stat + "          codec_type: AUTO\n", 1)
    cluster = "  - name: api\n    type: STATIC\n    connect_timeout: 1s\n"
    assert cluster in template
    return template.replace(cluster, cluster + (
        "    typed_extension_protocol_options:\n"
        "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n'
        "        explicit_http_config: { http2_protocol_options: {} }\n"), 1)


@pytest.fixture(scope="module")
def server() -> Iterator[EchoServer]:
    with EchoServer() as s:
        yield s


@pytest.fixture(scope="module")
def gw(wasm, server) -> Iterator[Gateway]:
    backend = Backend("lnd")
    routes = [{"match": {"path_prefix": "/l402.test.Echo/"}, "service": "echo", "price_sat": PRICE_MSAT // 1000,
               "lifetime_s": 600}]
    g = None
    try:
        g = Gateway(backend, server.port, routes, template_edit=h2)
        yield g
    finally:
        if g is not None:
            g.stop()
        backend.stop()


@pytest.fixture
def say(gw, server) -> Iterator[Any]:
    server.clear()
    channel = grpc.insecure_channel(f"127.0.0.1:{gw.port}")
    try:
        yield channel.unary_unary(METHOD)
    finally:
        channel.close()


def refused(call: Any, payload: bytes, metadata: list[tuple[str, str]] | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(payload, metadata=metadata, timeout=10)
    return info.value


def challenge_of(err: grpc.RpcError) -> tuple[str, str]:
    """The L402 challenge in the error's metadata (a trailers-only answer: trailing metadata)."""
    values = [v for k, v in err.trailing_metadata() or [] if k == "www-authenticate"]
    (l402,) = [v for v in values if v.startswith("L402 ")]
    assert [v.split(" ", 1)[0] for v in values] == ["LSAT", "L402"], values
    return (re.search(r'macaroon="([^"]+)"', l402).group(1), re.search(r'invoice="([^"]+)"', l402).group(1))


def with_preimage(mac_b64: str, preimage: str) -> str:
    """The gRPC credential: the macaroon with a `preimage=<hex>` caveat appended, in hex."""
    mac = BinarySerializer().deserialize_raw(base64.b64decode(mac_b64))
    mac = mac.add_first_party_caveat(f"preimage={preimage}")
    return BinarySerializer().serialize_raw(mac).hex()


def test_unpaid_call_gets_internal_with_challenge(gw, say, server):
    err = refused(say, b"hello")
    assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
    assert err.details() == "payment required"
    mac, invoice = challenge_of(err)
    assert bolt11.decode(invoice).amount_msat == PRICE_MSAT
    assert bolt11.decode(invoice).payment_hash == inspect(mac)["identifier"]["payment_hash"]
    assert inspect(mac)["caveats"][0] == "services=echo:0"
    # A forged credential is refused the same way.
    bogus = with_preimage(mac, "00" * 32)
    err = refused(say, b"hello", [("grpc-metadata-macaroon", bogus)])
    assert err.code() == grpc.StatusCode.INTERNAL
    assert server.calls == []
    assert gw.backend.sim.stats()["invoice_create"] >= 2


def test_paid_call_with_macaroon_metadata(gw, say, server):
    mac, invoice = challenge_of(refused(say, b"x"))
    preimage = gw.backend.pay(invoice)
    token = with_preimage(mac, preimage)
    for payload in (b"first", b"second"):
        reply, call = say.with_call(payload, metadata=[("grpc-metadata-macaroon", token)], timeout=10)
        assert reply == b"echo:" + payload and call.code() == grpc.StatusCode.OK
    assert [c["request"] for c in server.calls] == [b"first", b"second"]
    tid = inspect(mac)["identifier"]["token_id"]
    for c in server.calls:
        md = dict(c["metadata"])
        assert "grpc-metadata-macaroon" not in md, "the credential reached the server"
        assert md.get("x-l402-token-id") == tid and md.get("x-l402-service") == "echo"
        assert md.get("x-l402-price-msat") == str(PRICE_MSAT)
    # Also as `macaroon` metadata.
    reply = say(b"third", metadata=[("macaroon", token)], timeout=10)
    assert reply == b"echo:third" and len(server.calls) == 3
    # The same macaroon without its preimage caveat is no credential.
    plain = BinarySerializer().deserialize_raw(base64.b64decode(mac))
    err = refused(say, b"no", [("grpc-metadata-macaroon", BinarySerializer().serialize_raw(plain).hex())])
    assert err.code() == grpc.StatusCode.INTERNAL
    assert len(server.calls) == 3


def test_paid_call_with_authorization_metadata(gw, say, server):
    mac, invoice = challenge_of(refused(say, b"x"))
    preimage = gw.backend.pay(invoice)
    reply = say(b"auth", metadata=[("authorization", f"L402 {mac}:{preimage}")], timeout=10)
    assert reply == b"echo:auth"
    (c,) = server.calls
    md = dict(c["metadata"])
    assert "authorization" not in md
    assert md.get("x-l402-token-id") == inspect(mac)["identifier"]["token_id"]
    err = refused(say, b"x", [("authorization", f"L402 {mac}:{'11' * 32}")])
    assert err.code() == grpc.StatusCode.INTERNAL
    assert len(server.calls) == 1


def test_paid_call_with_the_revised_specs_token_metadata(gw, say, server):
    """The revised L402 spec's gRPC clients send the final token as `token` metadata (hex, with its
    preimage caveat): read on gRPC calls, stripped before the server sees it."""
    mac, invoice = challenge_of(refused(say, b"x"))
    token = with_preimage(mac, gw.backend.pay(invoice))
    reply = say(b"token", metadata=[("token", token)], timeout=10)
    assert reply == b"echo:token"
    (c,) = server.calls
    md = dict(c["metadata"])
    assert "token" not in md, "the credential reached the server"
    assert md.get("x-l402-token-id") == inspect(mac)["identifier"]["token_id"]
    err = refused(say, b"x", [("token", with_preimage(mac, "11" * 32))])
    assert err.code() == grpc.StatusCode.INTERNAL
    assert len(server.calls) == 1
