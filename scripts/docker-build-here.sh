#!/usr/bin/env bash
# Builds the image of docker-compose.yml on this machine, where no image registry is reachable
# and HTTPS registries (crates.io, PyPI, npm) answer with a certificate only this machine's CA
# bundle trusts. Users with a registry never need this script: `docker compose up --build` is
# all they run.
#
# 1. starts the engine if needed (docker-engine.sh);
# 2. makes the base images the Dockerfile's FROM lines name (docker-base-images.sh);
# 3. puts this machine's CA bundle into docker/extra-ca-certificates/ (ignored by git), which
#    the Dockerfile's builder stages trust and the final image does not contain;
# 4. builds with the Compose tool the end-to-end test uses (`docker compose` if the CLI has it,
#    else `docker-compose`), so the test's `up --build` finds every layer in the cache.
#
# Extra arguments go to `build` (e.g. --no-cache). The project name is COMPOSE_PROJECT_NAME
# (default: the directory's name, as Compose does).
#
# Usage: scripts/docker-build-here.sh [BUILD ARGS...]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/docker-engine.sh"
"$root/scripts/docker-base-images.sh"

bundle=/etc/ssl/certs/ca-certificates.crt
dest="$root/docker/extra-ca-certificates/host-ca-bundle.crt"
if [ -f "$bundle" ] && ! cmp -s "$bundle" "$dest"; then
    echo "docker-build-here: copying $bundle to $dest"
    cp "$bundle" "$dest"
fi

if timeout 20 docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    echo "docker-build-here: no Compose: apt-get install docker-compose (or the docker-compose-plugin)" >&2
    exit 1
fi
cd "$root"
echo "docker-build-here: ${compose[*]} build $*"
timeout "${DOCKER_BUILD_TIMEOUT:-3600}" "${compose[@]}" build "$@"
