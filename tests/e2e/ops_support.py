"""Shared pieces of the operator-feature tests (test_access_log.py, test_dry_run.py): a gateway on
envoy/access-log.yaml whose access log goes to a file Envoy flushes at once, and that log read
back as records."""

from __future__ import annotations

import re
import time
from typing import Any

from harness import Envoy, _tmpdir
from test_filter_support import Gateway, shipped

LINE = re.compile(r'^\[[^\]]+\] "(?P<method>\S+) (?P<path>\S+)" (?P<status>\d+) \d+ms l402: (?P<record>.*)$')


class LoggingGateway(Gateway):
    """A Gateway on envoy/access-log.yaml (whatever the backend's template), its access log in a
    file flushed every 20 ms instead of every 10 s."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.access_log = _tmpdir("access-log-") / "access.log"
        self.access_log.touch()
        path = self.access_log
        super().__init__(*args, template_edit=lambda _: shipped("access-log.yaml").replace(
            "path: /dev/stdout", f"path: {path}"), **kwargs)

    def start(self, secrets: str | None = None) -> "LoggingGateway":
        self.secret = secrets or self.secret
        self.envoy = Envoy(self.template, vars=self.vars, env=self.backend.env(self.secret),
                           extra_args=["--file-flush-interval-msec", "20"]).start()
        return self

    def log(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The first ``count`` access-log lines, each as method, path, status and the filter's
        record (logfmt fields; ``{}`` where the filter recorded nothing)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.access_log.read_text().splitlines()
            if len(lines) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(lines) >= count, lines
        out = []
        for line in lines[:count]:
            m = LINE.match(line)
            assert m, line
            record = m["record"]
            fields = {} if record == "-" else dict(kv.split("=", 1) for kv in record.split(" "))
            out.append({"method": m["method"], "path": m["path"], "status": int(m["status"]), **fields})
        return out
