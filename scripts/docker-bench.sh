#!/usr/bin/env bash
# Measures the image users get, side by side with the native run, in one run:
#   - the image's size (`docker image inspect`);
#   - startup: from `up -d` (image built, container not yet created) until /healthz answers
#     through the published port, and until the engine reports "healthy"; the native binary
#     from its start until /healthz answers; ROUNDS times each;
#   - connect-to-first-echo on /echo (TCP connect, upgrade, one 16-byte text message and its
#     echo), native and container alternating connection by connection, CONNECTIONS per side;
#     then the close (1000) and the next one.
# Both serve config/scfsim.toml (the container with the compose file's defaults except the host
# ports); the native scfsim is target/release/scfsim (built here if missing or stale).
#
# Needs the image built (scripts/docker-build-here.sh here; `docker compose build` elsewhere),
# python3 with `websockets` (pip install -r examples/python-echo/requirements.txt). Leaves
# nothing behind (`down -v`, the image's tag, temp dir). Figures go to stdout.
#
# Usage: scripts/docker-bench.sh            (ROUNDS=5 CONNECTIONS=200 by default)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rounds="${ROUNDS:-5}"
connections="${CONNECTIONS:-200}"
cd "$root"

if timeout 20 docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
project="scfsim-bench-$$"
work="$(mktemp -d /tmp/scfsim-docker-bench.XXXXXX)"
native_pid=
cleanup() {
    [ -z "$native_pid" ] || kill "$native_pid" 2>/dev/null || true
    [ -z "$native_pid" ] || wait "$native_pid" 2>/dev/null || true
    timeout 180 "${compose[@]}" -p "$project" down -v -t 30 >/dev/null 2>&1 || true
    # The tag only: its layers are the next build's cache.
    for tag in "${project}_scfsim" "${project}-scfsim"; do
        timeout 60 docker image rm --no-prune "$tag" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export SCFSIM_WS_PORT SCFSIM_ADMIN_PORT
SCFSIM_WS_PORT="$(free_port)"
SCFSIM_ADMIN_PORT="$(free_port)"
native_ws="$(free_port)"
native_admin="$(free_port)"
unset SCFSIM_ADMIN_TOKEN SCFSIM_CONFIG_DIR SCFSIM_EXAMPLES_DIR

echo "== build (not measured): ${compose[*]} build; cargo build --release -p scfsim"
timeout 3600 "${compose[@]}" -p "$project" build >"$work/build.log" 2>&1 || {
    tail -n 30 "$work/build.log" >&2
    exit 1
}
timeout 3600 cargo build --release --locked -p scfsim >"$work/cargo.log" 2>&1 || {
    tail -n 30 "$work/cargo.log" >&2
    exit 1
}
image="$(timeout 60 "${compose[@]}" -p "$project" config | sed -n 's/^ *image: *//p' | head -n 1)"
[ -n "$image" ] || image="${project}_scfsim"
docker image inspect "$image" >/dev/null 2>&1 || image="${project}-scfsim"

echo
echo "== machine: $(nproc) cores, $(uname -r), engine $(docker version --format '{{.Server.Version}}'), ${compose[*]} $(timeout 20 "${compose[@]}" version --short 2>/dev/null || true)"
echo "   load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== image $image"
docker image inspect -f '   size: {{.Size}} bytes' "$image"
docker images --format '   {{.Repository}}:{{.Tag}} {{.Size}}' | grep "^   $image:" || true
printf '   compiler in the final image: '
if docker run --rm --entrypoint sh "$image" -c 'command -v cargo rustc gcc cc' | grep -q .; then
    echo "YES"
else
    echo "none (cargo, rustc, gcc, cc absent)"
fi

python3 - "$rounds" "$connections" "$project" "$native_ws" "$native_admin" "$work" <<'EOF'
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from websockets.sync.client import connect

rounds, connections = int(sys.argv[1]), int(sys.argv[2])
project, native_ws, native_admin, work = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
ws_port, admin_port = int(os.environ["SCFSIM_WS_PORT"]), int(os.environ["SCFSIM_ADMIN_PORT"])
compose = ["docker", "compose"] if subprocess.run(
    ["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0 else ["docker-compose"]
compose += ["-p", project]


def healthz(port, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.02)
    return False


def run(args, timeout=180):
    subprocess.run(args, check=True, capture_output=True, timeout=timeout)


def summary(name, xs, unit="ms"):
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    print(f"   {name:<34} n={len(xs):<4} min {xs[0]:8.1f}  median {statistics.median(xs):8.1f}  "
          f"p90 {p(0.9):8.1f}  max {xs[-1]:8.1f} {unit}")


native_cmd = ["target/release/scfsim", "serve", "--config", "config/scfsim.toml",
              "--listen", f"127.0.0.1:{native_ws}", "--admin-listen", f"127.0.0.1:{native_admin}",
              "--data-dir", os.path.join(work, "native-data")]

print("\n== startup: command to /healthz answering (ms)")
up_ready, up_healthy, native_ready = [], [], []
for _ in range(rounds):
    run(compose + ["down", "-v", "-t", "30"])
    t0 = time.monotonic()
    run(compose + ["up", "-d"])
    assert healthz(admin_port, t0 + 180), "container never answered /healthz"
    up_ready.append((time.monotonic() - t0) * 1000)
    cid = subprocess.run(compose + ["ps", "-q", "scfsim"], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    while subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                         capture_output=True, text=True, timeout=60).stdout.strip() != "healthy":
        assert time.monotonic() < t0 + 180, "container never healthy"
        time.sleep(0.1)
    up_healthy.append((time.monotonic() - t0) * 1000)
    t0 = time.monotonic()
    native = subprocess.Popen(native_cmd, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(work, "native.log"), "a"))
    assert healthz(native_admin, t0 + 60), "native scfsim never answered /healthz"
    native_ready.append((time.monotonic() - t0) * 1000)
    native.terminate()
    native.wait(timeout=60)
summary("docker compose up -d -> /healthz", up_ready)
summary("docker compose up -d -> healthy", up_healthy)
summary("native scfsim serve -> /healthz", native_ready)

print(f"\n== connect-to-first-echo on /echo, alternating, {connections} per side (ms)")
# The container from the last round is up; a native one beside it.
native = subprocess.Popen(native_cmd, stdout=subprocess.DEVNULL,
                          stderr=open(os.path.join(work, "native.log"), "a"))
try:
    assert healthz(native_admin, time.monotonic() + 60)
    times = {"native": [], "container": []}
    ports = {"native": native_ws, "container": ws_port}
    for i in range(connections + 5):
        for side in ("native", "container") if i % 2 == 0 else ("container", "native"):
            t0 = time.monotonic()
            with connect(f"ws://127.0.0.1:{ports[side]}/echo", open_timeout=60,
                         close_timeout=10) as ws:
                ws.send("0123456789abcdef")
                assert ws.recv(timeout=60) == "0123456789abcdef"
                elapsed = (time.monotonic() - t0) * 1000
            if i >= 5:  # the first five per side are warm-up
                times[side].append(elapsed)
    summary("native    (127.0.0.1 -> scfsim)", times["native"])
    summary("container (127.0.0.1 -> docker-proxy -> scfsim)", times["container"])
finally:
    native.terminate()
    native.wait(timeout=60)
print(f"\n   load average at end: {open('/proc/loadavg').read().split()[:3]}")
EOF
