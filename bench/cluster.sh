#!/usr/bin/env bash
# Several portal nodes on one PostgreSQL database (issue 9): fan-out and connect rate across
# nodes.
#
# Creates a fresh PostgreSQL database, starts NODES `postern serve` processes on it (release
# build), creates the fixtures through node 1 (an API token, a group, a service account in it
# with its client token, a site, a resource, a policy), then with one postern-loadgen process
# whose sessions go to the nodes in turn (`--also-api-url`):
#   1. connect rate (ROUNDS rounds): baseline = CONNECT_N fresh TCP connections each doing
#      GET /healthz on node 1 from one load-generator process; then CONNECT_N sessions spread
#      over the nodes from one process; ratio sessions/s ÷ connects/s;
#   2. revocation fan-out: PER_NODE sessions on each node, all on one token; the token is
#      revoked through node 1; the latency of each session's disconnect from the moment the
#      DELETE returned (p50 / p99 / max, and the max per node);
#   3. policy change: the same sessions' resource is withdrawn (policy disabled through node 1)
#      and granted again (re-enabled).
# One process holds at most ~19 900 sockets: NODES × PER_NODE must stay under 19 000.
# Prints a Markdown table on stdout; progress on stderr. Stops what it started and drops the
# database on exit.
#
# Usage: bench/cluster.sh              (needs cargo, curl, jq, psql)
# Environment:
#   NODES=3            portal nodes
#   PER_NODE=6000      sessions per node in the fan-out scenarios
#   CONNECT_N=9000     sessions (and healthz connections) per connect-rate round
#   ROUNDS=3           connect-rate rounds
#   CONCURRENCY=256    handshakes in flight
#   POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres   server to create the database on
#   SKIP_BUILD=1       use the existing release binaries
#   KEEP_TMP=1         keep the temporary directory (logs, JSON of every run)
set -euo pipefail

NODES="${NODES:-3}"
PER_NODE="${PER_NODE:-6000}"
CONNECT_N="${CONNECT_N:-9000}"
ROUNDS="${ROUNDS:-3}"
CONCURRENCY="${CONCURRENCY:-256}"
POSTGRES_URL="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$BENCH_DIR/lib.sh"
need curl jq awk psql
(( NODES * PER_NODE < 19000 )) || die "NODES × PER_NODE must stay under 19 000 (one load-generator process)"
build_release

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-cluster.XXXXXX")"
DB="postern_bench_$$_$RANDOM"
psql "$POSTGRES_URL" -qc "CREATE DATABASE $DB" >/dev/null || die "cannot create a database on $POSTGRES_URL"
URL="${POSTGRES_URL%/*}/$DB"
declare -a PIDS=() NODE_ADDR=()
STARTED_AT=$(date +%s)

cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        for f in "$WORK"/node-*.log; do
            [[ -f "$f" ]] || continue
            log "--- last lines of $f ---"
            tail -n 10 "$f" >&2 || true
        done
    fi
    psql "$POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_node() { # start_node K
    start_serve "$WORK/node-$1.log" --database-url "$URL"
    PIDS+=("$SERVE_PID")
    curl -fsS "http://$SERVE_ADDR/readyz" | grep -q '^ready$' || die "node $1 is not ready"
    NODE_ADDR[$1]=$SERVE_ADDR
    log "node $1 up at http://$SERVE_ADDR (pid $SERVE_PID)"
}

api() { # api METHOD PATH [BODY], through node 1
    local method=$1 path=$2 body=${3:-}
    local args=(-fsS -X "$method" -H "Authorization: Bearer $(cat "$WORK/api.token")")
    [[ -n "$body" ]] && args+=(-H 'content-type: application/json' -d "$body")
    curl "${args[@]}" "http://${NODE_ADDR[1]}$path"
}

declare -a ROWS=()
row() { ROWS+=("$1"); }

for k in $(seq 1 "$NODES"); do start_node "$k"; done
"$BIN" api-token create --name bench --database-url "$URL" >"$WORK/api.token" 2>/dev/null
GROUP="$(api POST /v1/groups '{"name":"fleet"}' | jq -er .data.id)"
SA="$(api POST /v1/actors "{\"type\":\"service_account\",\"name\":\"runners\",\"group_ids\":[\"$GROUP\"]}")"
ACTOR="$(jq -er .data.id <<<"$SA")"
jq -er .token.secret <<<"$SA" >"$WORK/client.token"
SITE="$(api POST /v1/sites '{"name":"dc"}' | jq -er .data.id)"
RESOURCE="$(api POST /v1/resources "{\"type\":\"cidr\",\"name\":\"db\",\"address\":\"10.20.0.0/24\",\"site_id\":\"$SITE\"}" | jq -er .data.id)"
POLICY="$(api POST /v1/policies "{\"group_id\":\"$GROUP\",\"resource_id\":\"$RESOURCE\"}" | jq -er .data.id)"
OTHERS=()
for k in $(seq 2 "$NODES"); do OTHERS+=(--also-api-url "http://${NODE_ADDR[$k]}"); done

# 1. connect rate across the nodes, alternating with its baseline
for r in $(seq 1 "$ROUNDS"); do
    log ""
    log "=== connect rate, round $r: healthz x $CONNECT_N on node 1, then $CONNECT_N sessions over $NODES nodes"
    "$LOADGEN" healthz --api-url "http://${NODE_ADDR[1]}" --connections "$CONNECT_N" \
        --concurrency "$CONCURRENCY" --source-ips "$(ips $((10 + 2 * r - 1)))" --rtt-samples 21 \
        --label "healthz-$r" --json >"$WORK/healthz-$r.json"
    "$LOADGEN" sessions --api-url "http://${NODE_ADDR[1]}" "${OTHERS[@]}" \
        --token-file "$WORK/client.token" --sessions "$CONNECT_N" --concurrency "$CONCURRENCY" \
        --source-ips "$(ips $((10 + 2 * r)))" --device-prefix "connect-$r" --hold 0s \
        --label "connect-$r" --json >"$WORK/connect-$r.json"
    H="$(jq -r .connects_per_sec "$WORK/healthz-$r.json")"
    S="$(jq -r .connect.sessions_per_sec "$WORK/connect-$r.json")"
    E="$(jq -r .connect.established "$WORK/connect-$r.json")"
    F="$(jq -r '[.connect.failures[]] | add // 0' "$WORK/connect-$r.json")"
    row "| New sessions/s over $NODES nodes, round $r | $E established, $F failed | healthz on one node: $(fmt "$H") connects/s | **$(fmt "$S") sessions/s** | $(fmt "$S/$H" 3) | – |"
    sleep 2
done

fanout_row() { # fanout_row FILE ROUND LABEL
    local f=$1 i=$(($2 - 1)) label=$3 rtt p50 p99 max got open per ok
    rtt="$(jq -r .healthz_rtt_ms.p50 "$f")"
    p50="$(jq -r ".fanout[$i].latency_from_return_ms.p50" "$f")"
    p99="$(jq -r ".fanout[$i].latency_from_return_ms.p99" "$f")"
    max="$(jq -r ".fanout[$i].latency_from_return_ms.max" "$f")"
    got="$(jq -r ".fanout[$i].received" "$f")"
    open="$(jq -r ".fanout[$i].sessions_open" "$f")"
    per="$(jq -r "[.fanout[$i].per_node[] | (.latency_from_return_ms.max * 10 | round / 10 | tostring)] | join(\" / \")" "$f")"
    ok=$(awk -v m="$max" -v g="$got" -v o="$open" 'BEGIN { print (m < 2000 && g == o) ? "met" : "not met" }')
    row "| $label | $got / $open sessions reached | healthz RTT p50 $(fmt "$rtt" 3) ms | **p50 $(fmt "$p50" 1) / p99 $(fmt "$p99" 1) / max $(fmt "$max" 1) ms** (max per node: $per ms) | max/RTT $(fmt "$max/$rtt" 0)× | last < 2 s: $ok |"
}

FANOUT_N=$((NODES * PER_NODE))
# 2. revocation through node 1
log ""
log "=== revocation fan-out: $FANOUT_N sessions on one token over $NODES nodes"
REVOKE="$(api POST "/v1/actors/$ACTOR/tokens" '{}')"
jq -er .data.secret <<<"$REVOKE" >"$WORK/revoke.token"
REVOKE_ID="$(jq -er .data.id <<<"$REVOKE")"
"$LOADGEN" sessions --api-url "http://${NODE_ADDR[1]}" "${OTHERS[@]}" \
    --token-file "$WORK/revoke.token" --sessions "$FANOUT_N" --concurrency "$CONCURRENCY" \
    --source-ips "$(ips 30)" --device-prefix revoke --api-token-file "$WORK/api.token" \
    --revoke "$ACTOR/$REVOKE_ID" --handshake-timeout 60s --label revoke --json >"$WORK/revoke.json"
fanout_row "$WORK/revoke.json" 1 "Token revoked on node 1 → last of $FANOUT_N sessions on $NODES nodes disconnected"
sleep 2

# 3. policy change through node 1
log ""
log "=== policy-change fan-out: $FANOUT_N sessions over $NODES nodes"
"$LOADGEN" sessions --api-url "http://${NODE_ADDR[1]}" "${OTHERS[@]}" \
    --token-file "$WORK/client.token" --sessions "$FANOUT_N" --concurrency "$CONCURRENCY" \
    --source-ips "$(ips 31)" --device-prefix policy --api-token-file "$WORK/api.token" \
    --policy-change "$POLICY" --handshake-timeout 60s --label policy --json >"$WORK/policy.json"
fanout_row "$WORK/policy.json" 1 "Policy disabled on node 1 → last of $FANOUT_N sessions got resource_removed"
fanout_row "$WORK/policy.json" 2 "Policy enabled on node 1 → last of $FANOUT_N sessions got resource_upserted"

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -n1)" ]] && COMMIT="$COMMIT (dirty tree)"
echo "Cluster run, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) cores, $NODES portal" \
    "nodes on one PostgreSQL database, one load-generator process, $CONCURRENCY handshakes in flight," \
    "$(( $(date +%s) - STARTED_AT )) s of wall time"
echo
echo "| Scenario | Sessions | Baseline (same run) | Result | Ratio to baseline | Target |"
echo "|---|---|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Fan-out latency = instant the session received the message − instant the API call (to node 1)" \
    "returned, both in the load generator's process; healthz RTT = one GET /healthz on a fresh" \
    "connection to node 1, median of 21, measured just before the API call."
