#!/usr/bin/env bash
# Data-plane benchmark (issue 5): Postern vs boringtun-cli vs the bare veth path, in one run.
#
# Builds `postern`, `postern-gateway` and `postern-client` in release, then builds three network
# namespaces like crates/postern/tests/dataplane_e2e.rs:
#
#   client ns (10.1.1.1) ──veth── (10.1.1.2) gateway ns (10.2.0.1) ──veth── (10.2.0.5) resource ns
#
# and three paths from the client to an iperf3 server in the resource namespace, all over the same
# two veth pairs and the gateway namespace's forwarding:
#   postern   → 10.2.0.5: a real portal (SQLite, temp dir, in the gateway namespace on :8080), a
#               group, a service account with a token, a site with a gateway token, a `cidr`
#               resource 10.2.0.0/24 (filters tcp 5201 + icmp) and a policy, created through the
#               API; `postern-gateway` (UDP 10.1.1.2:51820, source NAT) and `postern-client`;
#   boringtun → 10.4.0.5: `boringtun-cli` on both ends (userspace WireGuard, default options:
#               4 threads, multi-queue TUN, connected UDP), configured with `wg` through its UAPI
#               socket, tunnel 10.99.0.1 ↔ 10.99.0.2, UDP 10.1.1.2:51821; routed, no NAT;
#   veth      → 10.3.0.5: no tunnel, plain routing through the gateway namespace (the ceiling).
# The resource has one address per path so the three coexist and the rounds can interleave
# (postern, boringtun, veth, postern, ...): noise from other work on the machine hits all three
# alike. Both tunnels use the same MTU (MTU, default 1280 = Postern's default).
#
# Per path and round: iperf3 TCP client → resource, 1 stream and 4 streams (-P 4), and the
# download direction resource → client (1 stream, -R), DURATION s each (received throughput),
# with the share of all cores' time that was busy meanwhile (/proc/stat: whether a core was left
# for more work); ping RTT (ping -c PINGS -i 0.05, the median of the pings). The table gives the median over
# the rounds, and the ratios Postern/boringtun and Postern/veth (for RTT, lower is better: a
# ratio < 1 means Postern is faster).
#
# Usage: bench/dataplane.sh            (root; needs cargo, ip, nft, iperf3, ping, curl, jq, wg)
# Environment:
#   ROUNDS=3        interleaved rounds (the table gives the medians)
#   DURATION=5      seconds per iperf3 run
#   PINGS=20        pings per RTT measurement (50 ms apart)
#   MTU=1280        tunnel MTU of both Postern and boringtun-cli
#   SKIP_BUILD=1    use the existing release binaries
#   KEEP_TMP=1      keep the temporary directory (logs, iperf3 JSON)
#   BIN_DIR=DIR     take the three binaries from DIR (default: target/release; implies nothing
#                   about SKIP_BUILD)
# boringtun-cli is taken from PATH or ~/.cargo/bin, else installed once with
# `cargo install boringtun-cli --locked`; if that fails the script says so loudly and goes on
# without the boringtun column. Progress goes to stderr, the Markdown table to stdout. Namespaces,
# processes and the temporary directory are removed on exit (also on failure or Ctrl-C).
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
PINGS="${PINGS:-20}"
MTU="${MTU:-1280}"

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN_DIR="${BIN_DIR:-$TARGET/release}"
BIN="$BIN_DIR/postern"
GATEWAY="$BIN_DIR/postern-gateway"
CLIENT="$BIN_DIR/postern-client"

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
loud() {
    log ""
    log "################################################################################"
    log "# $*"
    log "################################################################################"
    log ""
}

for n in ROUNDS DURATION MTU; do
    [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer, not '${!n}'"
done
[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices, nftables)"
for tool in ip nft iperf3 ping curl jq awk; do
    command -v "$tool" >/dev/null ||
        die "$tool is required (Debian: apt-get install -y iproute2 nftables iperf3 iputils-ping curl jq)"
done

P="pb$(($$ % 100000))"          # prefix of every namespace and interface of this run
NS_C="${P}c" NS_G="${P}g" NS_R="${P}r"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/postern-dataplane.XXXXXX")"
# shellcheck source=bench/netns.sh
source "$BENCH_DIR/netns.sh"
BT_SOCKS=()

cleanup() {
    local status=$? sock
    trap - EXIT INT TERM
    stop_everything "$status"
    for sock in "${BT_SOCKS[@]}"; do
        rm -f "$sock"
    done
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- binaries -----------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building postern, postern-gateway and postern-client (release)..."
    (cd "$ROOT" && cargo build --release -p postern -p postern-gateway -p postern-client >&2)
fi
for b in "$BIN" "$GATEWAY" "$CLIENT"; do
    [[ -x "$b" ]] || die "$b missing (cargo build --release -p postern -p postern-gateway -p postern-client)"
done

BORINGTUN="$(command -v boringtun-cli || true)"
[[ -n "$BORINGTUN" ]] || [[ ! -x "$HOME/.cargo/bin/boringtun-cli" ]] || BORINGTUN="$HOME/.cargo/bin/boringtun-cli"
if [[ -z "$BORINGTUN" ]]; then
    log "boringtun-cli not found: cargo install boringtun-cli --locked ..."
    if cargo install boringtun-cli --locked >&2; then
        BORINGTUN="$HOME/.cargo/bin/boringtun-cli"
    fi
fi
if [[ -n "$BORINGTUN" ]] && ! command -v wg >/dev/null; then
    log "wg not found: apt-get install -y wireguard-tools ..."
    apt-get install -y wireguard-tools >&2 || true
fi
if [[ -z "$BORINGTUN" || ! -x "$BORINGTUN" ]] || ! command -v wg >/dev/null; then
    loud "boringtun-cli (or wg from wireguard-tools) is MISSING and could not be installed: NO boringtun COMPARISON in this run"
    BORINGTUN=""
fi

# --- namespaces ---------------------------------------------------------------------------
log "namespaces $NS_C / $NS_G / $NS_R"
namespaces "$NS_C" "$NS_G" "$NS_R"
veth "$NS_C" "${P}cg" 10.1.1.1/24 "$NS_G" "${P}gc" 10.1.1.2/24
veth "$NS_G" "${P}gr" 10.2.0.1/24 "$NS_R" "${P}rg" 10.2.0.5/24
# Addresses of the veth and boringtun paths on the same link.
ip -n "$NS_G" addr add 10.3.0.1/24 dev "${P}gr"
ip -n "$NS_R" addr add 10.3.0.5/24 dev "${P}rg"
ip -n "$NS_G" addr add 10.4.0.1/24 dev "${P}gr"
ip -n "$NS_R" addr add 10.4.0.5/24 dev "${P}rg"
in_ns "$NS_G" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
# veth path: routed both ways (the resource answers 10.1.1.1 through the gateway).
ip -n "$NS_C" route add 10.3.0.0/24 via 10.1.1.2
ip -n "$NS_R" route add 10.1.1.0/24 via 10.2.0.1
# boringtun path: the tunnel network is routed back from the resource.
ip -n "$NS_R" route add 10.99.0.0/24 via 10.2.0.1

ip netns exec "$NS_R" iperf3 -s -p 5201 >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=("$!")

# --- boringtun-cli ------------------------------------------------------------------------
if [[ -n "$BORINGTUN" ]]; then
    BT_C="${P}bc" BT_G="${P}bg"
    mkdir -p /var/run/wireguard
    BT_SOCKS+=("/var/run/wireguard/$BT_C.sock" "/var/run/wireguard/$BT_G.sock")
    ip netns exec "$NS_C" "$BORINGTUN" --foreground --disable-drop-privileges "$BT_C" >"$WORK/boringtun-client.log" 2>&1 &
    PIDS+=("$!")
    ip netns exec "$NS_G" "$BORINGTUN" --foreground --disable-drop-privileges "$BT_G" >"$WORK/boringtun-gateway.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        [[ -S "/var/run/wireguard/$BT_C.sock" && -S "/var/run/wireguard/$BT_G.sock" ]] && break
        sleep 0.1
    done
    [[ -S "/var/run/wireguard/$BT_C.sock" && -S "/var/run/wireguard/$BT_G.sock" ]] ||
        die "boringtun-cli did not create its UAPI sockets"
    (umask 077 && wg genkey >"$WORK/bt-c.key" && wg genkey >"$WORK/bt-g.key")
    in_ns "$NS_C" wg set "$BT_C" private-key "$WORK/bt-c.key" \
        peer "$(wg pubkey <"$WORK/bt-g.key")" endpoint 10.1.1.2:51821 \
        allowed-ips 10.99.0.2/32,10.4.0.0/24 persistent-keepalive 25
    in_ns "$NS_G" wg set "$BT_G" private-key "$WORK/bt-g.key" listen-port 51821 \
        peer "$(wg pubkey <"$WORK/bt-c.key")" allowed-ips 10.99.0.1/32
    ip -n "$NS_C" addr add 10.99.0.1/24 dev "$BT_C"
    ip -n "$NS_G" addr add 10.99.0.2/24 dev "$BT_G"
    ip -n "$NS_C" link set "$BT_C" mtu "$MTU" up
    ip -n "$NS_G" link set "$BT_G" mtu "$MTU" up
    ip -n "$NS_C" route add 10.4.0.0/24 dev "$BT_C"
fi

# --- portal, gateway, client ---------------------------------------------------------------
mkdir -p "$WORK/gateway" "$WORK/client"
start_portal "$NS_G"

group="$(api POST /v1/groups '{"name":"bench"}' | jq -er .data.id)"
sa="$(api POST /v1/actors "{\"type\":\"service_account\",\"name\":\"iperf\",\"group_ids\":[\"$group\"]}")"
jq -er .token.secret <<<"$sa" >"$WORK/client.token"
site="$(api POST /v1/sites '{"name":"lab"}' | jq -er .data.id)"
api POST "/v1/sites/$site/gateway_tokens" '{}' | jq -er .data.secret >"$WORK/gateway.token"
resource="$(api POST /v1/resources "{\"type\":\"cidr\",\"name\":\"lab-net\",\"address\":\"10.2.0.0/24\",\"site_id\":\"$site\",
    \"filters\":[{\"protocol\":\"tcp\",\"ports\":\"5201\"},{\"protocol\":\"icmp\"}]}" | jq -er .data.id)"
api POST /v1/policies "{\"group_id\":\"$group\",\"resource_id\":\"$resource\"}" >/dev/null

ip netns exec "$NS_G" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/gateway.token")" \
    "$GATEWAY" --state-dir "$WORK/gateway/state" --api-url http://127.0.0.1:8080 \
    --listen 10.1.1.2:51820 --tun-name "${P}gt" --mtu "$MTU" >"$WORK/gateway.log" 2>&1 &
PIDS+=("$!")
ip netns exec "$NS_C" env -i PATH="$PATH" RUST_LOG=info POSTERN_TOKEN="$(cat "$WORK/client.token")" \
    "$CLIENT" --state-dir "$WORK/client/state" --api-url http://10.1.1.2:8080 --insecure \
    --tun-name "${P}ct" --mtu "$MTU" --dns-control disabled >"$WORK/client.log" 2>&1 &
PIDS+=("$!")

# --- wait for every path ------------------------------------------------------------------
wait_ping() { # wait_ping NAME ADDR SECONDS
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        in_ns "$NS_C" ping -c 1 -W 1 "$2" >/dev/null 2>&1 && { log "$1 path up ($2)"; return 0; }
        sleep 0.2
    done
    die "$1 path to $2 not up after $3 s"
}
wait_ping veth 10.3.0.5 10
[[ -z "$BORINGTUN" ]] || wait_ping boringtun 10.4.0.5 15
wait_ping postern 10.2.0.5 60

# --- measurements -------------------------------------------------------------------------
gbps() { # gbps JSON_FILE: received throughput in Gbit/s
    jq -er '.end.sum_received.bits_per_second / 1e9' "$1"
}
cpu_ticks() { # cpu_ticks -> "busy total" jiffies of all cores since boot
    awk '/^cpu / { total = 0; for (i = 2; i <= NF; i++) total += $i; print total - $5 - $6, total }' /proc/stat
}
iperf() { # iperf PATH ADDR STREAMS ROUND [-R] -> Gbit/s; the cores' busy share in $WORK/cpu-…
    local out="$WORK/iperf-$1-$3-$4${5:-}.json" before after
    before="$(cpu_ticks)"
    if ! in_ns "$NS_C" iperf3 -c "$2" -p 5201 -t "$DURATION" -P "$3" ${5:-} -J >"$out" 2>&1; then
        in_ns "$NS_C" iperf3 -c "$2" -p 5201 -t "$DURATION" -P "$3" ${5:-} -J >"$out" 2>&1 ||
            die "iperf3 over $1 failed: $(jq -r .error "$out" 2>/dev/null || cat "$out")"
    fi
    after="$(cpu_ticks)"
    awk -v b="$before" -v a="$after" 'BEGIN { split(b, x); split(a, y)
        printf "%.0f\n", 100 * (y[1] - x[1]) / (y[2] - x[2]) }' >"$WORK/cpu-$1-$3-$4${5:-}"
    gbps "$out"
}
rtt() { # rtt ADDR -> median ms of PINGS pings (the average is at the mercy of a few late ones)
    in_ns "$NS_C" ping -c "$PINGS" -i 0.05 "$1" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | median
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan" } else if (NR % 2) { print v[(NR + 1) / 2] } else { print (v[NR / 2] + v[NR / 2 + 1]) / 2 } }'; }

PATHS=(postern)
[[ -z "$BORINGTUN" ]] || PATHS+=(boringtun)
PATHS+=(veth)
declare -A ADDR=([postern]=10.2.0.5 [boringtun]=10.4.0.5 [veth]=10.3.0.5)
declare -A T1=() T4=() TR=() RTT=() C1=() C4=()
for round in $(seq 1 "$ROUNDS"); do
    for path in "${PATHS[@]}"; do
        a="$(iperf "$path" "${ADDR[$path]}" 1 "$round")"
        b="$(iperf "$path" "${ADDR[$path]}" 4 "$round")"
        d="$(iperf "$path" "${ADDR[$path]}" 1 "$round" -R)"
        r="$(rtt "${ADDR[$path]}")"
        c1="$(cat "$WORK/cpu-$path-1-$round")" c4="$(cat "$WORK/cpu-$path-4-$round")"
        T1[$path]+=" $a" T4[$path]+=" $b" TR[$path]+=" $d" RTT[$path]+=" $r" C1[$path]+=" $c1" C4[$path]+=" $c4"
        log "round $round $path: 1 stream $(printf '%.2f' "$a") Gbit/s (cores ${c1}% busy), 4 streams $(printf '%.2f' "$b") Gbit/s (${c4}%), download $(printf '%.2f' "$d") Gbit/s, RTT $r ms"
    done
done

# --- table ---------------------------------------------------------------------------------
declare -A M1=() M4=() MD=() MR=() MC1=() MC4=()
for path in "${PATHS[@]}"; do
    MC1[$path]="$(median <<<"${C1[$path]}")"
    MC4[$path]="$(median <<<"${C4[$path]}")"
    M1[$path]="$(median <<<"${T1[$path]}")"
    MD[$path]="$(median <<<"${TR[$path]}")"
    M4[$path]="$(median <<<"${T4[$path]}")"
    MR[$path]="$(median <<<"${RTT[$path]}")"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "–"; else printf "%.2f", a / b }'; }
f2() { awk -v a="$1" 'BEGIN { printf "%.2f", a }'; }
f3() { awk -v a="$1" 'BEGIN { printf "%.3f", a }'; }
bt() { [[ -n "$BORINGTUN" ]] && echo "$1" || echo "not run"; }

echo ""
echo "Data plane, $(date -u +%Y-%m-%d), MTU $MTU, iperf3 -t $DURATION, median of $ROUNDS interleaved rounds, $(nproc) cores, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo ""
echo "| Metric | Postern | boringtun-cli | bare veth | Postern / boringtun | Postern / veth |"
echo "|---|---|---|---|---|---|"
for metric in 1 4; do
    declare -n M="M$metric"
    echo "| TCP, $metric stream$([[ $metric == 1 ]] || echo s) (Gbit/s) | $(f2 "${M[postern]}") | $(bt "$(f2 "${M[boringtun]:-0}")") | $(f2 "${M[veth]}") | $(bt "$(ratio "${M[postern]}" "${M[boringtun]:-0}")") | $(ratio "${M[postern]}" "${M[veth]}") |"
    unset -n M
done
echo "| TCP download, 1 stream, iperf3 -R (Gbit/s) | $(f2 "${MD[postern]}") | $(bt "$(f2 "${MD[boringtun]:-0}")") | $(f2 "${MD[veth]}") | $(bt "$(ratio "${MD[postern]}" "${MD[boringtun]:-0}")") | $(ratio "${MD[postern]}" "${MD[veth]}") |"
echo "| ping RTT median (ms, lower is better) | $(f3 "${MR[postern]}") | $(bt "$(f3 "${MR[boringtun]:-0}")") | $(f3 "${MR[veth]}") | $(bt "$(ratio "${MR[postern]}" "${MR[boringtun]:-0}")") | $(ratio "${MR[postern]}" "${MR[veth]}") |"
echo "| all cores busy during 1 stream / 4 streams (%) | ${MC1[postern]} / ${MC4[postern]} | $(bt "${MC1[boringtun]:-} / ${MC4[boringtun]:-}") | ${MC1[veth]} / ${MC4[veth]} | | |"
echo ""
echo "Every round (Gbit/s 1 stream / 4 streams / download / RTT ms):"
for path in "${PATHS[@]}"; do
    echo "- $path: 1 stream$(printf ' %.2f' ${T1[$path]}); 4 streams$(printf ' %.2f' ${T4[$path]}); download$(printf ' %.2f' ${TR[$path]}); RTT${RTT[$path]}"
done
if [[ -z "$BORINGTUN" ]]; then
    loud "boringtun-cli was NOT measured in this run (see above)"
fi
