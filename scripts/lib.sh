# Helpers shared by build.sh and the install scripts. Source it; don't run it.
# shellcheck shell=bash

L402_LOG_DIR=${L402_LOG_DIR:-.run/logs}

log()  { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die()  { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

have() { command -v "$1" >/dev/null 2>&1; }

# run_logged NAME CMD...: run CMD with its output in $L402_LOG_DIR/NAME.log; on failure show the tail.
run_logged() {
    local name=$1; shift
    mkdir -p "$L402_LOG_DIR"
    local logf="$L402_LOG_DIR/$name.log"
    if ! "$@" >"$logf" 2>&1; then
        tail -n 40 "$logf" >&2
        die "$name failed (full log: $logf)"
    fi
}

# Stamp files: a step is skipped when its stamp holds the same key as last time.
# stamp_key PARTS...: a short hash of the given strings and files (a file counts by its content).
stamp_key() {
    local p
    for p in "$@"; do
        if [[ -f $p ]]; then printf 'file %s\n' "$p"; cat "$p"; else printf 'str %s\n' "$p"; fi
    done | sha256sum | cut -c1-16
}
stamp_ok()    { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }
stamp_write() { mkdir -p "$(dirname "$1")"; printf '%s\n' "$2" >"$1"; }

# apt_install PKG...: install Debian packages, only possible as root (CI). Otherwise die with a hint.
apt_install() {
    if [[ $(id -u) -eq 0 ]] && have apt-get; then
        log "apt-get install $*"
        if [[ ! -f .run/.apt-updated ]]; then
            run_logged apt-update apt-get update
            mkdir -p .run && touch .run/.apt-updated
        fi
        DEBIAN_FRONTEND=noninteractive run_logged apt-install apt-get install -y --no-install-recommends "$@"
    else
        die "missing system packages: $* (install them, e.g. sudo apt-get install -y $*)"
    fi
}

# pick_python: print a python3 interpreter for 3.10 <= version < 3.13 (LNbits' range).
pick_python() {
    local c
    for c in ${PYTHON:-} python3.12 python3.11 python3.10 python3; do
        if have "$c" && "$c" -c 'import sys; sys.exit(not ((3,10) <= sys.version_info[:2] < (3,13)))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

# ensure_python_venv_support PY: make `PY -m venv` work (Debian splits ensurepip into python3-venv).
ensure_python_venv_support() {
    local py=$1
    "$py" -c 'import ensurepip, venv' 2>/dev/null && return 0
    local v; v=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${v}-venv"
}
