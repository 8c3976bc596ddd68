"""A bounded soak (about 60 s): mixed valid, invalid and unauthenticated load on keep-alive
connections through a real Envoy (2 workers) with l402.wasm in front of the LND simulator.

Every request carries a unique number; the upstream's log is judged against what was sent: zero
false accepts (an upstream entry for a request that should not pass, or with another token id than
the one presented), zero false refusals, the same Wasm VMs throughout (no crash, no reload), and
Envoy's memory flat after warm-up. ``scripts/soak.py --minutes N`` runs the same for longer."""

from __future__ import annotations

import sys
import time

from attacks import RELOAD_STATS, VM_STATS, Gateway, RecordingUpstream, run_soak

SOAK_SECONDS = 60
WARM_UP_S = 20
MAX_RSS_GROWTH = 0.20


def test_soak(wasm):
    up = RecordingUpstream().start()
    gw = Gateway(up.port, concurrency=2)
    try:
        res = run_soak(gw, up, SOAK_SECONDS, threads=4)
        sys.stderr.write(f"\n[soak]\n{res.summary()}\n")

        assert len(res.sent) > 1000, "the soak drove too little load to mean anything"
        by_kind: dict[str, int] = {}
        for kind, _, _, _ in res.sent.values():
            by_kind[kind] = by_kind.get(kind, 0) + 1
        for kind in ("paid", "paid-narrowed", "paid-grpc", "free", "no-route", "unauthenticated", "forged"):
            assert by_kind.get(kind, 0) > 20, (kind, by_kind)

        assert res.false_accepts == [], f"{len(res.false_accepts)} false accepts, e.g. {res.false_accepts[:3]}"
        assert res.false_refusals == [], f"{len(res.false_refusals)} false refusals, e.g. {res.false_refusals[:5]}"
        assert res.errors == [], res.errors[:10]
        for kind, should_pass, _, status in res.sent.values():
            if not should_pass:
                assert status in (402, 403), (kind, status)
        passed = sum(1 for _, ok, _, status in res.sent.values() if ok and status == 200)
        assert res.upstream_entries == passed

        # No VM crash or restart: the same VMs, no reload; Envoy alive, no panic logged.
        assert gw.envoy.proc.poll() is None
        for name in VM_STATS:
            assert res.vm_after.get(name) == res.vm_before.get(name), (name, res.vm_before, res.vm_after)
        assert res.vm_after["wasm.envoy.wasm.runtime.v8.active"] >= 2
        for name in RELOAD_STATS:
            assert res.vm_after.get(name, 0) == 0, (name, res.vm_after)
        log = gw.envoy.log_text()
        for bad in ("panicked", "Wasm VM failed", "Function: proxy_on", "critical"):
            assert bad not in log, log[-2000:]

        # Memory: after warm-up, Envoy's RSS grows less than 20 %.
        start, end = res.rss_at(WARM_UP_S), res.rss[-1][1]
        assert end <= start * (1 + MAX_RSS_GROWTH), (start, end, res.rss)

        # The plugin's own count of paid requests agrees with the client's.
        paid_ok = sum(1 for k, _, _, s in res.sent.values() if k.startswith("paid") and s == 200)
        time.sleep(1.5)
        assert gw.counters()["l402_paid_requests"] == paid_ok
    finally:
        gw.stop()
        up.stop()
