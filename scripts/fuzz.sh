#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a fixed time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Seeds from the committed corpus fuzz/corpus/<target>/ but writes what it finds to the scratch
# corpus fuzz/target/corpus/<target>/ (gitignored, kept between runs), so the committed corpus
# only changes on purpose (see fuzz/README.md). Prints the executions of each target; exits non-zero
# if a target crashes, with the crash artifact's path (fuzz/artifacts/<target>/…) in the output.
#
# Environment: FUZZ_SANITIZER (address | none, default address), FUZZ_LOG_DIR (default
# fuzz/target/logs).
# Needs the nightly toolchain; installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

seconds=${1:-60}
[[ $# -gt 0 ]] && shift
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || die "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]"
sanitizer=${FUZZ_SANITIZER:-address}
log_dir=${FUZZ_LOG_DIR:-fuzz/target/logs}

have cargo && have rustup || die "cargo/rustup not found: install Rust (https://rustup.rs)"
rustup run nightly rustc --version >/dev/null 2>&1 || {
    log "rustup toolchain install nightly"
    rustup toolchain install nightly --profile minimal
}
have cargo-fuzz || {
    log "cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
}

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Per-target libFuzzer options: let the size-bounded parsers see inputs just past their bounds.
max_len() {
    case $1 in
        credential_header) echo 8500 ;;   # MAX_CREDENTIAL_HEADER is 8320
        payment_credential) echo 8500 ;;  # payment's MAX_CREDENTIAL_HEADER is 8192
        macaroon_decode) echo 4200 ;;     # MAX_MACAROON_BYTES is 4096
        *) echo 4096 ;;
    esac
}

t0=$SECONDS
log "cargo +nightly fuzz build (sanitizer $sanitizer)"
if [[ ${#targets[@]} -eq 1 ]]; then
    cargo +nightly fuzz build --sanitizer "$sanitizer" "${targets[0]}"
else
    cargo +nightly fuzz build --sanitizer "$sanitizer"
fi
log "fuzz build: $((SECONDS - t0)) s"

mkdir -p "$log_dir"
failed=()
for target in "${targets[@]}"; do
    [[ -d fuzz/corpus/$target ]] || die "no committed corpus fuzz/corpus/$target (targets: $(cargo +nightly fuzz list | xargs))"
    scratch=fuzz/target/corpus/$target
    mkdir -p "$scratch"
    logf=$log_dir/$target.log
    args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -max_len="$(max_len "$target")")
    [[ -f fuzz/dict/$target.dict ]] && args+=(-dict="fuzz/dict/$target.dict")
    log "fuzz $target for ${seconds} s (log: $logf)"
    status=0
    cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "$scratch" "fuzz/corpus/$target" -- "${args[@]}" >"$logf" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logf" | awk '{s += $2} END {print s + 0}')
    corpus=$(find "$scratch" -type f | wc -l)
    if [[ $status -eq 0 ]]; then
        printf '%-18s ok     %12s execs  %6s scratch corpus entries\n' "$target" "$execs" "$corpus"
    else
        printf '%-18s FAILED %12s execs  (exit %s)\n' "$target" "$execs" "$status"
        grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY:' "$logf" | head -n 5 >&2 || true
        grep -E 'Test unit written to|^\s*fuzz/artifacts/' "$logf" | sed 's/^\s*/    /' >&2 || true
        warn "$target: full log $logf; reproduce with: cargo +nightly fuzz run $target <artifact>"
        failed+=("$target")
    fi
done
log "fuzzing: $((SECONDS - t0)) s in all"
[[ ${#failed[@]} -eq 0 ]] || die "crashes in: ${failed[*]}"
