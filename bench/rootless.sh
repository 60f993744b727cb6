#!/usr/bin/env bash
# Rootless client benchmark (issue 13): the SOCKS5 path of the user-space mode against the TUN
# path, to the same resource, in one run.
#
#   client ns 1 (10.1.1.1, postern-client with its TUN) ──veth──┐
#                                                              gateway ns (10.1.1.2 / 10.1.2.2;
#   client ns 2 (10.1.2.1, postern-client --socks5, as nobody) ┘  portal :8080, postern-gateway)
#                                                                  ──veth── resource ns (10.2.0.5,
#                                                                           postern-loadgen tcp-server :9000)
#
# A portal (SQLite), a service account whose token both clients use, a site, a gateway, a `cidr`
# resource 10.2.0.0/24 (tcp 9000). Per round (ROUNDS, interleaved), `postern-loadgen tcp` from
# each client namespace to 10.2.0.5:9000 — directly (the TUN's route) or through the SOCKS5
# proxy of the rootless client — receives for DURATION s with 1 and then 4 streams, and times
# CONNECTIONS connection setups (connect, the SOCKS5 exchange, one round trip), 16 in flight.
# The table gives the medians and the ratio SOCKS5 / TUN (the issue's target: throughput at
# least 0.5).
#
# Usage: bench/rootless.sh   (root; needs cargo, ip, nft, curl, jq, setpriv)
# Environment: ROUNDS=3 DURATION=5 CONNECTIONS=2000 SKIP_BUILD=1 KEEP_TMP=1
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-2000}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
GATEWAY="$ROOT/target/release/postern-gateway"
CLIENT="$ROOT/target/release/postern-client"

for n in ROUNDS DURATION CONNECTIONS; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, not '${!n}'"
done
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, the TUN client, nftables)"
need ip nft curl jq awk setpriv

P="pr$(($$ % 100000))"
NS_T="${P}t" NS_U="${P}u" NS_G="${P}g" NS_R="${P}r"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-rootless.XXXXXX")"
# shellcheck source=bench/netns.sh
source "$BENCH_DIR/netns.sh"
stop_on_exit

release_binaries postern postern-gateway postern-client postern-loadgen

# --- namespaces ---------------------------------------------------------------------------
namespaces "$NS_T" "$NS_U" "$NS_G" "$NS_R"
veth "$NS_T" "${P}tg" 10.1.1.1/24 "$NS_G" "${P}gt" 10.1.1.2/24
veth "$NS_U" "${P}ug" 10.1.2.1/24 "$NS_G" "${P}gu" 10.1.2.2/24
veth "$NS_G" "${P}gr" 10.2.0.1/24 "$NS_R" "${P}rg" 10.2.0.5/24
ip -n "$NS_U" route add 10.1.1.2/32 via 10.1.2.2
ip netns exec "$NS_R" "$LOADGEN" tcp-server --listen 10.2.0.5:9000 >"$WORK/tcp-server.log" 2>&1 &
PIDS+=("$!")

# --- portal, gateway, clients ---------------------------------------------------------------
mkdir -p "$WORK/gateway" "$WORK/tun" "$WORK/rootless"
start_portal "$NS_G"
group="$(api POST /v1/groups '{"name":"bench"}' | jq -er .data.id)"
api POST /v1/actors "{\"type\":\"service_account\",\"name\":\"rootless\",\"group_ids\":[\"$group\"]}" |
    jq -er .token.secret >"$WORK/client.token"
site="$(api POST /v1/sites '{"name":"lab"}' | jq -er .data.id)"
api POST "/v1/sites/$site/gateway_tokens" '{}' | jq -er .data.secret >"$WORK/gateway.token"
resource="$(api POST /v1/resources "{\"type\":\"cidr\",\"name\":\"lab-net\",\"address\":\"10.2.0.0/24\",
    \"site_id\":\"$site\",\"filters\":[{\"protocol\":\"tcp\",\"ports\":\"9000\"}]}" | jq -er .data.id)"
api POST /v1/policies "{\"group_id\":\"$group\",\"resource_id\":\"$resource\"}" >/dev/null

ip netns exec "$NS_G" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/gateway.token")" \
    "$GATEWAY" --state-dir "$WORK/gateway/state" --api-url http://127.0.0.1:8080 \
    --listen 10.1.1.2:51820 --tun-name "${P}gw" >"$WORK/gateway.log" 2>&1 &
PIDS+=("$!")
ip netns exec "$NS_T" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/client.token")" \
    "$CLIENT" --state-dir "$WORK/tun/state" --api-url http://10.1.1.2:8080 --insecure \
    --tun-name "${P}ct" --dns-control disabled >"$WORK/tun-client.log" 2>&1 &
PIDS+=("$!")
# The rootless client as nobody, without capabilities, from a copy nobody may run.
chmod 755 "$WORK"
cp "$CLIENT" "$WORK/rootless/postern-client"
mkdir -p "$WORK/rootless/state"
chown nobody:nogroup "$WORK/rootless/state"
ip netns exec "$NS_U" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/client.token")" \
    setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all -- \
    "$WORK/rootless/postern-client" --state-dir "$WORK/rootless/state" \
    --api-url http://10.1.1.2:8080 --insecure --socks5 127.0.0.1:1080 >"$WORK/rootless-client.log" 2>&1 &
PIDS+=("$!")

load() { # load NS LABEL STREAMS [CONNECTIONS] [--socks5 ADDR]
    local ns=$1 label=$2 streams=$3 connections=$4
    shift 4
    in_ns "$ns" "$LOADGEN" tcp --target 10.2.0.5:9000 --streams "$streams" --duration "${DURATION}s" \
        --connections "$connections" --json --label "$label" "$@" 2>>"$WORK/loadgen.log"
}
for _ in $(seq 1 150); do
    DURATION=1 load "$NS_T" warm 1 1 >/dev/null 2>&1 && DURATION=1 load "$NS_U" warm 1 1 --socks5 127.0.0.1:1080 >/dev/null 2>&1 && break
    sleep 0.2
done
DURATION=1 load "$NS_U" warm 1 1 --socks5 127.0.0.1:1080 >/dev/null || die "the SOCKS5 path never worked"

# --- rounds -------------------------------------------------------------------------------
: >"$WORK/results.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS"
    load "$NS_T" tun-1 1 0 >>"$WORK/results.jsonl"
    load "$NS_U" socks-1 1 0 --socks5 127.0.0.1:1080 >>"$WORK/results.jsonl"
    load "$NS_T" tun-4 4 0 >>"$WORK/results.jsonl"
    load "$NS_U" socks-4 4 0 --socks5 127.0.0.1:1080 >>"$WORK/results.jsonl"
    # A short receive (1 stream) before the setups: the figure of interest is the setup rate.
    DURATION=1 load "$NS_T" tun-setup 1 "$CONNECTIONS" >>"$WORK/results.jsonl"
    DURATION=1 load "$NS_U" socks-setup 1 "$CONNECTIONS" --socks5 127.0.0.1:1080 >>"$WORK/results.jsonl"
done

# --- table --------------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
stat_of() { jq -r "select(.label == \"$1\") | $2" "$WORK/results.jsonl" | median; }
printf '| %s | %s | %s | %s |\n|---|---|---|---|\n' "to 10.2.0.5:9000" "TUN" "SOCKS5 (rootless)" "SOCKS5 / TUN"
for streams in 1 4; do
    tun="$(stat_of "tun-$streams" .gbps)" socks="$(stat_of "socks-$streams" .gbps)"
    printf '| download, %s stream(s) (Gbit/s) | %s | %s | %s |\n' "$streams" "$tun" "$socks" "$(fmt "$socks / $tun" 2)"
done
tun="$(stat_of tun-setup .setups_per_second)" socks="$(stat_of socks-setup .setups_per_second)"
printf '| connection setups per second (16 in flight) | %s | %s | %s |\n' "$tun" "$socks" "$(fmt "$socks / $tun" 2)"
tun="$(stat_of tun-setup .setup_ms.p50)" socks="$(stat_of socks-setup .setup_ms.p50)"
printf '| one setup, p50 (ms) | %s | %s | %s |\n' "$tun" "$socks" "$(fmt "$socks / $tun" 2)"
printf '\n(%s rounds, %s s each, %s setups; %s cores)\n' "$ROUNDS" "$DURATION" "$CONNECTIONS" "$(nproc)"
