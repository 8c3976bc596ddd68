"""`./build.sh demo --serve` stops everything it started when it is stopped by SIGTERM (what
`timeout`, `kill` and service managers send): LNbits, Envoy and the upstream end with it, and no
process or port is left behind. (Ctrl-C, SIGINT, takes the same path: a KeyboardInterrupt through
the same cleanup; SIGHUP is handled as SIGTERM.)"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import ROOT


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, whatever session or group it moved to."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_demo_stops_everything_it_started():
    signum = signal.SIGTERM
    demo = subprocess.Popen([str(ROOT / "build.sh"), "demo", "--serve"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"})
    seen: list[str] = []
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        for line in demo.stdout:
            seen.append(line)
            if "Serving" in line or time.monotonic() > deadline:
                break
        text = "".join(seen)
        assert "Serving" in text, text[-3000:]
        ports = {int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)", text)}
        started = descendants(demo.pid)
        assert started, "the demo runs LNbits and Envoy as processes"
        assert all(listening(p) for p in ports), ports

        demo.send_signal(signum)
        assert demo.wait(timeout=30) in (0, 128 + signum, 130), text[-2000:]
        deadline = time.monotonic() + 10
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if alive(p)], "processes left running after the demo stopped"
        assert not [p for p in ports if listening(p)]
    finally:
        if demo.poll() is None:
            demo.kill()
        for pid in started | descendants(demo.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
