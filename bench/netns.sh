# What the network-namespace benchmarks share (bench/dataplane.sh, bench/dns.sh); `source` it
# after bench/lib.sh, with P (the run's prefix of namespaces and interfaces) and WORK set.
# Defines PIDS and NAMESPACES (filled by the caller), and: in_ns, namespaces, veth,
# stop_everything (for the EXIT trap; stop_on_exit installs it), release_binaries, start_portal
# and api (a portal in namespace $1 on :8080, SQLite in $WORK/portal, its API token in
# $WORK/api.token).

declare -a PIDS=()
declare -a NAMESPACES=()

# Foreground commands only: a backgrounded shell function is a subshell, and its $! would not be
# the process to stop (background processes are started with `ip netns exec`, which execs).
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# namespaces NS...: creates them with loopback up; they are deleted by stop_everything
namespaces() {
    local ns
    for ns in "$@"; do
        ip netns add "$ns"
        NAMESPACES+=("$ns")
        ip -n "$ns" link set lo up
    done
}

veth() { # veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B
    ip link add "$2" type veth peer name "$5"
    ip link set "$2" netns "$1"
    ip link set "$5" netns "$4"
    ip -n "$1" addr add "$3" dev "$2"
    ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up
    ip -n "$4" link set "$5" up
}

# stop_everything STATUS: stops the processes, deletes the namespaces (and their /etc/netns
# files), shows the logs' last lines on failure, removes $WORK unless KEEP_TMP=1
stop_everything() {
    local status=$1 pid ns f
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for ns in "${NAMESPACES[@]}"; do
        # Anything still running inside our namespaces is ours.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    if [[ $status -ne 0 ]]; then
        for f in "$WORK"/*.log; do
            [[ -f "$f" ]] || continue
            log "--- last lines of $f ---"
            tail -n 15 "$f" >&2 || true
        done
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

# stop_on_exit: on exit (also on failure or Ctrl-C) stop_everything
stop_on_exit() {
    trap '_status=$?; trap - EXIT INT TERM; stop_everything "$_status"; exit "$_status"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# release_binaries PACKAGE...: builds them in release (unless SKIP_BUILD=1) and checks that
# each binary of that name is in target/release
release_binaries() {
    local package args=()
    for package in "$@"; do args+=(-p "$package"); done
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building $* (release)..."
        (cd "$ROOT" && cargo build --release "${args[@]}" >&2)
    fi
    for package in "$@"; do
        [[ -x "$ROOT/target/release/$package" ]] ||
            die "$ROOT/target/release/$package missing (cargo build --release ${args[*]})"
    done
}

# start_portal NS: `postern serve` on 0.0.0.0:8080 in namespace NS (SQLite in $WORK/portal),
# an API token in $WORK/api.token; returns once /healthz answers
start_portal() {
    PORTAL_NS=$1
    mkdir -p "$WORK/portal"
    "$BIN" api-token create --name bench --data-dir "$WORK/portal" >"$WORK/api.token" 2>/dev/null
    [[ -s "$WORK/api.token" ]] || die "postern api-token create printed no token"
    ip netns exec "$PORTAL_NS" env RUST_LOG=warn,postern::serve=info "$BIN" serve \
        --listen 0.0.0.0:8080 --data-dir "$WORK/portal" >"$WORK/portal.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 150); do
        in_ns "$PORTAL_NS" curl -fsS http://127.0.0.1:8080/healthz 2>/dev/null | grep -q '^ok$' && return 0
        sleep 0.2
    done
    die "the portal did not answer /healthz in 30 s"
}

api() { # api METHOD PATH [BODY]: the portal's REST API with the bench's token
    local args=(-fsS -X "$1" -H "Authorization: Bearer $(cat "$WORK/api.token")")
    [[ -z "${3:-}" ]] || args+=(-H 'content-type: application/json' -d "$3")
    in_ns "$PORTAL_NS" curl "${args[@]}" "http://127.0.0.1:8080$2"
}
