"""Kong Gateway's Wasm engine (nginx + Kong/ngx_wasm_module + Wasmtime) running l402.wasm, the way
Kong's WasmX host runs a filter chain (minus Kong's Lua layer, which validates the config against
kong/l402.meta.json and attaches the chain).

The engine is not part of the repository: build one with Kong's pins (docs/kong.md, "Testing on
Kong's engine") and name its `sbin/nginx` in the environment:

    L402_KONG_NGINX          engines that call the filter back on every callout (Kong 3.9.x, the latest
                             ngx_wasm_module), separated by `:`; the whole suite runs on each
    L402_KONG_LEGACY_NGINX   engines that do not (Kong 3.4-3.8): only the safety tests run there

Test ids name each engine by the folder above its `sbin/` (e.g. `nginx-kong39`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import ROOT, WASM, free_port, http, wait_tcp  # noqa: E402

RUN_DIR = ROOT / ".run"
TEMPLATE = Path(__file__).resolve().with_name("nginx.conf.tmpl")
SHM_KV = "shm_kv * 16m;"  # Kong 3.7+: nginx_wasm_shm_kv = 16m

SKIPPED = ("Kong engine suite skipped: set L402_KONG_NGINX=/path/to/sbin/nginx (build one with "
           "kong-engine/build.sh, see docs/kong.md)")


def engines(variable: str) -> list[str]:
    return [p for p in os.environ.get(variable, "").split(":") if p]


ENGINES = engines("L402_KONG_NGINX")
LEGACY_ENGINES = engines("L402_KONG_LEGACY_NGINX")


def engine_name(nginx: str) -> str:
    """`…/kong-engine/nginx-kong39/sbin/nginx` → `nginx-kong39`."""
    return Path(nginx).resolve().parents[1].name


def engine_params(names: list[str]) -> list[Any]:
    import pytest
    return [pytest.param(n, id=engine_name(n)) for n in names]


def tls_trust(cert: Path | str) -> str:
    """wasm{} lines of kong.conf's nginx_wasm_tls_* settings: verify the node against `cert`."""
    return f"tls_trusted_certificate {cert}; tls_verify_cert on; tls_verify_host on;"


class Engine:
    """One nginx (master + `workers`) with the filter in front of the API on 127.0.0.1:`api_port`.

    `wasm_extra` holds what Kong's kong.conf `nginx_wasm_*` properties become in `wasm{}`; the default
    is the shared-memory zone Kong 3.7+ makes from `nginx_wasm_shm_kv = 16m`."""

    def __init__(self, nginx: str, api_port: int, config: Mapping[str, Any] | str, *, workers: int = 2,
                 wasm_extra: str = SHM_KV, http_extra: str = "", log_level: str = "info", wasm: Path = WASM):
        self.nginx = nginx
        self.name = engine_name(nginx)
        self.port = free_port()
        RUN_DIR.mkdir(exist_ok=True)
        self.dir = Path(os.path.realpath(RUN_DIR)) / f"kong-{self.name}-{self.port}"
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(exist_ok=True)
        text = config if isinstance(config, str) else json.dumps(config, separators=(",", ":"))
        assert "'" not in text and "\n" not in text, "the filter config goes on one line between single quotes"
        self.conf = self.dir / "nginx.conf"
        template = "".join(line for line in TEMPLATE.read_text().splitlines(True) if not line.startswith("#"))
        self.conf.write_text(template.format(
            workers=workers, prefix=self.dir, log_level=log_level, wasm=wasm, wasm_extra=wasm_extra,
            http_extra=http_extra, api_port=api_port, port=self.port, config=text))
        self.proc: subprocess.Popen | None = None

    @property
    def error_log(self) -> str:
        path = self.dir / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_lines(self, pattern: str) -> list[str]:
        return [line for line in self.error_log.splitlines() if re.search(pattern, line)]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: Mapping[str, str] | None = None, method: str = "GET", timeout: float = 10.0):
        return http(method, self.url(path), headers=dict(headers or {}), timeout=timeout)

    def start(self, timeout: float = 30.0) -> "Engine":
        # master_process on: the master respawns a worker that dies, as under Kong.
        cmd = [self.nginx, "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off; master_process on;"]
        with open(self.dir / "logs" / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        try:
            wait_tcp(self.port, timeout)
            # Every worker has loaded the module (the first request must not race a worker's load).
            if not wait_for(lambda: len(self.log_lines(r'successfully loaded "l402" module')) >= self.workers_wanted(),
                            timeout):
                raise RuntimeError("the workers did not load l402.wasm")
        except Exception as e:
            self.stop()
            raise RuntimeError(f"nginx did not start: {e}\n{self.error_log[-3000:]}") from e
        return self

    def workers_wanted(self) -> int:
        m = re.search(r"worker_processes\s+(\d+)", self.conf.read_text())
        return int(m.group(1)) if m else 1

    def workers(self) -> list[int]:
        """Pids of the master's live worker processes."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.proc = None

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())
