"""A tiny recording HTTP upstream for the end-to-end tests.

Two listeners on 127.0.0.1:

* the *service* port (the one Envoy routes to) answers 200 with a small JSON
  body for any method and path, and records every request it receives;
* the *control* port (never routed by Envoy) exposes that record:
  ``GET /__log`` returns the JSON list, ``POST /__clear`` empties it.

Tests usually read the record in-process (``Upstream.requests()``); the control
port is there for the demo and for out-of-process checks.

Run standalone: ``python upstream.py [PORT [CONTROL_PORT]]``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import socket

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (same as harness.free_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _service_handler(upstream: "Upstream") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes
        server_version = "l402-test-upstream"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            entry = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"),
                "time": time.time(),
            }
            upstream._record(entry)
            payload = json.dumps(
                {"ok": True, "upstream": "l402-test-upstream", "method": self.command, "path": self.path}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    for m in METHODS:
        setattr(Handler, f"do_{m}", Handler._handle)
    return Handler


def _control_handler(upstream: "Upstream") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes

        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, obj: Any) -> None:
            payload = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.split("?")[0] == "/__log":
                self._reply(200, upstream.requests())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.split("?")[0] == "/__clear":
                upstream.clear()
                self._reply(200, {"cleared": True})
            else:
                self._reply(404, {"error": "not found"})

    return Handler


class Upstream:
    """Recording upstream. Use as a context manager or call start()/stop()."""

    def __init__(self, port: int | None = None, control_port: int | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port()
        self.control_port = control_port or free_port()
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "Upstream":
        for port, handler in ((self.port, _service_handler(self)), (self.control_port, _control_handler(self))):
            srv = _Server((self.host, port), handler)
            t = threading.Thread(target=srv.serve_forever, name=f"upstream-{port}", daemon=True)
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "Upstream":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- record ----------------------------------------------------------
    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._log.append(entry)

    def requests(self) -> list[dict[str, Any]]:
        """Copy of every request received so far (method, path, headers, body, time)."""
        with self._lock:
            return [dict(e) for e in self._log]

    def paths(self) -> list[str]:
        return [e["path"] for e in self.requests()]

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"


def main(argv: list[str]) -> None:  # pragma: no cover - manual use
    port = int(argv[1]) if len(argv) > 1 else None
    cport = int(argv[2]) if len(argv) > 2 else None
    up = Upstream(port, cport).start()
    print(json.dumps({"port": up.port, "control_port": up.control_port}), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        up.stop()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv)
