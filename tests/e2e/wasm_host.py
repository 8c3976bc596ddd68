"""A proxy-wasm host (ABI 0.2.1) on the Wasmtime runtime that records every call the module makes.

It runs the real l402.wasm and answers its host calls the way Envoy does for the calls the filter
makes (header maps, properties, shared data with CAS, local responses, callouts, time, metrics),
so a test can count the host calls of one request. It is a measuring instrument, not a stand-in for
Envoy: the end-to-end suites run the module in the real Envoy and Kong's real engine.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import wasmtime

OK, NOT_FOUND, BAD_ARGUMENT, CAS_MISMATCH = 0, 1, 2, 8
MAP_REQUEST_HEADERS, MAP_RESPONSE_HEADERS, MAP_CALL_RESPONSE_HEADERS = 0, 2, 6
BUFFER_CALL_RESPONSE_BODY, BUFFER_PLUGIN_CONFIGURATION, BUFFER_VM_CONFIGURATION = 4, 7, 6
ROOT_ID, HTTP_ID = 1, 2


def encode_map(pairs: list[tuple[str, str]]) -> bytes:
    out = struct.pack("<I", len(pairs))
    for k, v in pairs:
        out += struct.pack("<II", len(k.encode()), len(v.encode()))
    for k, v in pairs:
        out += k.encode() + b"\0" + v.encode() + b"\0"
    return out


def decode_map(data: bytes) -> list[tuple[str, str]]:
    (n,) = struct.unpack_from("<I", data, 0)
    sizes = [struct.unpack_from("<II", data, 4 + 8 * i) for i in range(n)]
    pos, pairs = 4 + 8 * n, []
    for klen, vlen in sizes:
        key = data[pos:pos + klen].decode(); pos += klen + 1
        value = data[pos:pos + vlen].decode(); pos += vlen + 1
        pairs.append((key, value))
    return pairs


@dataclass
class Request:
    headers: list[tuple[str, str]]
    properties: dict[str, bytes] = field(default_factory=dict)
    set_properties: dict[str, bytes] = field(default_factory=dict)  # what the module set
    response: tuple[int, list[tuple[str, str]], bytes] | None = None  # a local response, if sent
    callouts: list[dict[str, Any]] = field(default_factory=list)
    continued: bool = False
    response_headers: list[tuple[str, str]] = field(default_factory=list)  # the upstream's answer


class Host:
    """One VM with one root context; `request()` runs one HTTP context through its header phase."""

    def __init__(self, wasm: str, config: str, env: dict[str, str] | None = None):
        self.engine = wasmtime.Engine()
        self.store = wasmtime.Store(self.engine)
        self.module = wasmtime.Module.from_file(self.engine, wasm)
        self.calls: list[str] = []
        self.config = config.encode()
        self.env = env or {}
        self.shared: dict[str, tuple[bytes, int]] = {}
        self.metrics: dict[int, int] = {}
        self.logs: list[tuple[int, str]] = []
        self.now_ns = time.time_ns()
        self.current: Request | None = None
        self.call_response: tuple[list[tuple[str, str]], bytes] = ([], b"")
        self.next_context = HTTP_ID
        self.instance = wasmtime.Instance(self.store, self.module, self._imports())
        self.exports = self.instance.exports(self.store)
        self.memory: wasmtime.Memory = self.exports["memory"]
        self.exports["_initialize"](self.store)
        self.exports["proxy_on_context_create"](self.store, ROOT_ID, 0)
        assert self.exports["proxy_on_vm_start"](self.store, ROOT_ID, 0) == 1
        self.configured = self.exports["proxy_on_configure"](self.store, ROOT_ID, len(self.config)) == 1

    # -- memory --------------------------------------------------------------------------------
    def read(self, ptr: int, size: int) -> bytes:
        return bytes(self.memory.read(self.store, ptr, ptr + size)) if size else b""

    def write_u32(self, ptr: int, value: int) -> None:
        self.memory.write(self.store, struct.pack("<I", value), ptr)

    def give(self, data: bytes, ptr_ptr: int, size_ptr: int) -> int:
        """Copies data into module memory (allocated by the module) and returns OK."""
        ptr = self.exports["proxy_on_memory_allocate"](self.store, max(len(data), 1))
        self.memory.write(self.store, data, ptr)
        self.write_u32(ptr_ptr, ptr)
        self.write_u32(size_ptr, len(data))
        return OK

    # -- host functions ------------------------------------------------------------------------
    def _map(self, kind: int) -> list[tuple[str, str]]:
        if kind == MAP_REQUEST_HEADERS and self.current:
            return self.current.headers
        if kind == MAP_RESPONSE_HEADERS and self.current:
            return self.current.response_headers
        if kind == MAP_CALL_RESPONSE_HEADERS:
            return self.call_response[0]
        return []

    def _imports(self) -> list[Any]:
        funcs: dict[tuple[str, str], Callable[..., Any]] = {
            ("env", "proxy_log"): self.h_log,
            ("env", "proxy_get_current_time_nanoseconds"): self.h_time,
            ("env", "proxy_set_tick_period_milliseconds"): lambda period: OK,
            ("env", "proxy_get_buffer_bytes"): self.h_get_buffer,
            ("env", "proxy_get_header_map_value"): self.h_get_header,
            ("env", "proxy_get_header_map_pairs"): self.h_get_pairs,
            ("env", "proxy_replace_header_map_value"): self.h_replace_header,
            ("env", "proxy_add_header_map_value"): self.h_add_header,
            ("env", "proxy_remove_header_map_value"): self.h_remove_header,
            ("env", "proxy_get_property"): self.h_get_property,
            ("env", "proxy_set_property"): self.h_set_property,
            ("env", "proxy_get_shared_data"): self.h_get_shared,
            ("env", "proxy_set_shared_data"): self.h_set_shared,
            ("env", "proxy_send_local_response"): self.h_local_response,
            ("env", "proxy_http_call"): self.h_http_call,
            ("env", "proxy_define_metric"): self.h_define_metric,
            ("env", "proxy_increment_metric"): lambda mid, by: OK,
            ("env", "proxy_record_metric"): lambda mid, value: OK,
            ("env", "proxy_continue_stream"): self.h_continue,
            ("wasi_snapshot_preview1", "random_get"): self.h_random,
            ("wasi_snapshot_preview1", "environ_sizes_get"): self.h_environ_sizes,
            ("wasi_snapshot_preview1", "environ_get"): self.h_environ,
            ("wasi_snapshot_preview1", "fd_write"): lambda fd, iovs, n, written: 0,
        }
        imports = []
        for imp in self.module.imports:
            ftype = imp.type
            impl = funcs.get((imp.module, imp.name))
            imports.append(wasmtime.Func(self.store, ftype, self._recording(imp.name, impl, ftype)))
        return imports

    def _recording(self, name: str, impl: Callable[..., Any] | None, ftype: wasmtime.FuncType):
        def call(*args: Any) -> Any:
            self.calls.append(name)
            if impl is None:
                raise RuntimeError(f"unexpected host call {name}{args}")
            return impl(*args)
        return call

    def h_log(self, level: int, ptr: int, size: int) -> int:
        self.logs.append((level, self.read(ptr, size).decode("utf-8", "replace")))
        return OK

    def h_time(self, ret: int) -> int:
        self.memory.write(self.store, struct.pack("<Q", self.now_ns), ret)
        return OK

    def h_get_buffer(self, kind: int, start: int, size: int, ptr_ptr: int, size_ptr: int) -> int:
        data = {BUFFER_PLUGIN_CONFIGURATION: self.config, BUFFER_VM_CONFIGURATION: b"",
                BUFFER_CALL_RESPONSE_BODY: self.call_response[1]}.get(kind)
        if data is None:
            return NOT_FOUND
        size &= 0xFFFFFFFF  # an i32 on the wire; the SDK asks for usize::MAX
        return self.give(data[start:start + size], ptr_ptr, size_ptr)

    def h_get_header(self, kind: int, kptr: int, ksize: int, ptr_ptr: int, size_ptr: int) -> int:
        key = self.read(kptr, ksize).decode().lower()
        for k, v in self._map(kind):
            if k == key:
                return self.give(v.encode(), ptr_ptr, size_ptr)
        return NOT_FOUND

    def h_get_pairs(self, kind: int, ptr_ptr: int, size_ptr: int) -> int:
        return self.give(encode_map(self._map(kind)), ptr_ptr, size_ptr)

    def h_replace_header(self, kind: int, kptr: int, ksize: int, vptr: int, vsize: int) -> int:
        key, value = self.read(kptr, ksize).decode().lower(), self.read(vptr, vsize).decode()
        headers = self._map(kind)
        headers[:] = [(k, v) for k, v in headers if k != key] + [(key, value)]
        return OK

    def h_add_header(self, kind: int, kptr: int, ksize: int, vptr: int, vsize: int) -> int:
        self._map(kind).append((self.read(kptr, ksize).decode().lower(), self.read(vptr, vsize).decode()))
        return OK

    def h_remove_header(self, kind: int, kptr: int, ksize: int) -> int:
        key = self.read(kptr, ksize).decode().lower()
        headers = self._map(kind)
        headers[:] = [(k, v) for k, v in headers if k != key]
        return OK

    def h_get_property(self, pptr: int, psize: int, ptr_ptr: int, size_ptr: int) -> int:
        path = self.read(pptr, psize).rstrip(b"\0").replace(b"\0", b".").decode()
        value = self.current.properties.get(path) if self.current else None
        return NOT_FOUND if value is None else self.give(value, ptr_ptr, size_ptr)

    def h_set_property(self, pptr: int, psize: int, vptr: int, vsize: int) -> int:
        assert self.current is not None
        path = self.read(pptr, psize).replace(b"\0", b".").decode()
        self.current.set_properties[path] = self.read(vptr, vsize)
        return OK

    def h_get_shared(self, kptr: int, ksize: int, ptr_ptr: int, size_ptr: int, cas_ptr: int) -> int:
        entry = self.shared.get(self.read(kptr, ksize).decode())
        if entry is None:
            return NOT_FOUND
        self.write_u32(cas_ptr, entry[1])
        return self.give(entry[0], ptr_ptr, size_ptr)

    def h_set_shared(self, kptr: int, ksize: int, vptr: int, vsize: int, cas: int) -> int:
        key = self.read(kptr, ksize).decode()
        entry = self.shared.get(key)
        if cas and (entry is None or entry[1] != cas):
            return CAS_MISMATCH
        self.shared[key] = (self.read(vptr, vsize), (entry[1] if entry else 0) + 1)
        return OK

    def h_local_response(self, status: int, dptr: int, dsize: int, bptr: int, bsize: int,
                         hptr: int, hsize: int, grpc: int) -> int:
        assert self.current is not None
        self.current.response = (status, decode_map(self.read(hptr, hsize)), self.read(bptr, bsize))
        return OK

    def h_http_call(self, uptr: int, usize: int, hptr: int, hsize: int, bptr: int, bsize: int,
                    tptr: int, tsize: int, timeout: int, token_ptr: int) -> int:
        assert self.current is not None
        self.current.callouts.append({"upstream": self.read(uptr, usize).decode(),
                                      "headers": decode_map(self.read(hptr, hsize)),
                                      "body": self.read(bptr, bsize)})
        self.write_u32(token_ptr, len(self.current.callouts))
        return OK

    def h_define_metric(self, kind: int, nptr: int, nsize: int, ret: int) -> int:
        mid = len(self.metrics) + 1
        self.metrics[mid] = 0
        self.write_u32(ret, mid)
        return OK

    def h_continue(self, stream: int) -> int:
        assert self.current is not None
        self.current.continued = True
        return OK

    def h_random(self, ptr: int, size: int) -> int:
        self.memory.write(self.store, os.urandom(size), ptr)
        return 0

    def _environ(self) -> list[bytes]:
        return [f"{k}={v}".encode() + b"\0" for k, v in self.env.items()]

    def h_environ_sizes(self, count_ptr: int, size_ptr: int) -> int:
        env = self._environ()
        self.write_u32(count_ptr, len(env))
        self.write_u32(size_ptr, sum(map(len, env)))
        return 0

    def h_environ(self, ptrs: int, buf: int) -> int:
        for i, entry in enumerate(self._environ()):
            self.write_u32(ptrs + 4 * i, buf)
            self.memory.write(self.store, entry, buf)
            buf += len(entry)
        return 0

    # -- driving the module --------------------------------------------------------------------
    def request(self, headers: list[tuple[str, str]], properties: dict[str, bytes] | None = None,
                response: list[tuple[str, str]] | None = None) -> tuple[Request, list[str]]:
        """One request through its header phases and its log: the request, and the host calls the
        module made (with the upstream's answer headers, `response`, when the request went on)."""
        context = self.next_context
        self.next_context += 1
        self.current = Request([(k.lower(), v) for k, v in headers], properties or {},
                               response_headers=[(k.lower(), v) for k, v in response or [(":status", "200")]])
        self.exports["proxy_on_context_create"](self.store, context, ROOT_ID)
        start = len(self.calls)
        action = self.exports["proxy_on_request_headers"](self.store, context, len(headers), 1)
        self.current.continued = action == 0
        if self.current.continued:
            self.exports["proxy_on_response_headers"](self.store, context, len(self.current.response_headers), 0)
        self.exports["proxy_on_log"](self.store, context)
        made = self.calls[start:]
        self.exports["proxy_on_done"](self.store, context)
        self.exports["proxy_on_delete"](self.store, context)
        return self.current, made
