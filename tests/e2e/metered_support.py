"""Pieces of the metered-route tests: an LLM-like HTTP upstream and a gRPC server-streaming upstream
that report each request's cost, and a raw HTTP/1.1 client that reads chunked bodies and trailers
and can hang up mid-stream.

The HTTP upstream (127.0.0.1, a thread) answers each request as its query string says:

* ``tokens=N``: cost ``N * MSAT_PER_TOKEN`` msat in the cost header; ``cost=TEXT``: the cost header
  with that exact text (malformed costs too); neither: no cost reported;
* ``header=NAME``: the cost header's name (default ``x-l402-cost-msat``);
* ``where=header`` (default) or ``where=trailer``: the cost in the response headers, or in an
  HTTP/1.1 trailer announced by a ``Trailer`` header (the body then chunked; ``announce=0``: the
  trailer comes unannounced);
* ``status=NNN``: the status (default 200);
* ``chunks=N&delay=S``: a chunked, event-stream body of N chunks written S seconds apart (a client
  can hang up mid-stream; the record says whether the stream was written to the end);
* ``hold=NAME``: wait, before answering, until the test calls ``release(NAME)``;
* ``reset=1``: close the connection with a TCP reset instead of answering;
* ``id=X``: a label the test finds the request by.

Every request is recorded with its headers (``x-l402-token-id``, ``x-l402-reserved-msat``,
``x-l402-balance-msat``, …) before it is answered.

The gRPC upstream serves ``/l402.test.Llm/Generate`` (server streaming, raw bytes: no protoc): the
request is JSON ``{"n", "cost", "where", "delay", "id", "code"}``; it streams ``n`` messages, then
reports the cost in trailing metadata (``where: "trailer"``, the default), in the initial metadata
(``"header"``) or not at all (``"none"``), ends with status ``code`` (default OK), and records each call's metadata and whether the client
cancelled it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from harness import free_port
from test_grpc import GrpcServer

MSAT_PER_TOKEN = 10
COST_HEADER = "x-l402-cost-msat"
GRPC_SERVICE = "l402.test.Llm"
GRPC_METHOD = f"/{GRPC_SERVICE}/Generate"


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    """Poll ``cond`` until it returns something truthy (returned) or ``timeout`` passes (its last
    value is returned, falsy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


# -- the HTTP upstream ----------------------------------------------------------------------------

@dataclass
class Seen:
    """One request as the upstream received it, and what it answered."""
    id: str | None
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]                  # lower-case names, last copy
    header_list: list[tuple[str, str]]       # every header line, in order
    cost: str | None = None                  # the cost text it reported (header or trailer)
    status: int | None = None
    finished: bool | None = None             # a stream: written to the end (True) or cut off (False)
    done: threading.Event = field(default_factory=threading.Event)

    def copies(self, name: str) -> list[str]:
        return [v for k, v in self.header_list if k == name.lower()]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class LlmUpstream:
    """The LLM-like HTTP upstream (see the module docstring)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._lock = threading.Lock()
        self._log: list[Seen] = []
        self._gates: dict[str, threading.Event] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "LlmUpstream":
        self._server = _Server(("127.0.0.1", self.port), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"llm-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for gate in list(self._gates.values()):
            gate.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "LlmUpstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- record
    def requests(self) -> list[Seen]:
        with self._lock:
            return list(self._log)

    def by_id(self, rid: str) -> Seen:
        found = [s for s in self.requests() if s.id == rid]
        assert len(found) == 1, (rid, [s.id for s in self.requests()])
        return found[0]

    def clear(self) -> None:
        with self._lock:
            self._log.clear()
            for gate in self._gates.values():
                gate.set()
            self._gates.clear()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self._log.append(seen)

    # -- holding requests
    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self._gates.setdefault(name, threading.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    def held(self, name: str) -> list[Seen]:
        """Requests waiting at (or past) the gate ``name``."""
        return [s for s in self.requests() if s.query.get("hold") == name]


def _handler(up: LlmUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        server_version = "l402-test-llm"

        def log_message(self, *args: Any) -> None:
            pass

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 0:
                self.rfile.read(length)
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            seen = Seen(query.get("id"), self.command, self.path, query,
                        {k.lower(): v for k, v in self.headers.items()},
                        [(k.lower(), v) for k, v in self.headers.items()])
            up._record(seen)
            try:
                self._answer(seen, query)
            finally:
                seen.done.set()

        def _answer(self, seen: Seen, q: dict[str, str]) -> None:
            if "hold" in q:
                up.gate(q["hold"]).wait(timeout=60)
            if q.get("reset"):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True
                return
            cost = str(int(q["tokens"]) * MSAT_PER_TOKEN) if "tokens" in q else q.get("cost")
            seen.cost = cost
            name = q.get("header", COST_HEADER)
            where = q.get("where", "header")
            status = int(q.get("status", "200"))
            seen.status = status
            chunks = int(q.get("chunks", "0"))
            delay = float(q.get("delay", "0"))
            streamed = chunks > 0 or where == "trailer"
            self.send_response(status)
            if cost is not None and where == "header":
                self.send_header(name, cost)
            if streamed:
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                if cost is not None and where == "trailer" and q.get("announce", "1") == "1":
                    self.send_header("Trailer", name)
                self.end_headers()
                try:
                    for i in range(max(chunks, 1)):
                        if i and delay:
                            time.sleep(delay)  # the stream's pace, not a test's timing
                        self._chunk(f"data: {json.dumps({'id': seen.id, 'chunk': i})}\n\n".encode())
                        self.wfile.flush()
                    if delay:
                        time.sleep(delay)
                    tail = b"0\r\n"
                    if cost is not None and where == "trailer":
                        tail += f"{name}: {cost}\r\n".encode()
                    self.wfile.write(tail + b"\r\n")
                    self.wfile.flush()
                    seen.finished = True
                except (BrokenPipeError, ConnectionResetError):
                    seen.finished = False
                    self.close_connection = True
                return
            body = json.dumps({"id": seen.id, "path": seen.path, "status": status,
                               "choices": [{"text": "ok"}]}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            seen.finished = True

    for method in ("GET", "POST", "PUT", "DELETE", "HEAD"):
        setattr(Handler, f"do_{method}", Handler.handle_one)
    return Handler


# -- a raw HTTP/1.1 client: chunked bodies, trailers, hanging up mid-stream -------------------------

@dataclass
class Raw:
    status: int
    headers: list[tuple[str, str]]
    chunks: list[bytes]
    trailers: list[tuple[str, str]]
    complete: bool  # the whole message was read (false: the client hung up, or the server cut it)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return values[-1] if values else None

    def trailer(self, name: str) -> str | None:
        values = [v for k, v in self.trailers if k == name.lower()]
        return values[-1] if values else None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def _fields(lines: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        k, _, v = line.decode("latin-1").partition(":")
        out.append((k.strip().lower(), v.strip()))
    return out


def raw_get(port: int, path: str, headers: dict[str, str] | list[tuple[str, str]] | None = None, *,
            hang_up_after: int | None = None, timeout: float = 15.0) -> Raw:
    """``GET path`` over a fresh HTTP/1.1 connection to 127.0.0.1:``port`` (``TE: trailers``), read
    byte for byte: the status, every header line, a chunked body chunk by chunk and its trailers (or a
    Content-Length body). ``hang_up_after=k``: close the connection after the k-th chunk."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "TE: trailers", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in items]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        f = sock.makefile("rb")
        status = int(f.readline().split(b" ")[1])
        head: list[bytes] = []
        while (line := f.readline().rstrip(b"\r\n")):
            head.append(line)
        hdrs = _fields(head)
        chunks: list[bytes] = []
        trailers: list[tuple[str, str]] = []
        te = ",".join(v for k, v in hdrs if k == "transfer-encoding").lower()
        if "chunked" not in te:
            length = int(next((v for k, v in hdrs if k == "content-length"), "0"))
            data = f.read(length)
            return Raw(status, hdrs, [data], [], len(data) == length)
        while True:
            size_line = f.readline()
            if not size_line:
                return Raw(status, hdrs, chunks, trailers, False)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                tl: list[bytes] = []
                while (line := f.readline().rstrip(b"\r\n")):
                    tl.append(line)
                return Raw(status, hdrs, chunks, _fields(tl), True)
            chunks.append(f.read(size))
            f.readline()
            if hang_up_after is not None and len(chunks) >= hang_up_after:
                return Raw(status, hdrs, chunks, trailers, False)
    finally:
        sock.close()


# -- the gRPC upstream -------------------------------------------------------------------------------

@dataclass
class Call:
    request: dict[str, Any]
    metadata: dict[str, str]
    sent: int = 0
    completed: bool = False     # the server streamed every message
    cancelled: bool = False     # the call ended before that (the client cancelled)
    done: threading.Event = field(default_factory=threading.Event)


class GrpcLlm(GrpcServer):
    """A grpcio server streaming ``n`` messages, then the cost in trailing metadata."""

    def __init__(self) -> None:
        import grpc

        def generate(request: bytes, context: Any):
            req = json.loads(request or b"{}")
            call = Call(req, {k: v for k, v in context.invocation_metadata()})
            with self.lock:
                self.calls.append(call)

            def ended() -> None:
                call.cancelled = not call.completed
                call.done.set()

            context.add_callback(ended)
            where = req.get("where", "trailer")
            cost = req.get("cost")
            if cost is not None and where == "header":
                context.send_initial_metadata(((COST_HEADER, str(cost)),))
            if cost is not None and where == "trailer":
                context.set_trailing_metadata(((COST_HEADER, str(cost)),))
            for i in range(int(req.get("n", 1))):
                if i and req.get("delay"):
                    time.sleep(float(req["delay"]))  # the stream's pace
                if not context.is_active():
                    return
                call.sent += 1
                yield f"token-{i}".encode()
            call.completed = True
            if req.get("code"):
                context.abort(getattr(grpc.StatusCode, req["code"]), "the upstream failed")

        super().__init__(GRPC_SERVICE, {"Generate": grpc.unary_stream_rpc_method_handler(generate)}, workers=8)


def grpc_request(n: int = 3, cost: int | str | None = None, where: str = "trailer", delay: float = 0.0,
                 id: str = "", code: str | None = None) -> bytes:
    """A request to GrpcLlm; ``code`` (e.g. ``"UNAVAILABLE"``): end with that status after the
    messages instead of OK."""
    return json.dumps({"n": n, "cost": cost, "where": where, "delay": delay, "id": id, "code": code}).encode()


@pytest.fixture(scope="module")
def llm() -> Iterator[LlmUpstream]:
    """The LLM-like upstream, for a module's tests (imported by them as a fixture)."""
    with LlmUpstream() as up:
        yield up
