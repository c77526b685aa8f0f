#!/usr/bin/env bash
# End-to-end relay benchmark: kumo-bench inject -> kumod (durable spool, smart host) ->
# kumo-bench sink, on loopback. usage: bench/relay.sh [MESSAGES] [SIZE] [CONNECTIONS] [THREADS]
# Delivered msg/s = messages / time from the first injection to the last arrival at the sink.
# BENCH_ARGS adds generator options (e.g. "--domains-file FILE"); SHAPING=1 loads the
# community shaping files; PROXY=1 sends through kumoproxy (PROXY_ARGS adds its options);
# BUILD is the build directory (build).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000} size=${2:-10240} conns=${3:-50} threads=${4:-2}
build=${BUILD:-build}
kumod=$build/daemons/kumod/kumod bench=$build/bench/kumo-bench
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/kumo-relay.XXXXXX")
# free ports, from the kernel (random ones collided with the connections' own ports)
free_port() {
	/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
port=$(free_port) sport=$(free_port)
cat >"$dir/kumod.toml" <<TOML
[engine]
threads = $threads
[[listener]]
smtp = "127.0.0.1:$port"
max_messages_per_connection = 100000000
[spool]
path = "$dir/spool"
[log]
path = "$dir/log"
[routing]
smart_host = "127.0.0.1:$sport"
TOML
# PROXY=1: kumod leaves through kumoproxy (SOCKS5) started here; when its port was taken
# meanwhile (the proxy exits), on another
start_proxy() {
	pport=$(free_port)
	"$build/daemons/kumoproxy/kumoproxy" --listen "127.0.0.1:$pport" ${PROXY_ARGS:-} \
		--log /dev/null 2>"$dir/proxy.err" &
	ppid=$!
	for _ in $(seq 200); do
		grep -q ready "$dir/proxy.err" 2>/dev/null && return 0
		case $(awk '{print $3}' "/proc/$ppid/stat" 2>/dev/null) in "" | Z | X) break ;; esac
		sleep 0.05
	done
	kill $ppid 2>/dev/null || true
	wait $ppid 2>/dev/null || true
	return 1
}
if [ -n "${PROXY:-}" ]; then
	for try in 1 2 3 4 5; do
		start_proxy && break
		[ $try = 5 ] && { cat "$dir/proxy.err" >&2; rm -rf "$dir"; exit 1; }
	done
	printf '[[egress_source]]\nname = "via-proxy"\nsocks5_proxy_server = "127.0.0.1:%s"\n' \
		"$pport" >>"$dir/kumod.toml"
	printf '[[egress_pool]]\nname = "p"\nentries = [{name = "via-proxy"}]\n' >>"$dir/kumod.toml"
	printf '[egress]\ndefault_pool = "p"\n' >>"$dir/kumod.toml"
fi
# SHAPING=1: load KumoMTA's community shaping files, plus an overlay that lifts the
# ["default"] limits (100 msg/s and 10 connections per site) so that what is measured
# is the cost of shaping, not its limits
if [ -n "${SHAPING:-}" ]; then
	compat=$(cd ../shared/compat/kumomta && pwd)
	printf '["default"]\nconnection_limit = 64\nmax_connection_rate = "100000/s"\n%s\n' \
		'max_message_rate = "1000000/s"' >"$dir/lift.toml"
	printf 'max_deliveries_per_connection = 1024\n' >>"$dir/lift.toml"
	printf '[shaping]\nfiles = ["%s/community-shaping.toml", "%s/policy-extras-shaping.toml", "%s"]\n' \
		"$compat" "$compat" "$dir/lift.toml" >>"$dir/kumod.toml"
fi
"$bench" sink --listen "127.0.0.1:$sport" --max-messages "$n" --json >"$dir/sink.json" 2>"$dir/sink.err" &
spid=$!
"$kumod" --config "$dir/kumod.toml" 2>"$dir/kumod.err" &
pid=$!
trap 'kill $pid $spid ${ppid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 200); do
	kill -0 $pid 2>/dev/null || { cat "$dir/kumod.err" >&2; exit 1; }
	grep -q ready "$dir/kumod.err" 2>/dev/null && break
	sleep 0.05
done
kill -0 $spid 2>/dev/null || { cat "$dir/sink.err" >&2; exit 1; }
start=$(date +%s.%N)
"$bench" inject --port "$port" -n "$n" -s "$size" -c "$conns" ${BENCH_ARGS:-} | sed 's/^/# inject: /'
wait $spid || true
end=$(date +%s.%N)
cat "$dir/sink.json"; echo
/usr/bin/python3 - "$start" "$end" "$n" "$dir/sink.json" <<'PY'
import json, sys
start, end, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
sink = json.load(open(sys.argv[4]))
got = sink.get("messages", 0)
print("delivered %d of %d in %.2f s: %.0f msg/s end to end" % (got, n, end - start, got / (end - start)))
PY
# the proxy's CPU time (user + system, all its threads) over the run
if [ -n "${ppid:-}" ]; then
	awk -v hz="$(getconf CLK_TCK)" '{printf "# kumoproxy: cpu %.2f s (user %.2f, system %.2f)\n",
		($14 + $15) / hz, $14 / hz, $15 / hz}' "/proc/$ppid/stat"
fi
kill -TERM $pid; wait $pid || true
grep -E "stopped" "$dir/kumod.err" | sed 's/^/# kumod: /'
