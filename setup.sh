#!/usr/bin/env bash
# Set-up for a fresh Debian 12 machine: installs the Debian packages libkumo needs, builds
# everything with meson, then runs kumod on its embedded default config (SMTP on
# 127.0.0.1:2525, spool in ./var/spool, logs in ./var/log). --no-run stops after the build.
set -euo pipefail
cd "$(dirname "$0")"

PKGS="build-essential meson ninja-build pkg-config liburing-dev libwolfssl-dev
      libc-ares-dev libdeflate-dev libcmocka-dev clang libclang-rt-14-dev python3
      python3-pytest dnsmasq-base libhiredis-dev redis-server libpcre2-dev libsqlite3-dev curl haproxy"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	$SUDO apt-get update -q
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi

[ -d build ] || meson setup build
meson compile -C build

[ "${1:-}" = "--no-run" ] && exit 0
mkdir -p var
exec build/daemons/kumod/kumod
