#!/usr/bin/env bash
# Makes sure a Docker engine runs on this machine, so that scfsim is tested the way it runs on a
# host with Docker: dockerd sets the iptables FORWARD policy to DROP, and scfsim's instances must
# still reach beyond the host through its NAT.
#
# Idempotent: installs docker.io and docker-compose with apt-get if `dockerd` is missing, starts
# dockerd (logging to /var/log/dockerd.log) if `docker info` does not answer, and waits until it
# does, at most DOCKER_ENGINE_WAIT seconds (default 60). The engine is left running. Needs root.
# Exit 0 when the engine answers; otherwise non-zero with the end of dockerd's log.
#
# Usage: scripts/docker-engine.sh
set -euo pipefail

wait_seconds="${DOCKER_ENGINE_WAIT:-60}"
log=/var/log/dockerd.log

answers() {
    timeout 10 docker info >/dev/null 2>&1
}

if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
    echo "docker-engine: installing docker.io and docker-compose"
    # apt-get's own network waits are bounded by its timeouts; `timeout` bounds the whole.
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends \
        docker.io docker-compose iptables >/dev/null
fi

if answers; then
    echo "docker-engine: the engine is running"
    exit 0
fi

# A dockerd that is running but not answering yet (started by someone a moment ago) is waited
# for, not started twice: a second one would fail on its pid file anyway.
if ! pgrep -x dockerd >/dev/null; then
    echo "docker-engine: starting dockerd (log: $log)"
    # setsid: the engine outlives this script and the shell or CI step that ran it.
    setsid dockerd >>"$log" 2>&1 </dev/null &
fi

for _ in $(seq "$wait_seconds"); do
    if answers; then
        echo "docker-engine: the engine is running"
        exit 0
    fi
    sleep 1
done

echo "docker-engine: dockerd did not answer within ${wait_seconds}s; the end of $log:" >&2
tail -n 30 "$log" >&2 || true
exit 1
