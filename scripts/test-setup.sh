#!/usr/bin/env bash
# Installs what the tests need on a fresh machine of this kind (Debian, root; Rust, Python 3 and
# Node.js present), so that `cargo test --workspace` passes because everything ran, not because
# something was missing. Idempotent and quiet: a second run installs nothing and prints nothing.
# scripts/test.sh runs it before the tests; run it alone after a fresh checkout if you run single
# tests with cargo.
#
#   Debian:  chromium (the dashboard test drives it headless), nftables and iptables (instances'
#            NAT), iproute2 (the tests' own network namespaces), golang-go and
#            golang-github-gorilla-websocket-dev (the go scaffold, built end to end with the
#            module from Debian), nginx and websocketd (the bench smoke test's reference columns)
#   PyPI:    the Python examples' requirements (websockets), debugpy (the debug-mode tests)
#   npm:     the Node.js examples' dependencies, from their lock files
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-setup: $*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
debs=(chromium nftables iptables iproute2 golang-go golang-github-gorilla-websocket-dev nginx websocketd)
missing=()
for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q 'ok installed' || missing+=("$deb")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing Debian packages: ${missing[*]}; as root: apt-get install ${missing[*]}"
        exit 1
    fi
    say "installing ${missing[*]}"
    log="$(mktemp)"
    # No daemon is wanted (the bench starts nginx itself with its own config): policy-rc.d's
    # 101 keeps the packages' scripts from starting theirs.
    policy=/usr/sbin/policy-rc.d
    cleanup() { rm -f "$log"; }
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
        cleanup() { rm -f "$log" "$policy"; }
    fi
    trap cleanup EXIT
    # Quiet unless it fails: then apt's own output says why.
    if ! { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" &&
        # Chromium with its recommends (fonts among them), for screenshots a person can read.
        if [[ " ${missing[*]} " == *" chromium "* ]]; then
            DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq chromium
        fi; } >"$log" 2>&1; then
        cat "$log" >&2
        say "apt-get install ${missing[*]} failed"
        exit 1
    fi
fi

# --- Python examples -------------------------------------------------------------------------
reqs=()
for req in examples/*/requirements.txt; do reqs+=(-r "$req"); done
if ! python3 -c 'import websockets' 2>/dev/null; then
    say "installing the Python examples' requirements"
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${reqs[@]}"
# debugpy: the debug-mode tests attach to Python instances through it (tests/e2e/debug.rs).
if ! python3 -c 'import debugpy' 2>/dev/null; then
    say "installing debugpy"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore debugpy
fi

# --- Node.js examples ------------------------------------------------------------------------
for lock in examples/*/package-lock.json; do
    dir="$(dirname "$lock")"
    # npm ci wipes node_modules first: only when the lock file changed since the last install.
    if [ ! -e "$dir/node_modules/.package-lock.json" ] || [ "$lock" -nt "$dir/node_modules/.package-lock.json" ]; then
        say "installing $dir's dependencies (npm ci)"
        npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
    fi
done

# --- Docker engine ---------------------------------------------------------------------------
# The whole suite runs with the engine up: its iptables FORWARD policy (DROP) is what instances'
# NAT must get through on hosts that run Docker, and the container tests need it.
scripts/docker-engine.sh

# The container tests' images: the base images from Debian's packages, and scfsim's runtime
# image for isolation = "docker" (each kept once made).
scripts/docker-base-images.sh >/dev/null
scripts/docker-runtime-images.sh >/dev/null

# --- The container image -------------------------------------------------------------------------
# For tests/e2e/compose.rs: the image of docker-compose.yml. A cold build takes about ten minutes
# on two cores (mostly cargo); a cached one seconds. The build's output goes to
# target/docker-build.log.
mkdir -p target
if ! scripts/docker-build-here.sh >target/docker-build.log 2>&1; then
    tail -n 60 target/docker-build.log >&2
    echo "test-setup: building the container image failed; the whole log: target/docker-build.log" >&2
    exit 1
fi
