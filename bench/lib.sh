# What the benchmark scripts share; `source "$BENCH_DIR/lib.sh"` after setting BENCH_DIR.
# Defines ROOT, BIN, LOADGEN and: log, die, need TOOL..., build_release, start_serve, fmt, ips.

ROOT="$(cd "$BENCH_DIR/.." && pwd)"
BIN="$ROOT/target/release/postern"
LOADGEN="$ROOT/target/release/postern-loadgen"

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# need TOOL...: fails naming the first missing tool
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is required (Debian: apt-get install -y $tool)"
    done
}

# build_release: postern and postern-loadgen in release, unless SKIP_BUILD=1
build_release() {
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building postern and postern-loadgen (release)..."
        (cd "$ROOT" && cargo build --release -p postern -p postern-loadgen >&2)
    fi
    [[ -x "$BIN" && -x "$LOADGEN" ]] || die "release binaries missing (cargo build --release -p postern -p postern-loadgen)"
}

# start_serve LOG ARGS...: starts `postern serve --listen 127.0.0.1:0 ARGS` logging to LOG, waits
# until it answers /healthz; sets SERVE_PID and SERVE_ADDR (host:port)
start_serve() {
    local log_file=$1
    shift
    RUST_LOG="${RUST_LOG:-warn,postern::serve=info}" "$BIN" serve --listen 127.0.0.1:0 "$@" \
        >"$log_file" 2>&1 &
    SERVE_PID=$!
    SERVE_ADDR=""
    for _ in $(seq 1 150); do
        kill -0 "$SERVE_PID" 2>/dev/null || die "postern serve exited during start-up: $(tail -n 5 "$log_file")"
        SERVE_ADDR="$(grep -o 'listening on http://[^[:space:]]*' "$log_file" | head -n1 | sed 's|.*http://||' || true)"
        if [[ -n "$SERVE_ADDR" ]] && curl -fsS "http://$SERVE_ADDR/healthz" 2>/dev/null | grep -q '^ok$'; then
            return 0
        fi
        SERVE_ADDR=""
        sleep 0.2
    done
    kill -KILL "$SERVE_PID" 2>/dev/null || true
    die "postern serve did not answer /healthz within 30 s: $(tail -n 5 "$log_file")"
}

fmt() { awk "BEGIN { printf \"%.${2:-0}f\", $1 }"; } # fmt EXPR [DECIMALS]: evaluates EXPR
ips() { echo "127.0.$1.2-127.0.$1.11"; }             # 10 loopback source addresses of block $1
