#!/usr/bin/env python3
"""A longer soak of l402.wasm in a real Envoy: the same load and checks as tests/e2e/test_soak.py
(mixed valid, forged and unauthenticated requests on keep-alive connections, every upstream request
judged against what was sent), for N minutes, with a summary at the end.

    scripts/soak.py --minutes 10 [--threads 4] [--workers 2] [--seed 1]

Exit status 0 when there was no false accept, no false refusal, no VM crash or reload, and Envoy's
RSS grew less than --max-growth (default 20 %) between the end of warm-up (20 s, or a third of the
run if shorter) and the end. Needs ./build.sh test to have installed Envoy and built l402.wasm.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv" / "bin" / "python"

try:
    import pymacaroons  # noqa: F401
except ImportError:
    if VENV_PY.exists() and Path(sys.prefix).resolve() != VENV_PY.parents[1].resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
    raise

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from attacks import RELOAD_STATS, VM_STATS, Gateway, RecordingUpstream, run_soak  # noqa: E402
from harness import require_envoy, require_wasm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=4, help="client threads (keep-alive connections)")
    ap.add_argument("--workers", type=int, default=2, help="Envoy worker threads (--concurrency)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-growth", type=float, default=0.20, help="allowed RSS growth after warm-up")
    args = ap.parse_args()
    require_envoy()
    require_wasm()
    seconds = args.minutes * 60
    warm = min(20.0, seconds / 3)

    up = RecordingUpstream().start()
    gw = Gateway(up.port, concurrency=args.workers)
    failures: list[str] = []
    try:
        print(f"soak: {seconds:.0f}s, {args.threads} client threads, Envoy --concurrency {args.workers}", flush=True)
        res = run_soak(gw, up, seconds, threads=args.threads, seed=args.seed,
                       log=lambda line: print("  " + line, flush=True))
        print(res.summary())
        start, end = res.rss_at(warm), res.rss[-1][1]
        peak = max(kb for _, kb in res.rss)
        growth = (end - start) / start
        print(f"RSS after warm-up ({warm:.0f}s) {start // 1024} MB, end {end // 1024} MB ({growth:+.1%}), "
              f"peak {peak // 1024} MB")
        if res.allocated:
            a0 = next(v for t, v in res.allocated if t >= warm)
            print(f"server.memory_allocated after warm-up {a0 / 2**20:.1f} MB, end {res.allocated[-1][1] / 2**20:.1f} MB")
        if res.false_accepts:
            failures.append(f"{len(res.false_accepts)} false accepts, e.g. {res.false_accepts[:3]}")
        if res.false_refusals:
            failures.append(f"{len(res.false_refusals)} false refusals, e.g. {res.false_refusals[:5]}")
        if res.errors:
            failures.append(f"{len(res.errors)} client errors, e.g. {res.errors[:5]}")
        if gw.envoy.proc.poll() is not None:
            failures.append("Envoy exited")
        for name in VM_STATS:
            if res.vm_after.get(name) != res.vm_before.get(name):
                failures.append(f"{name}: {res.vm_before.get(name)} -> {res.vm_after.get(name)}")
        for name in RELOAD_STATS:
            if res.vm_after.get(name, 0):
                failures.append(f"{name} = {res.vm_after[name]}")
        for bad in ("panicked", "Wasm VM failed", "Function: proxy_on", "critical"):
            if bad in gw.envoy.log_text():
                failures.append(f"Envoy log contains {bad!r} ({gw.envoy.log_path})")
        if growth > args.max_growth:
            failures.append(f"RSS grew {growth:.1%} after warm-up")
    finally:
        gw.stop()
        up.stop()
    print("FAIL:\n  " + "\n  ".join(failures) if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
