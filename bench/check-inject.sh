#!/usr/bin/env bash
# Checks of kumo-bench inject against a server that closes connections: kumod with
# max_messages_per_connection = 100 answers the 101st MAIL on a connection with
# `421 4.7.0 Too many messages on this connection` and closes it.
#   1. without --max-reconnects: both connections end at their 421 at once (no connection
#      waits for its timeout), the two 421'd messages count as temp-failed, none unanswered;
#   2. with --max-reconnects: the connections reconnect after each 421 and every message
#      is attempted and answered.
# usage: bench/check-inject.sh [BUILD_DIR]    (exit 0 when all checks pass, 77 to skip)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
kumod=$build/daemons/kumod/kumod bench=$build/bench/kumo-bench
[ -x "$kumod" ] && [ -x "$bench" ] || { echo "check-inject: build $kumod and $bench first"; exit 77; }
dir=$(mktemp -d "${TMPDIR:-/tmp}/kumo-check-inject.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/kumod.toml" <<TOML
[[listener]]
smtp = "127.0.0.1:$port"
max_messages_per_connection = 100
[spool]
path = "$dir/spool"
[log]
path = "$dir/log"
[delivery]
enabled = false
TOML
"$kumod" --config "$dir/kumod.toml" 2>"$dir/kumod.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 200); do
	kill -0 $pid 2>/dev/null || { cat "$dir/kumod.err" >&2; exit 1; }
	grep -q ready "$dir/kumod.err" 2>/dev/null && break
	sleep 0.05
done

pass=0 fail=0
# check NAME EXPECTED_EXIT PYTHON_CONDITION -- INJECT_ARGS...: run inject, test its JSON as j
check() {
	local name=$1 want=$2 cond=$3 rc=0
	shift 4
	"$bench" inject --port "$port" --json "$@" >"$dir/out.json" 2>"$dir/err.txt" || rc=$?
	if [ "$rc" = "$want" ] && ! grep -q "timed out" "$dir/err.txt" &&
		python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($cond) else 1)" \
			"$dir/out.json"; then
		echo "ok: $name"
		pass=$((pass + 1))
	else
		echo "FAILED: $name (exit $rc, want $want)"
		cat "$dir/out.json" "$dir/err.txt"
		fail=$((fail + 1))
	fi
}

check "421 without reconnects: both connections end at once" 1 \
	'j["accepted"] == 200 and j["temp_failed"] == 2 and j["unanswered"] == 0 and j["conns_gave_up"] == 2 and j["elapsed_s"] < 2.5' \
	-- -n 300 -s 1024 -c 2 --threads 1 --timeout-ms 3000
check "421 with reconnects: reconnect and continue" 0 \
	'j["attempted"] == 300 and j["accepted"] + j["temp_failed"] == 300 and j["accepted"] >= 297 and j["unanswered"] == 0 and j["conns_gave_up"] == 0' \
	-- -n 300 -s 1024 -c 2 --threads 1 --timeout-ms 3000 --max-reconnects 10
check "421 with reconnects, 2 threads, 8 connections" 0 \
	'j["attempted"] == 3000 and j["accepted"] + j["temp_failed"] == 3000 and j["unanswered"] == 0 and j["conns_gave_up"] == 0' \
	-- -n 3000 -s 1024 -c 8 --threads 2 --timeout-ms 3000 --max-reconnects 100
check "reconnect budget runs out: gives up, nothing unanswered" 1 \
	'j["attempted"] < 3000 and j["unanswered"] == 0 and j["conns_gave_up"] == 2' \
	-- -n 3000 -s 1024 -c 2 --threads 1 --timeout-ms 3000 --max-reconnects 2

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
