#!/usr/bin/env bash
# Revocation of a token holding many grants across several gateways (issue 8).
#
# Builds `postern` and `postern-loadgen` in release, starts a portal on a fresh database
# (SQLite by default; POSTGRES=1 for a fresh PostgreSQL database), creates through the API a
# group, a service account in it, a site with a gateway token, a resource and a policy, then
# for each of ROUNDS rounds: a new client token, and `postern-loadgen grants`: GATEWAYS gateway
# sessions of the site, CLIENTS client sessions on the token each granted the resource (the
# portal spreads the grants over the gateways), then the load generator revokes the token and
# times, per gateway, when the last of its grants was withdrawn, from the moment the DELETE
# returned. Baseline in the same run: a single GET /healthz round trip (median of 21), right
# before the call. Prints a Markdown table on stdout, progress on stderr; stops what it started
# and removes its temporary directory on exit.
#
# Usage: bench/grants.sh            (needs cargo, curl, jq; POSTGRES=1 also psql)
# Environment:
#   GATEWAYS=10       gateway sessions
#   CLIENTS=1000      client sessions (one grant each)
#   ROUNDS=3          rounds (a fresh token each)
#   POSTGRES=1        portal on a fresh PostgreSQL database (PG_URL, default
#                     postgres://postgres@127.0.0.1:5432) instead of SQLite
#   SKIP_BUILD=1      use the existing release binaries
#   KEEP_TMP=1        keep the temporary directory
set -euo pipefail

GATEWAYS="${GATEWAYS:-10}"
CLIENTS="${CLIENTS:-1000}"
ROUNDS="${ROUNDS:-3}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$BENCH_DIR/lib.sh"
need curl jq awk
build_release

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-grants.XXXXXX")"
PORTAL_PID=""
PG_DB=""
STARTED_AT=$(date +%s)
cleanup() {
    local status=$?
    if [[ -n "$PORTAL_PID" ]]; then
        kill -TERM "$PORTAL_PID" 2>/dev/null || true
        wait "$PORTAL_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f "$WORK/serve.log" ]]; then
        log "--- last lines of the portal's log ---"
        tail -n 20 "$WORK/serve.log" >&2 || true
    fi
    if [[ -n "$PG_DB" ]]; then
        psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ "${POSTGRES:-0}" == 1 ]]; then
    command -v psql >/dev/null || die "POSTGRES=1 needs psql"
    PG_DB="postern_bench_$$"
    psql "$PG_URL/postgres" -qc "CREATE DATABASE $PG_DB" >/dev/null || die "cannot create $PG_DB at $PG_URL"
    DB_ARGS=(--database-url "$PG_URL/$PG_DB")
    BACKEND="PostgreSQL"
else
    DB_ARGS=(--data-dir "$WORK/data")
    BACKEND="SQLite"
fi

"$BIN" api-token create --name bench "${DB_ARGS[@]}" >"$WORK/api.token" 2>/dev/null
start_serve "$WORK/serve.log" "${DB_ARGS[@]}"
PORTAL_PID=$SERVE_PID
ADDR=$SERVE_ADDR
log "portal up at http://$ADDR ($BACKEND)"

api() { # api METHOD PATH [BODY]
    local args=(-fsS -X "$1" -H "Authorization: Bearer $(cat "$WORK/api.token")")
    [[ -n "${3:-}" ]] && args+=(-H 'content-type: application/json' -d "$3")
    curl "${args[@]}" "http://$ADDR$2"
}
GROUP="$(api POST /v1/groups '{"name":"fleet"}' | jq -er .data.id)"
ACTOR="$(api POST /v1/actors "{\"type\":\"service_account\",\"name\":\"runners\",\"group_ids\":[\"$GROUP\"]}" | jq -er .data.id)"
SITE="$(api POST /v1/sites '{"name":"dc"}' | jq -er .data.id)"
api POST "/v1/sites/$SITE/gateway_tokens" '{}' | jq -er .data.secret >"$WORK/gateway.token"
RESOURCE="$(api POST /v1/resources "{\"type\":\"cidr\",\"name\":\"db\",\"address\":\"10.20.0.0/24\",\"site_id\":\"$SITE\"}" | jq -er .data.id)"
api POST /v1/policies "{\"group_id\":\"$GROUP\",\"resource_id\":\"$RESOURCE\"}" >/dev/null

declare -a ROWS=()
for r in $(seq 1 "$ROUNDS"); do
    answer="$(api POST "/v1/actors/$ACTOR/tokens" '{}')"
    jq -er .data.secret <<<"$answer" >"$WORK/client-$r.token"
    TOKEN="$(jq -er .data.id <<<"$answer")"
    log ""
    log "=== round $r: $CLIENTS grants over $GATEWAYS gateways, then the token is revoked"
    "$LOADGEN" grants --api-url "http://$ADDR" --token-file "$WORK/client-$r.token" \
        --gateway-token-file "$WORK/gateway.token" --resource-id "$RESOURCE" \
        --gateways "$GATEWAYS" --clients "$CLIENTS" --device-prefix "round$r" \
        --source-ips 127.0.9.2-127.0.9.11 --api-token-file "$WORK/api.token" \
        --revoke "$ACTOR/$TOKEN" --label "round-$r" --json >"$WORK/round-$r.json"
    f="$WORK/round-$r.json"
    rtt="$(jq -r .healthz_rtt_ms.p50 "$f")"
    p50="$(jq -r .gateway_emptied_from_return_ms.p50 "$f")"
    max="$(jq -r .gateway_emptied_from_return_ms.max "$f")"
    emptied="$(jq -r .gateways_emptied "$f")"
    grants="$(jq -r .grants "$f")"
    spread="$(jq -r '.grants_per_gateway | "\(min)–\(max)"' "$f")"
    left="$(jq -r .gateways_still_holding "$f")"
    ok=$(awk -v m="$max" -v e="$emptied" -v g="$GATEWAYS" -v l="$left" 'BEGIN { print (m < 1000 && e == g && l == 0) ? "met" : "not met" }')
    ROWS+=("| Round $r: token holding $grants grants over $GATEWAYS gateways ($spread each) revoked | $emptied / $GATEWAYS gateways emptied, $left grants left | healthz RTT p50 $(fmt "$rtt" 3) ms | **last gateway $(fmt "$max" 1) ms** (p50 $(fmt "$p50" 1) ms) | max/RTT $(fmt "$max/$rtt" 0)× | last < 1 s: $ok |")
done

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | head -n1)" ]] && COMMIT="$COMMIT (dirty tree)"
echo "Grants revocation run, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) cores," \
    "portal on $BACKEND, $(( $(date +%s) - STARTED_AT )) s of wall time"
echo
echo "| Scenario | Reached | Baseline (same run) | Result | Ratio to baseline | Target |"
echo "|---|---|---|---|---:|---|"
printf '%s\n' "${ROWS[@]}"
