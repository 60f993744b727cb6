#!/usr/bin/env bash
# DNS resources benchmark (issue 12): the client's stub resolver against the upstream resolver
# queried directly, in one run; and the time from a name's first query to the first byte of a
# TCP connection to it.
#
#   client ns (10.1.1.1, dnsmasq: the host's resolver) ──veth── (10.1.1.2) gateway ns
#     (10.2.0.1; portal :8080, postern-gateway) ──veth── (10.2.0.5) resource ns (dnsmasq: the
#     site's DNS, wildcard *.svc.internal.test → 10.2.0.5; an HTTP server on :8000)
#
# A portal (SQLite, temp dir), a service account in a group, a site, a gateway (--dns-server
# 10.2.0.5), DNS resources `app.internal.test` and `*.svc.internal.test` (tcp 8000) granted to
# the group; `postern-client --dns-control disabled --dns-upstream 10.1.1.1` in the client
# namespace, whose /etc/netns resolv.conf names the stub resolver (198.18.0.53).
#
# Per round (ROUNDS, interleaved so that noise hits all alike), `postern-loadgen dns` for
# DURATION s with CONCURRENCY queries in flight, then again one query at a time (latency without
# load):
#   resource   → 198.18.0.53, app.internal.test       (answered by the stub resolver itself)
#   forwarded  → 198.18.0.53, n{n}.outside.test         (forwarded to 10.1.1.1)
#   upstream   → 10.1.1.1,    n{n}.outside.test         (the baseline: the upstream directly)
# and FIRST_BYTES times `curl http://fresh-N.svc.internal.test:8000/` with a name never asked
# before: resolve (proxy address) → first packet → access request → grant → the gateway
# resolves the name and sets up its translation → SYN → first byte; beside the same for a name
# already granted (the steady state). The table gives the medians over the rounds, and ratios.
#
# Usage: bench/dns.sh   (root; needs cargo, ip, nft, dnsmasq, curl, jq)
# Environment: ROUNDS=3 DURATION=5 CONCURRENCY=32 FIRST_BYTES=20 SKIP_BUILD=1 KEEP_TMP=1
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
CONCURRENCY="${CONCURRENCY:-32}"
FIRST_BYTES="${FIRST_BYTES:-20}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
GATEWAY="$ROOT/target/release/postern-gateway"
CLIENT="$ROOT/target/release/postern-client"

for n in ROUNDS DURATION CONCURRENCY FIRST_BYTES; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, not '${!n}'"
done
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices, nftables)"
need ip nft dnsmasq curl jq awk python3

P="pn$(($$ % 100000))"
NS_C="${P}c" NS_G="${P}g" NS_R="${P}r"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-dns.XXXXXX")"
# shellcheck source=bench/netns.sh
source "$BENCH_DIR/netns.sh"
stop_on_exit

release_binaries postern postern-gateway postern-client postern-loadgen

# --- namespaces ---------------------------------------------------------------------------
namespaces "$NS_C" "$NS_G" "$NS_R"
veth "$NS_C" "${P}cg" 10.1.1.1/24 "$NS_G" "${P}gc" 10.1.1.2/24
veth "$NS_G" "${P}gr" 10.2.0.1/24 "$NS_R" "${P}rg" 10.2.0.5/24

dnsmasq_in() { # dnsmasq_in NS LOG ARGS...: a foreground dnsmasq with nothing but ARGS
    local ns=$1 logfile=$2
    shift 2
    ip netns exec "$ns" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
        --bind-interfaces --pid-file= --user=root --cache-size=10000 "$@" >"$logfile" 2>&1 &
    PIDS+=("$!")
}
dnsmasq_in "$NS_R" "$WORK/site-dns.log" --listen-address=10.2.0.5 --local-ttl=60 \
    --address=/svc.internal.test/10.2.0.5 --address=/app.internal.test/10.2.0.5
dnsmasq_in "$NS_C" "$WORK/host-dns.log" --listen-address=10.1.1.1 --local-ttl=60 \
    --address=/outside.test/10.9.9.9
ip netns exec "$NS_R" python3 -m http.server 8000 --bind 10.2.0.5 --directory "$WORK" \
    >"$WORK/http.log" 2>&1 &
PIDS+=("$!")
mkdir -p "/etc/netns/$NS_C"
printf 'nameserver 198.18.0.53\noptions timeout:1\n' >"/etc/netns/$NS_C/resolv.conf"

# --- portal, gateway, client ---------------------------------------------------------------
mkdir -p "$WORK/gateway" "$WORK/client"
start_portal "$NS_G"
group="$(api POST /v1/groups '{"name":"bench"}' | jq -er .data.id)"
api POST /v1/actors "{\"type\":\"service_account\",\"name\":\"dns\",\"group_ids\":[\"$group\"]}" |
    jq -er .token.secret >"$WORK/client.token"
site="$(api POST /v1/sites '{"name":"lab"}' | jq -er .data.id)"
api POST "/v1/sites/$site/gateway_tokens" '{}' | jq -er .data.secret >"$WORK/gateway.token"
for address in app.internal.test '*.svc.internal.test'; do
    resource="$(api POST /v1/resources "{\"type\":\"dns\",\"name\":\"${address//[*.]/-}\",\"address\":\"$address\",
        \"site_id\":\"$site\",\"filters\":[{\"protocol\":\"tcp\",\"ports\":\"8000\"}]}" | jq -er .data.id)"
    api POST /v1/policies "{\"group_id\":\"$group\",\"resource_id\":\"$resource\"}" >/dev/null
done
ip netns exec "$NS_G" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/gateway.token")" \
    "$GATEWAY" --state-dir "$WORK/gateway/state" --api-url http://127.0.0.1:8080 \
    --listen 10.1.1.2:51820 --tun-name "${P}gt" --dns-server 10.2.0.5 >"$WORK/gateway.log" 2>&1 &
PIDS+=("$!")
ip netns exec "$NS_C" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/client.token")" \
    "$CLIENT" --state-dir "$WORK/client/state" --api-url http://10.1.1.2:8080 --insecure \
    --tun-name "${P}ct" --dns-control disabled --dns-upstream 10.1.1.1 >"$WORK/client.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 150); do
    in_ns "$NS_C" curl -fsS -o /dev/null --max-time 2 http://app.internal.test:8000/ 2>/dev/null && break
    sleep 0.2
done
in_ns "$NS_C" curl -fsS -o /dev/null --max-time 2 http://app.internal.test:8000/ ||
    die "app.internal.test never answered through the tunnel"

# --- rounds -------------------------------------------------------------------------------
load() { # load LABEL SERVER NAME [CONCURRENCY]
    in_ns "$NS_C" "$LOADGEN" dns --server "$2" --name "$3" --concurrency "${4:-$CONCURRENCY}" \
        --duration "${DURATION}s" --json --label "$1" 2>>"$WORK/loadgen.log"
}
first_byte() { # first_byte NAME: seconds from curl's start to the first byte of the answer
    in_ns "$NS_C" curl -s -o /dev/null --max-time 10 -w '%{time_starttransfer}' "http://$1:8000/"
}
: >"$WORK/results.jsonl"
: >"$WORK/first-byte.txt"
for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS"
    load resource 198.18.0.53:53 app.internal.test >>"$WORK/results.jsonl"
    load forwarded 198.18.0.53:53 "r$round-n{n}.outside.test" >>"$WORK/results.jsonl"
    load upstream 10.1.1.1:53 "u$round-n{n}.outside.test" >>"$WORK/results.jsonl"
    load resource-1 198.18.0.53:53 app.internal.test 1 >>"$WORK/results.jsonl"
    load forwarded-1 198.18.0.53:53 "r$round-s{n}.outside.test" 1 >>"$WORK/results.jsonl"
    load upstream-1 10.1.1.1:53 "u$round-s{n}.outside.test" 1 >>"$WORK/results.jsonl"
    for i in $(seq 1 "$FIRST_BYTES"); do
        name="fresh-$round-$i.svc.internal.test"
        printf 'first %s\n' "$(first_byte "$name")" >>"$WORK/first-byte.txt"
        printf 'again %s\n' "$(first_byte "$name")" >>"$WORK/first-byte.txt"
    done
done

# --- table --------------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
stat_of() { jq -r "select(.label == \"$1\") | $2" "$WORK/results.jsonl" | median; }
pct() { awk -v q="$2" '$1 == "'"$1"'" { print $2 * 1000 }' "$WORK/first-byte.txt" | sort -g |
    awk -v q="$2" '{ v[NR] = $1 } END { r = int(q * NR + 0.999999); if (r < 1) r = 1; print v[r] }'; }

up_qps="$(stat_of upstream .qps)" up_p99="$(stat_of upstream .latency_ms.p99)"
printf '| %s | %s | %s | %s | %s | %s |\n' "queries to" "qps" "p50 ms" "p99 ms" "lost" "qps / upstream"
printf '|---|---|---|---|---|---|\n'
for label in resource forwarded upstream; do
    qps="$(stat_of "$label" .qps)"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$qps" "$(stat_of "$label" .latency_ms.p50)" \
        "$(stat_of "$label" .latency_ms.p99)" "$(stat_of "$label" .lost)" "$(fmt "$qps / $up_qps" 2)"
done
printf '\n(upstream p99 %s ms; %s rounds of %s s, %s in flight)\n\n' "$up_p99" "$ROUNDS" "$DURATION" "$CONCURRENCY"
printf '| one query at a time | p50 ms | p99 ms | p50 - upstream p50 (ms) |\n|---|---|---|---|\n'
up1="$(stat_of upstream-1 .latency_ms.p50)"
for label in resource forwarded upstream; do
    p50="$(stat_of "$label-1" .latency_ms.p50)"
    printf '| %s | %s | %s | %s |\n' "$label" "$p50" "$(stat_of "$label-1" .latency_ms.p99)" "$(fmt "$p50 - $up1" 3)"
done
printf '\n'
printf '| first byte of http://NAME:8000/ (ms) | p50 | p90 | max |\n|---|---|---|---|\n'
for kind in first again; do
    printf '| %s | %s | %s | %s |\n' \
        "$([[ $kind == first ]] && echo "a name never asked before" || echo "the same name again")" \
        "$(pct "$kind" 0.5)" "$(pct "$kind" 0.9)" "$(pct "$kind" 1)"
done
