#!/usr/bin/env bash
# Client-session benchmarks of the portal (issue 4), portal on SQLite.
#
# Builds `postern` and `postern-loadgen` in release, starts a portal on a fresh SQLite data
# directory, creates an API token, a group, a service account in it (with its first client
# token), a site, a resource and a policy through the API, then runs with postern-loadgen:
#   1. idle hold, one portal: SESSIONS_ONE sessions held HOLD s (past the 30 s peer timeout);
#      the portal's VmRSS idle and with the sessions -> resident memory per session;
#   2. connect rate (ROUNDS rounds): baseline = CONNECT_N fresh TCP connections each doing
#      GET /healthz, then CONNECT_N sessions; ratio sessions/s / healthz-connects/s; then (unless
#      GUARDRAILS=0) CONNECT_N sessions on a token with guardrails set (max_clients 1 000 000,
#      allowed_source_cidrs 127.0.0.0/8), ratio to the plain token's rate of the same round;
#   3. revocation fan-out: FANOUT_N sessions on one token, the load generator revokes it and
#      times each session's disconnect from the moment the DELETE returned;
#   4. policy-change fan-out: FANOUT_N sessions, the policy is disabled (resource_removed) then
#      re-enabled (resource_upserted); baseline for 3 and 4 = a single GET /healthz round trip
#      measured by the same process just before the API call;
#   5. TOTAL sessions on PORTALS portal processes, each with its own SQLite data directory
#      (one portal process holds at most ~19 900 sockets), one load generator per portal, all
#      at once; aggregate connect rate vs an aggregate healthz baseline, RSS per session.
# Every client socket is bound to a loopback source address (127.0.X.2-127.0.X.11, a distinct
# block per scenario) so that the ephemeral port range of one address is never the limit.
# Prints a Markdown table on stdout; progress on stderr. Stops every process it started and
# removes its temporary directory on exit (also on failure or Ctrl-C).
#
# Usage: bench/sessions.sh            (from anywhere; needs cargo, curl, jq)
# Environment:
#   SESSIONS_ONE=19000  sessions on the single portal (idle hold / memory)
#   HOLD=40             seconds the idle sessions are held
#   CONNECT_N=10000     sessions (and healthz connections) per connect-rate round
#   ROUNDS=3            connect-rate rounds
#   FANOUT_N=10000      sessions of the fan-out scenarios
#   TOTAL=100000        sessions of the multi-process run (0 skips it)
#   PORTALS=6           portal processes (and load generators) of the multi-process run
#   CONCURRENCY=256     handshakes in flight per load generator
#   GUARDRAILS=1        also measure the connect rate on a token with guardrails (0 skips it)
#   SKIP_BUILD=1        use the existing release binaries
#   KEEP_TMP=1          keep the temporary directory (logs, JSON of every run)
set -euo pipefail

SESSIONS_ONE="${SESSIONS_ONE:-19000}"
HOLD="${HOLD:-40}"
CONNECT_N="${CONNECT_N:-10000}"
ROUNDS="${ROUNDS:-3}"
FANOUT_N="${FANOUT_N:-10000}"
TOTAL="${TOTAL:-100000}"
PORTALS="${PORTALS:-6}"
CONCURRENCY="${CONCURRENCY:-256}"
GUARDRAILS="${GUARDRAILS:-1}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$BENCH_DIR/lib.sh"
need curl jq awk
build_release

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-sessions.XXXXXX")"
declare -a PIDS=()          # every process started here (portals and load generators)
declare -a PORTAL_PID=() PORTAL_ADDR=() ACTOR_ID=() POLICY_ID=()
STARTED_AT=$(date +%s)

cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $status -ne 0 ]]; then
        for f in "$WORK"/portal-*/serve.log; do
            [[ -f "$f" ]] || continue
            log "--- last lines of $f ---"
            tail -n 10 "$f" >&2 || true
        done
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# start_portal K: a portal on its own SQLite data directory $WORK/portal-K
start_portal() {
    local k=$1 dir="$WORK/portal-$1"
    mkdir -p "$dir/data"
    start_serve "$dir/serve.log" --data-dir "$dir/data"
    PIDS+=("$SERVE_PID")
    PORTAL_PID[$k]=$SERVE_PID
    PORTAL_ADDR[$k]=$SERVE_ADDR
    log "portal $k up at http://$SERVE_ADDR (pid $SERVE_PID)"
}

api() { # api K METHOD PATH [BODY]
    local k=$1 method=$2 path=$3 body=${4:-}
    local args=(-fsS -X "$method" -H "Authorization: Bearer $(cat "$WORK/portal-$k/api.token")")
    if [[ -n "$body" ]]; then
        args+=(-H 'content-type: application/json' -d "$body")
    fi
    curl "${args[@]}" "http://${PORTAL_ADDR[$k]}$path"
}

# fixtures K: API token, group, service account in the group (+ its client token), site,
# resource, policy group -> resource.
fixtures() {
    local k=$1 dir="$WORK/portal-$1"
    "$BIN" api-token create --name bench --data-dir "$dir/data" >"$dir/api.token" 2>/dev/null
    [[ -s "$dir/api.token" ]] || die "postern api-token create printed no token"
    local group sa site resource
    group="$(api "$k" POST /v1/groups '{"name":"fleet"}' | jq -er .data.id)"
    sa="$(api "$k" POST /v1/actors "{\"type\":\"service_account\",\"name\":\"runners\",\"group_ids\":[\"$group\"]}")"
    ACTOR_ID[$k]="$(jq -er .data.id <<<"$sa")"
    jq -er .token.secret <<<"$sa" >"$dir/client.token"
    site="$(api "$k" POST /v1/sites '{"name":"dc"}' | jq -er .data.id)"
    resource="$(api "$k" POST /v1/resources "{\"type\":\"cidr\",\"name\":\"db\",\"address\":\"10.20.0.0/24\",\"site_id\":\"$site\"}" | jq -er .data.id)"
    POLICY_ID[$k]="$(api "$k" POST /v1/policies "{\"group_id\":\"$group\",\"resource_id\":\"$resource\"}" | jq -er .data.id)"
}

# new_token K NAME [BODY]: another client token of the service account (BODY: its JSON, e.g.
# guardrails); file $WORK/portal-K/NAME.token; prints its id
new_token() {
    local k=$1 name=$2 body=${3:-'{}'} answer
    answer="$(api "$k" POST "/v1/actors/${ACTOR_ID[$k]}/tokens" "$body")"
    jq -er .data.secret <<<"$answer" >"$WORK/portal-$k/$name.token"
    jq -er .data.id <<<"$answer"
}


declare -a ROWS=()
row() { ROWS+=("$1"); }

# --- one portal ------------------------------------------------------------------------
start_portal 0
fixtures 0
sleep 1
RSS_IDLE="$(rss_kib "${PORTAL_PID[0]}")"
log "portal 0 idle: VmRSS $RSS_IDLE KiB"

# 1. idle hold + memory per session
log ""
log "=== idle hold: $SESSIONS_ONE sessions for ${HOLD}s on one portal"
rm -f "$WORK/ready-hold"
"$LOADGEN" sessions --api-url "http://${PORTAL_ADDR[0]}" --token-file "$WORK/portal-0/client.token" \
    --sessions "$SESSIONS_ONE" --concurrency "$CONCURRENCY" --source-ips "$(ips 10)" \
    --device-prefix hold --hold "${HOLD}s" --ready-file "$WORK/ready-hold" --label hold --json \
    >"$WORK/hold.json" &
LG=$!
PIDS+=("$LG")
for _ in $(seq 1 600); do [[ -f "$WORK/ready-hold" ]] && break; sleep 0.1; done
[[ -f "$WORK/ready-hold" ]] || die "the idle-hold load generator did not finish connecting in 60 s"
RSS_MAX=0
for _ in $(seq 1 $((HOLD - 2))); do   # one sample a second while the sessions are held
    r="$(rss_kib "${PORTAL_PID[0]}")"
    (( r > RSS_MAX )) && RSS_MAX=$r
    RSS_LAST=$r
    sleep 1
done
wait "$LG" || die "the idle-hold load generator failed"
HOLD_EST="$(jq -r .connect.established "$WORK/hold.json")"
HOLD_ALIVE="$(jq -r .alive_at_end_of_hold "$WORK/hold.json")"
PER_SESSION="$(awk -v a="$RSS_LAST" -v i="$RSS_IDLE" -v n="$HOLD_EST" 'BEGIN { printf "%.2f", (a - i) / n }')"
PER_SESSION_MAX="$(awk -v a="$RSS_MAX" -v i="$RSS_IDLE" -v n="$HOLD_EST" 'BEGIN { printf "%.2f", (a - i) / n }')"
log "idle hold: $HOLD_EST established, $HOLD_ALIVE alive after ${HOLD}s; RSS idle $RSS_IDLE KiB, with sessions $RSS_LAST KiB (max $RSS_MAX) -> $PER_SESSION KiB/session (max $PER_SESSION_MAX)"
MEM_OK=$(awk -v p="$PER_SESSION_MAX" 'BEGIN { print (p <= 16) ? "met" : "not met" }')
row "| Idle sessions held by one portal | $HOLD_EST established, $HOLD_ALIVE still open after ${HOLD} s | RSS idle $(fmt "$RSS_IDLE/1024" 1) MiB → $(fmt "$RSS_MAX/1024" 1) MiB (max) | **$PER_SESSION_MAX KiB/session** (last sample: $PER_SESSION) | – | ≤ 16 KiB/session: $MEM_OK |"
sleep 3

# 2. connect rate, alternating with its baseline
declare -a PLAIN_RATES=() GUARDED_RATES=()
if [[ "$GUARDRAILS" == 1 ]]; then
    new_token 0 guarded '{"name":"guarded","max_clients":1000000,"allowed_source_cidrs":["127.0.0.0/8"]}' >/dev/null
fi
# guarded_round R: CONNECT_N sessions on the token with guardrails; sets G, GE, GF.
guarded_round() {
    local r=$1
    log "=== connect rate, round $r: $CONNECT_N sessions on a token with guardrails"
    "$LOADGEN" sessions --api-url "http://${PORTAL_ADDR[0]}" --token-file "$WORK/portal-0/guarded.token" \
        --sessions "$CONNECT_N" --concurrency "$CONCURRENCY" --source-ips "$(ips $((70 + r)))" \
        --device-prefix "guarded-$r" --hold 0s --label "guarded-$r" --json >"$WORK/guarded-$r.json"
    G="$(jq -r .connect.sessions_per_sec "$WORK/guarded-$r.json")"
    GE="$(jq -r .connect.established "$WORK/guarded-$r.json")"
    GF="$(jq -r '[.connect.failures[]] | add // 0' "$WORK/guarded-$r.json")"
    sleep 2
}

for r in $(seq 1 "$ROUNDS"); do
    log ""
    log "=== connect rate, round $r: baseline healthz x $CONNECT_N, then $CONNECT_N sessions"
    # Every other round the token with guardrails goes first, so that neither is always
    # measured on a portal just warmed (or just loaded) by the other.
    if [[ "$GUARDRAILS" == 1 ]] && (( r % 2 == 0 )); then guarded_round "$r"; fi
    "$LOADGEN" healthz --api-url "http://${PORTAL_ADDR[0]}" --connections "$CONNECT_N" \
        --concurrency "$CONCURRENCY" --source-ips "$(ips $((10 + 2 * r - 1)))" --rtt-samples 21 \
        --label "healthz-$r" --json >"$WORK/healthz-$r.json"
    "$LOADGEN" sessions --api-url "http://${PORTAL_ADDR[0]}" --token-file "$WORK/portal-0/client.token" \
        --sessions "$CONNECT_N" --concurrency "$CONCURRENCY" --source-ips "$(ips $((10 + 2 * r)))" \
        --device-prefix "connect-$r" --hold 0s --label "connect-$r" --json >"$WORK/connect-$r.json"
    H="$(jq -r .connects_per_sec "$WORK/healthz-$r.json")"
    S="$(jq -r .connect.sessions_per_sec "$WORK/connect-$r.json")"
    E="$(jq -r .connect.established "$WORK/connect-$r.json")"
    F="$(jq -r '[.connect.failures[]] | add // 0' "$WORK/connect-$r.json")"
    OK=$(awk -v s="$S" 'BEGIN { print (s >= 5000) ? "met" : "not met" }')
    row "| New sessions/s, round $r ($CONNECT_N sessions, $CONCURRENCY handshakes in flight) | $E established, $F failed | healthz: $(fmt "$H") connects/s | **$(fmt "$S") sessions/s** | $(fmt "$S/$H" 3) | ≥ 5 000/s: $OK |"
    sleep 2
    if [[ "$GUARDRAILS" == 1 ]]; then
        (( r % 2 == 1 )) && guarded_round "$r"
        PLAIN_RATES+=("$S")
        GUARDED_RATES+=("$G")
        order=$([[ $((r % 2)) == 0 ]] && echo "before" || echo "after")
        row "| New sessions/s with guardrails (max_clients, allowed_source_cidrs), round $r, run $order the plain token | $GE established, $GF failed | the plain token's rate of this round: $(fmt "$S") sessions/s | **$(fmt "$G") sessions/s** | $(fmt "$G/$S" 3) | – |"
    fi
done
if [[ "$GUARDRAILS" == 1 ]]; then
    median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    MP="$(median "${PLAIN_RATES[@]}")"
    MG="$(median "${GUARDED_RATES[@]}")"
    GOK=$(awk -v g="$MG" -v p="$MP" 'BEGIN { print (g >= 0.9 * p) ? "met" : "not met" }')
    row "| New sessions/s with guardrails vs without, median of $ROUNDS rounds | – | plain token: $(fmt "$MP") sessions/s | **$(fmt "$MG") sessions/s** | $(fmt "$MG/$MP" 3) | no worse (≥ 0.9): $GOK |"
fi

# 3. revocation fan-out
log ""
log "=== revocation fan-out: $FANOUT_N sessions on one token"
REVOKE_TOKEN="$(new_token 0 revoke)"
"$LOADGEN" sessions --api-url "http://${PORTAL_ADDR[0]}" --token-file "$WORK/portal-0/revoke.token" \
    --sessions "$FANOUT_N" --concurrency "$CONCURRENCY" --source-ips "$(ips 30)" \
    --device-prefix revoke --api-token-file "$WORK/portal-0/api.token" \
    --revoke "${ACTOR_ID[0]}/$REVOKE_TOKEN" --label revoke --json >"$WORK/revoke.json"
fanout_row() { # fanout_row FILE ROUND LABEL
    local f=$1 i=$(($2 - 1)) label=$3 rtt p50 p99 max got open ok
    rtt="$(jq -r .healthz_rtt_ms.p50 "$f")"
    p50="$(jq -r ".fanout[$i].latency_from_return_ms.p50" "$f")"
    p99="$(jq -r ".fanout[$i].latency_from_return_ms.p99" "$f")"
    max="$(jq -r ".fanout[$i].latency_from_return_ms.max" "$f")"
    got="$(jq -r ".fanout[$i].received" "$f")"
    open="$(jq -r ".fanout[$i].sessions_open" "$f")"
    ok=$(awk -v m="$max" -v g="$got" -v o="$open" 'BEGIN { print (m < 1000 && g == o) ? "met" : "not met" }')
    row "| $label | $got / $open sessions reached | healthz RTT p50 $(fmt "$rtt" 3) ms | **p50 $(fmt "$p50" 1) / p99 $(fmt "$p99" 1) / max $(fmt "$max" 1) ms** | max/RTT $(fmt "$max/$rtt" 0)× | last < 1 s: $ok |"
}
fanout_row "$WORK/revoke.json" 1 "Token revoked → last of $FANOUT_N sessions disconnected"
sleep 2

# 4. policy-change fan-out
log ""
log "=== policy-change fan-out: $FANOUT_N sessions, policy disabled then re-enabled"
"$LOADGEN" sessions --api-url "http://${PORTAL_ADDR[0]}" --token-file "$WORK/portal-0/client.token" \
    --sessions "$FANOUT_N" --concurrency "$CONCURRENCY" --source-ips "$(ips 31)" \
    --device-prefix policy --api-token-file "$WORK/portal-0/api.token" \
    --policy-change "${POLICY_ID[0]}" --label policy --json >"$WORK/policy.json"
fanout_row "$WORK/policy.json" 1 "Policy disabled → last of $FANOUT_N sessions got resource_removed"
fanout_row "$WORK/policy.json" 2 "Policy enabled → last of $FANOUT_N sessions got resource_upserted"

kill -TERM "${PORTAL_PID[0]}" 2>/dev/null || true
wait "${PORTAL_PID[0]}" 2>/dev/null || true

# 5. many sessions over several portal processes
MULTI_NOTE=""
if (( TOTAL > 0 )); then
    log ""
    log "=== $TOTAL sessions over $PORTALS portals (own SQLite data directory each)"
    PER=$((TOTAL / PORTALS))
    EXTRA=$((TOTAL % PORTALS))
    (( PER + 1 <= 19000 )) || die "TOTAL/PORTALS must stay under 19 000 sessions per process"
    RSS_IDLE_SUM=0
    for k in $(seq 1 "$PORTALS"); do
        start_portal "$k"
        fixtures "$k"
    done
    sleep 1
    for k in $(seq 1 "$PORTALS"); do
        RSS_IDLE_SUM=$((RSS_IDLE_SUM + $(rss_kib "${PORTAL_PID[$k]}")))
    done
    # aggregate baseline: one healthz generator per portal, all at once
    declare -a HZ=()
    for k in $(seq 1 "$PORTALS"); do
        "$LOADGEN" healthz --api-url "http://${PORTAL_ADDR[$k]}" --connections 3000 \
            --concurrency "$CONCURRENCY" --source-ips "$(ips $((40 + k)))" --rtt-samples 1 \
            --label "multi-healthz-$k" --json >"$WORK/multi-healthz-$k.json" &
        HZ+=($!)
        PIDS+=($!)
    done
    for pid in "${HZ[@]}"; do wait "$pid" || die "a healthz generator failed"; done
    HZ_RATE="$(jq -s '(map(.ok) | add) / (((map(.end_unix_us) | max) - (map(.start_unix_us) | min)) / 1e6)' "$WORK"/multi-healthz-*.json)"
    declare -a LGS=()
    for k in $(seq 1 "$PORTALS"); do
        n=$PER
        (( k <= EXTRA )) && n=$((n + 1))
        rm -f "$WORK/ready-multi-$k"
        "$LOADGEN" sessions --api-url "http://${PORTAL_ADDR[$k]}" --token-file "$WORK/portal-$k/client.token" \
            --sessions "$n" --concurrency "$CONCURRENCY" --source-ips "$(ips $((60 + k)))" \
            --device-prefix "multi-$k" --hold "${HOLD}s" --handshake-timeout 60s \
            --ready-file "$WORK/ready-multi-$k" --label "multi-$k" --json >"$WORK/multi-$k.json" &
        LGS+=($!)
        PIDS+=($!)
    done
    for _ in $(seq 1 1200); do
        ready=0
        for k in $(seq 1 "$PORTALS"); do [[ -f "$WORK/ready-multi-$k" ]] && ready=$((ready + 1)); done
        (( ready == PORTALS )) && break
        sleep 0.1
    done
    (( ready == PORTALS )) || die "the load generators did not finish connecting in 120 s"
    sleep $((HOLD / 2))
    RSS_SUM=0
    for k in $(seq 1 "$PORTALS"); do
        RSS_SUM=$((RSS_SUM + $(rss_kib "${PORTAL_PID[$k]}")))
    done
    OPEN_NOW="$(cat "$WORK"/ready-multi-* | awk '{ s += $1 } END { print s }')"
    for pid in "${LGS[@]}"; do wait "$pid" || die "a load generator failed"; done
    M_EST="$(jq -s 'map(.connect.established) | add' "$WORK"/multi-[0-9]*.json)"
    M_ALIVE="$(jq -s 'map(.alive_at_end_of_hold) | add' "$WORK"/multi-[0-9]*.json)"
    M_FAIL="$(jq -s 'map([.connect.failures[]] | add // 0) | add' "$WORK"/multi-[0-9]*.json)"
    M_RATE="$(jq -s '(map(.connect.established) | add) / (((map(.connect.last_init_unix_us) | max) - (map(.connect.first_attempt_unix_us) | min)) / 1e6)' "$WORK"/multi-[0-9]*.json)"
    M_PER="$(awk -v a="$RSS_SUM" -v i="$RSS_IDLE_SUM" -v n="$M_EST" 'BEGIN { printf "%.2f", (a - i) / n }')"
    LG_RSS="$(jq -s 'map(.peak_rss_kib) | max' "$WORK"/multi-[0-9]*.json)"
    OK=$(awk -v e="$M_ALIVE" -v t="$TOTAL" 'BEGIN { print (e >= t) ? "met" : "not met" }')
    row "| $TOTAL idle sessions on $PORTALS portal processes (SQLite each), $PORTALS load generators | $M_EST established ($M_FAIL failed), $M_ALIVE still open after ${HOLD} s | RSS of the portals $(fmt "$RSS_IDLE_SUM/1024" 1) MiB idle → $(fmt "$RSS_SUM/1024" 1) MiB | **$M_PER KiB/session**; all held at once | – | 100 000 concurrent: $OK |"
    MOK=$(awk -v s="$M_RATE" 'BEGIN { print (s >= 5000) ? "met" : "not met" }')
    row "| New sessions/s, $PORTALS portals in parallel ($TOTAL sessions) | $M_EST established | healthz, $PORTALS×3000 in parallel: $(fmt "$HZ_RATE") connects/s | **$(fmt "$M_RATE") sessions/s** | $(fmt "$M_RATE/$HZ_RATE" 3) | ≥ 5 000/s: $MOK |"
    MULTI_NOTE="Multi-process run: load generators' peak RSS $(fmt "$LG_RSS/1024" 1) MiB each at most."
fi

# --- report ----------------------------------------------------------------------------
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -n1)" ]]; then
    COMMIT="$COMMIT (dirty tree)"
fi
echo "Client-session run, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) cores," \
    "portal on SQLite, $CONCURRENCY handshakes in flight per load generator," \
    "$(( $(date +%s) - STARTED_AT )) s of wall time"
echo
echo "| Scenario | Sessions | Baseline (same run) | Result | Ratio to baseline | Target |"
echo "|---|---|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
echo
[[ -n "$MULTI_NOTE" ]] && echo "$MULTI_NOTE"
echo "Fan-out latency = instant the session received the message − instant the API call returned" \
    "(both in the load generator's process); healthz RTT = one GET /healthz on a fresh connection," \
    "median of 21, measured by the same process just before the API call."
