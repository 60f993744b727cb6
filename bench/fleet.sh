#!/usr/bin/env bash
# A fleet on one token: listing and filtering its client devices in the API and in the web UI.
#
# Builds `postern` and `postern-loadgen` in release, starts a portal on a fresh SQLite data
# directory, creates a service account, opens DEVICES client sessions on its one token with
# postern-loadgen (each leaves a device row), blocks BLOCKED of them, signs an administrator in
# to the web UI, then times REQUESTS sequential requests on one keep-alive connection (curl's
# own per-transfer time: what the portal takes, plus loopback) for each of:
#   baseline   GET /healthz (no auth, no database)
#   API        GET /v1/clients?actor_id=A (first page of 50), a page in the middle, a search
#              (?q=), the blocked ones (?blocked=true), one device by id (?device_id=)
#   web UI     GET /actors/A (the service account's page: tokens, first 50 clients and the
#              count), with a search, with the blocked filter, a page in the middle
# and prints a Markdown table: p50 / p90 / p99 in ms and p50 relative to the baseline's p50,
# measured in the same run (the machines are shared and noisy).
#
# Usage: bench/fleet.sh      (needs cargo, curl, jq, awk)
# Environment:
#   DEVICES=10000    client devices on the token
#   BLOCKED=10       of which blocked
#   REQUESTS=200     requests per scenario
#   SKIP_BUILD=1     use the existing release binaries
#   KEEP_TMP=1       keep the temporary directory
set -euo pipefail

DEVICES="${DEVICES:-10000}"
BLOCKED="${BLOCKED:-10}"
REQUESTS="${REQUESTS:-200}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$BENCH_DIR/lib.sh"
need curl jq awk
build_release

WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-fleet.XXXXXX")"
SERVE_PID=""
cleanup() {
    local status=$?
    if [[ -n "$SERVE_PID" ]]; then
        kill -TERM "$SERVE_PID" 2>/dev/null || true
        wait "$SERVE_PID" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f "$WORK/serve.log" ]]; then
        tail -n 10 "$WORK/serve.log" >&2 || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK/data"
EMAIL=bench@example.com
PASSWORD=correct-horse-battery-staple
printf '%s\n' "$PASSWORD" | "$BIN" admin create --email "$EMAIL" --name Bench --data-dir "$WORK/data" >/dev/null
"$BIN" api-token create --name bench --data-dir "$WORK/data" >"$WORK/api.token" 2>/dev/null
start_serve "$WORK/serve.log" --data-dir "$WORK/data"
BASE="http://$SERVE_ADDR"
API_TOKEN="$(cat "$WORK/api.token")"
api() { # api METHOD PATH [BODY]
    local args=(-fsS -X "$1" -H "Authorization: Bearer $API_TOKEN")
    [[ -n "${3:-}" ]] && args+=(-H 'content-type: application/json' -d "$3")
    curl "${args[@]}" "$BASE$2"
}

SA="$(api POST /v1/actors '{"type":"service_account","name":"runners"}')"
ACTOR="$(jq -er .data.id <<<"$SA")"
jq -er .token.secret <<<"$SA" >"$WORK/client.token"

log "opening $DEVICES client sessions on one token..."
"$LOADGEN" sessions --api-url "$BASE" --token-file "$WORK/client.token" --sessions "$DEVICES" \
    --concurrency 256 --source-ips "$(ips 40)" --device-prefix runner --hold 0s --json \
    >"$WORK/sessions.json"
ESTABLISHED="$(jq -r .connect.established "$WORK/sessions.json")"
[[ "$ESTABLISHED" == "$DEVICES" ]] || die "only $ESTABLISHED of $DEVICES sessions were established"
COUNT="$(api GET "/v1/clients?actor_id=$ACTOR&limit=1" >/dev/null && echo ok)"
[[ "$COUNT" == ok ]] || die "listing the clients failed"

log "blocking $BLOCKED devices..."
for n in $(seq 0 $((BLOCKED - 1))); do
    id="$(api GET "/v1/clients?device_id=runner-$((n * 97))" | jq -er '.data[0].id')"
    api POST "/v1/clients/$id/block" >/dev/null
done

# A page in the middle: the cursor after walking half the devices in pages of 500.
MIDDLE=""
for _ in $(seq 1 $((DEVICES / 1000))); do
    MIDDLE="$(api GET "/v1/clients?actor_id=$ACTOR&limit=500${MIDDLE:+&cursor=$MIDDLE}" | jq -er .metadata.next_cursor)"
done

# The web UI's session: the sign-in form's CSRF token, then the form.
JAR="$WORK/cookies"
CSRF="$(curl -fsS -c "$JAR" "$BASE/login" | grep -o 'name="_csrf" value="[^"]*"' | head -n1 | sed 's/.*value="//; s/"$//')"
[[ -n "$CSRF" ]] || die "no CSRF token on the sign-in page"
curl -fsS -b "$JAR" -c "$JAR" -o /dev/null --data-urlencode "email=$EMAIL" \
    --data-urlencode "password=$PASSWORD" --data-urlencode "_csrf=$CSRF" "$BASE/login"
PAGE="$(curl -fsS -b "$JAR" "$BASE/actors/$ACTOR")"
grep -q "data-testid=\"clients-count\"" <<<"$PAGE" || die "the web UI session does not work"
grep -q "($DEVICES)" <<<"$PAGE" || die "the service account's page does not count $DEVICES clients"

declare -a ROWS=()
BASE_P50=""
# scenario LABEL PATH AUTH: REQUESTS sequential requests on one connection
scenario() {
    local label=$1 path=$2 auth=$3 out="$WORK/times-${#ROWS[@]}.txt"
    local urls=() n
    for n in $(seq 1 "$REQUESTS"); do urls+=(-o /dev/null "$BASE$path"); done
    local args=(-sS -w '%{http_code} %{time_total}\n')
    case "$auth" in
        api) args+=(-H "Authorization: Bearer $API_TOKEN") ;;
        web) args+=(-b "$JAR") ;;
    esac
    curl "${args[@]}" "${urls[@]}" >"$out"
    local bad
    bad="$(awk '$1 != 200' "$out" | wc -l)"
    [[ "$bad" == 0 ]] || die "$label: $bad answers were not 200 ($(awk '$1 != 200 {print $1}' "$out" | sort | uniq -c | tr '\n' ' '))"
    local stats
    stats="$(awk '{print $2 * 1000}' "$out" | sort -n | awk '{ v[NR] = $1 } END {
        printf "%.2f %.2f %.2f", v[int(NR * 0.5 + 0.5)], v[int(NR * 0.9 + 0.5)], v[int(NR * 0.99 + 0.5)] }')"
    read -r p50 p90 p99 <<<"$stats"
    [[ -z "$BASE_P50" ]] && BASE_P50=$p50
    log "$label: p50 $p50 ms, p90 $p90 ms, p99 $p99 ms"
    ROWS+=("$(awk -v l="$label" -v a="$p50" -v b="$p90" -v c="$p99" -v base="$BASE_P50" 'BEGIN {
        printf "| %s | %.2f | %.2f | %.2f | %.1f |", l, a, b, c, (base > 0 ? a / base : 0) }')")
}

Q="runner-99"   # 111 of 10 000 device ids contain it
scenario 'baseline: GET /healthz' /healthz none
scenario 'API: first page of 50' "/v1/clients?actor_id=$ACTOR" api
scenario 'API: a page in the middle' "/v1/clients?actor_id=$ACTOR&cursor=$MIDDLE" api
scenario "API: search ?q=$Q" "/v1/clients?actor_id=$ACTOR&q=$Q" api
scenario 'API: ?blocked=true' "/v1/clients?actor_id=$ACTOR&blocked=true" api
scenario 'API: one device, ?device_id=' "/v1/clients?device_id=runner-4242" api
scenario 'web: the service account page' "/actors/$ACTOR" web
scenario "web: search \"$Q\"" "/actors/$ACTOR?clients_q=$Q" web
scenario 'web: status blocked' "/actors/$ACTOR?clients_status=blocked" web
scenario 'web: a page in the middle' "/actors/$ACTOR?clients_cursor=$MIDDLE" web

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "Fleet listing, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $COMMIT, $(nproc) cores, SQLite," \
    "$DEVICES client devices on one token ($BLOCKED blocked), $REQUESTS sequential requests per row on one connection"
echo
echo "| Request | p50 (ms) | p90 (ms) | p99 (ms) | p50 vs baseline |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
