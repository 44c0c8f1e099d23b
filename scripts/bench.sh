#!/usr/bin/env bash
# The full benchmark suite of scfsim (issue #7): installs the references (nginx, websocketd) with
# apt-get if they are missing, builds release binaries, and runs `scfsim-bench suite`.
#
#   scripts/bench.sh                 # full suite (2–3 minutes); tables + JSON lines on stdout
#   scripts/bench.sh --quick         # tiny sizes: proves that everything runs
#   scripts/bench.sh echo -s 64K     # any scfsim-bench command instead of the suite
#   BENCH_OUT=bench.log scripts/bench.sh   # also keep the output in a file
#
# Run as root: scfsim gives every instance its own network and PID namespace only as root, and
# the hold scenario needs many open files. Other work on the machine skews the figures: the
# suite prints the load average before and after each scenario.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v websocketd >/dev/null 2>&1 || missing+=(websocketd)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "--- installing ${missing[*]}" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq
        # No daemon is wanted: the benchmark starts nginx itself with its own config.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
            echo "--- could not install ${missing[*]}: those columns are skipped" >&2
    else
        echo "--- not root: cannot install ${missing[*]}; those columns are skipped" >&2
    fi
fi

# The provisioned scenario's Node.js server uses examples/node-echo's `ws` package.
if [ ! -e examples/node-echo/node_modules/ws/package.json ]; then
    echo "--- installing examples/node-echo's dependencies (npm ci)" >&2
    npm ci --prefix examples/node-echo --no-audit --no-fund --loglevel=error >&2
fi

echo "--- building release binaries" >&2
cargo build --release -p scfsim -p scfsim-e2e -p scfsim-bench >&2

# hold: 5,000 connections, each several descriptors in scfsim and in the benchmark.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 16384 ]; then
    ulimit -n 16384 2>/dev/null || echo "--- warning: open files limited to $(ulimit -n)" >&2
fi

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- suite "$@"
fi
if [ -n "${BENCH_OUT:-}" ]; then
    target/release/scfsim-bench "$@" | tee "$BENCH_OUT"
else
    exec target/release/scfsim-bench "$@"
fi
