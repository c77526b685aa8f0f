#!/usr/bin/env bash
# SOCKS5 relay benchmark: socks-bench sends 100 KB messages (each acknowledged by its sink,
# like SMTP's DATA) and a bulk stream, straight to the sink and through kumoproxy, on
# loopback; prints the median MB/s of REPEAT runs of each, and the proxy's CPU time.
# usage: bench/proxy.sh [MESSAGES] [SIZE] [CONNECTIONS] [THREADS] [RELAY splice|copy]
# env: REPEAT (5), BULK_MB (500 per connection), BULK_CONNS (10), PROXY_ARGS, BUILD (build)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-40000} size=${2:-102400} conns=${3:-50} threads=${4:-2} relay=${5:-splice}
repeat=${REPEAT:-5} bulk_mb=${BULK_MB:-500} bulk_conns=${BULK_CONNS:-10}
build=${BUILD:-build}
proxy=$build/daemons/kumoproxy/kumoproxy bench=$build/bench/socks-bench
[ -x "$proxy" ] && [ -x "$bench" ] || { echo "build first: ninja -C build" >&2; exit 1; }
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/kumo-proxy.XXXXXX")
port=$((20000 + RANDOM % 20000))
"$proxy" --listen "127.0.0.1:$port" --threads "$threads" --relay "$relay" ${PROXY_ARGS:-} \
	--log /dev/null 2>"$dir/proxy.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 200); do
	grep -q ready "$dir/proxy.err" 2>/dev/null && break
	kill -0 $pid 2>/dev/null || { cat "$dir/proxy.err" >&2; exit 1; }
	sleep 0.05
done

# Direct and proxied runs alternate, so both see the same background load; the medians of
# REPEAT runs are printed. summarize LABEL < JSON lines
summarize() {
	/usr/bin/python3 -c '
import json, statistics, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
assert runs and all(r["failures"] == 0 for r in runs), runs
out = {}
for mode in ("direct", "proxy"):
    rs = [r for r in runs if r["mode"] == mode]
    out[mode] = (statistics.median(r["mb_per_s"] for r in rs),
                 statistics.median(r["msg_per_s"] for r in rs))
d, p = out["direct"], out["proxy"]
label = sys.argv[1]
if "bulk" in label:
    print("%s: direct %.0f MB/s, proxied %.0f MB/s (%.0f%%)" % (label, d[0], p[0], 100 * p[0] / d[0]))
else:
    print("%s: direct %.0f MB/s %.0f msg/s, proxied %.0f MB/s %.0f msg/s (%.0f%%)"
          % (label, d[0], d[1], p[0], p[1], 100 * p[0] / d[0]))' "$1"
}

echo "# $(nproc) CPUs, kumoproxy --threads $threads --relay $relay ${PROXY_ARGS:-}, median of $repeat"
for _ in $(seq "$repeat"); do
	"$bench" --json -c "$conns" -s "$size" -n "$n"
	"$bench" --json --proxy "127.0.0.1:$port" -c "$conns" -s "$size" -n "$n"
done | summarize "$n x $size-byte messages, $conns connections"
for _ in $(seq "$repeat"); do
	"$bench" --json -c "$bulk_conns" --bulk "$bulk_mb"
	"$bench" --json --proxy "127.0.0.1:$port" -c "$bulk_conns" --bulk "$bulk_mb"
done | summarize "bulk, $bulk_conns connections x $bulk_mb MB"
# the proxy's CPU time (user + system, all its threads) over all the proxied runs
awk -v hz="$(getconf CLK_TCK)" '{printf "# kumoproxy cpu: %.2f s (user %.2f, system %.2f)\n",
	($14 + $15) / hz, $14 / hz, $15 / hz}' "/proc/$pid/stat"
kill -USR1 $pid
sleep 0.2
grep -E '^kumoproxy_(relays_total|bytes_client_to_target_total) ' "$dir/proxy.err" | sed 's/^/# /'
