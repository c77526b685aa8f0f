#!/usr/bin/env bash
# Reception benchmark: kumo-bench inject -> kumod with a durable spool, on loopback.
# usage: bench/reception.sh [MESSAGES] [SIZE] [CONNECTIONS] [THREADS]
# Starts kumod from build/ with a temporary spool, prints the generator's report and
# kumod's own counters, then removes the spool.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000} size=${2:-10240} conns=${3:-50} threads=${4:-2}
kumod=build/daemons/kumod/kumod bench=build/bench/kumo-bench
dir=$(mktemp -d "${TMPDIR:-/var/tmp}/kumo-bench.XXXXXX")
port=$((20000 + RANDOM % 20000))
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
[delivery]
enabled = false    # reception only: nothing leaves the machine
TOML
"$kumod" --config "$dir/kumod.toml" 2>"$dir/kumod.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 200); do
	kill -0 $pid 2>/dev/null || { cat "$dir/kumod.err" >&2; exit 1; }
	grep -q ready "$dir/kumod.err" 2>/dev/null && break
	sleep 0.05
done
echo "# kumod threads=$threads, spool on $(df --output=source "$dir" | tail -1)"
"$bench" inject --port "$port" -n "$n" -s "$size" -c "$conns" ${BENCH_ARGS:-}
kill -TERM $pid
wait $pid || true
grep -E "stopped" "$dir/kumod.err" | sed 's/^/# kumod: /'
