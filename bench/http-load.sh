#!/usr/bin/env bash
# HTTP load run of the portal on SQLite, with wrk.
#
# Builds `postern` in release, starts `postern serve` on a fresh SQLite data directory,
# creates an API token, a service account (which comes with its first token) and two more
# tokens for it, then runs wrk against:
#   1. GET  /healthz                       (no auth, no database: the in-run baseline)
#   2. GET  /v1/actors/{id}/tokens         (bearer auth + list of the account's 3 tokens)
#   3. POST /v1/actors/{id}/tokens  '{}'   (bearer auth + token creation: a write)
#   4. GET  /v1/actors/{id}/tokens         (again, now a full page of 50 after the creation run)
# and prints a Markdown table on stdout: requests/s, p50/p99 latency and the ratio of each
# scenario's requests/s (and p99) to the baseline's, measured in the same run because the
# machines are shared and noisy. wrk's own output and progress go to stderr.
#
# Usage: bench/http-load.sh            (from anywhere; needs cargo, wrk >= 4, curl, jq)
# Environment:
#   DURATION=10      seconds per scenario
#   THREADS=2        wrk threads
#   CONNECTIONS=32   wrk connections
#   PORT=0           port to listen on; 0 lets the portal pick a free one
#   SKIP_BUILD=1     use the existing target/release/postern instead of building
#   KEEP_TMP=1       keep the temporary directory (database, portal log, wrk outputs)
set -euo pipefail

DURATION="${DURATION:-10}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
PORT="${PORT:-0}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
LUA="$BENCH_DIR/wrk-request.lua"
BIN="$ROOT/target/release/postern"

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in wrk curl jq awk; do
    command -v "$tool" >/dev/null || die "$tool is required (Debian: apt-get install -y $tool)"
done

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building postern (release)..."
    (cd "$ROOT" && cargo build --release -p postern >&2)
fi
[[ -x "$BIN" ]] || die "$BIN not found (build it with: cargo build --release -p postern)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-bench.XXXXXX")"
DATA="$WORK/data"
SERVE_LOG="$WORK/serve.log"
mkdir -p "$DATA"
SERVER_PID=""

cleanup() {
    local status=$?
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f "$SERVE_LOG" ]]; then
        log "--- last lines of the portal log ($SERVE_LOG) ---"
        tail -n 20 "$SERVE_LOG" >&2 || true
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

# --- start the portal ------------------------------------------------------------------
log "starting the portal (data dir $DATA, log $SERVE_LOG)..."
RUST_LOG="${RUST_LOG:-info}" "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" \
    >"$SERVE_LOG" 2>&1 &
SERVER_PID=$!

ADDR=""
for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "the portal exited during start-up"
    ADDR="$(grep -o 'listening on http://[^[:space:]]*' "$SERVE_LOG" | head -n1 | sed 's|.*http://||' || true)"
    if [[ -n "$ADDR" ]] && curl -fsS "http://$ADDR/healthz" 2>/dev/null | grep -q '^ok$'; then
        break
    fi
    ADDR=""
    sleep 0.2
done
[[ -n "$ADDR" ]] || die "the portal did not answer /healthz within 30 s"
BASE="http://$ADDR"
log "portal up at $BASE (pid $SERVER_PID)"

# --- fixtures --------------------------------------------------------------------------
API_TOKEN="$("$BIN" api-token create --name bench --data-dir "$DATA")"
[[ -n "$API_TOKEN" ]] || die "postern api-token create printed no token"

api() { # api METHOD PATH [BODY] -> response body on stdout; fails on a non-2xx status
    local method=$1 path=$2 body=${3:-}
    local args=(-fsS -X "$method" -H "Authorization: Bearer $API_TOKEN")
    if [[ -n "$body" ]]; then
        args+=(-H 'content-type: application/json' -d "$body")
    fi
    curl "${args[@]}" "$BASE$path"
}

ACTOR_ID="$(api POST /v1/actors '{"type":"service_account","name":"bench"}' | jq -er '.data.id')"
for _ in 1 2; do
    api POST "/v1/actors/$ACTOR_ID/tokens" '{}' | jq -e '.data' >/dev/null
done
TOKENS_PATH="/v1/actors/$ACTOR_ID/tokens"
log "service account $ACTOR_ID, plus 2 tokens"

count_tokens() { # all tokens of the service account, following the cursor
    local total=0 cursor="" page n
    while :; do
        page="$(api GET "$TOKENS_PATH?limit=500${cursor:+&cursor=$cursor}")"
        n="$(jq -r '.data | length' <<<"$page")"
        total=$((total + n))
        cursor="$(jq -r '.metadata.next_cursor // empty' <<<"$page")"
        [[ -n "$cursor" ]] || break
    done
    echo "$total"
}

# --- load runs -------------------------------------------------------------------------
declare -a ROWS=()
BASE_RPS=""
BASE_P99=""
CREATED=0

# run_scenario LABEL METHOD PATH TOKEN BODY
run_scenario() {
    local label=$1 method=$2 path=$3 token=$4 body=$5 out="$WORK/wrk-${#ROWS[@]}.txt"
    log ""
    log "=== $label: $method $path (${DURATION}s, ${THREADS} threads, ${CONNECTIONS} connections)"
    # unset BENCH_BODY entirely for bodiless requests (the Lua script checks for nil)
    if [[ -n "$body" ]]; then
        BENCH_METHOD="$method" BENCH_TOKEN="$token" BENCH_BODY="$body" \
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$BASE$path" >"$out"
    else
        BENCH_METHOD="$method" BENCH_TOKEN="$token" \
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$LUA" "$BASE$path" >"$out"
    fi
    grep -v '^BENCH_RESULT' "$out" >&2
    local result
    result="$(grep '^BENCH_RESULT' "$out")" || die "wrk printed no result for $label"
    local requests rps p50 p99 non2xx sockerr
    requests="$(sed -E 's/.* requests=([0-9]+).*/\1/' <<<"$result")"
    rps="$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$result")"
    p50="$(sed -E 's/.* p50_us=([0-9]+).*/\1/' <<<"$result")"
    p99="$(sed -E 's/.* p99_us=([0-9]+).*/\1/' <<<"$result")"
    non2xx="$(sed -E 's/.* non2xx=([0-9]+).*/\1/' <<<"$result")"
    sockerr="$(sed -E 's/.* socket_errors=([0-9]+).*/\1/' <<<"$result")"
    if [[ -z "$BASE_RPS" ]]; then
        BASE_RPS=$rps
        BASE_P99=$p99
    fi
    if [[ "$method" == POST ]]; then
        CREATED=$((CREATED + requests - non2xx))
    fi
    if [[ "$non2xx" != 0 || "$sockerr" != 0 ]]; then
        log "warning: $label had $non2xx non-2xx responses and $sockerr socket errors"
    fi
    ROWS+=("$(awk -v l="$label" -v m="$method" -v r="$requests" -v rps="$rps" -v p50="$p50" \
        -v p99="$p99" -v e="$((non2xx + sockerr))" -v brps="$BASE_RPS" -v bp99="$BASE_P99" 'BEGIN {
        printf "| %s | %d | %.0f | %.2f | %.2f | %d | %.3f | %.1f |", l, r, rps, p50/1000, p99/1000, e,
            rps/brps, (bp99 > 0 ? p99/bp99 : 0)
    }')")
}

# A single request of each kind first, so that a broken endpoint fails loudly instead of
# being load-tested as a stream of errors.
FIXTURE_TOKENS="$(api GET "$TOKENS_PATH" | jq -er '.data | length')" || die "listing the tokens failed"
[[ "$FIXTURE_TOKENS" -ge 2 ]] || die "expected at least 2 tokens, the list has $FIXTURE_TOKENS"

run_scenario 'baseline: GET /healthz (no auth, no DB)' GET /healthz '' ''
run_scenario "GET /v1/actors/{id}/tokens ($FIXTURE_TOKENS tokens)" GET "$TOKENS_PATH" "$API_TOKEN" ''
run_scenario 'POST /v1/actors/{id}/tokens `{}` (create)' POST "$TOKENS_PATH" "$API_TOKEN" '{}'
run_scenario 'GET /v1/actors/{id}/tokens (page of 50, after creation)' GET "$TOKENS_PATH" "$API_TOKEN" ''

TOKEN_COUNT="$(count_tokens)"

# --- report ----------------------------------------------------------------------------
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -n1)" ]]; then
    COMMIT="$COMMIT (dirty tree)"
fi
echo "HTTP load run, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) cores," \
    "$(wrk --version 2>&1 | head -n1 | awk '{print $1, $2}'), ${THREADS} threads," \
    "${CONNECTIONS} connections, ${DURATION} s per scenario, SQLite"
echo
echo "| Scenario | Requests | Req/s | p50 (ms) | p99 (ms) | Errors | Req/s vs baseline | p99 vs baseline |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "Tokens of the service account at the end: $TOKEN_COUNT" \
    "($FIXTURE_TOKENS before the load + $CREATED answered by the creation run; requests still in flight when wrk" \
    "stopped can add up to $CONNECTIONS)"
