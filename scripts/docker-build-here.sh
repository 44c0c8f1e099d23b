#!/usr/bin/env bash
# Builds the repository's Dockerfile on this machine, where no image registry is reachable and
# HTTPS registries (crates.io, PyPI, npm) answer with a certificate only this machine's CA
# bundle trusts. Starts the engine and makes the base images if needed (docker-engine.sh,
# docker-base-images.sh), then builds with BuildKit, handing the CA bundle as the
# `ca-certificates` build secret (in no image).
#
# The Dockerfile is built without its `# syntax=` line: that line makes BuildKit fetch the
# docker/dockerfile frontend image from Docker Hub; the engine's built-in frontend builds the
# same file. Tags the image IMAGE (default scfsim_scfsim, the name docker-compose v1 gives the
# service with `-p scfsim`, so `docker-compose up --no-build` runs it).
#
# Usage: scripts/docker-build-here.sh [IMAGE]
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${1:-scfsim_scfsim}"
"$root/scripts/docker-engine.sh"
"$root/scripts/docker-base-images.sh"

# BuildKit needs the buildx plugin with a recent CLI; Debian's docker.io CLI (20.10) has it
# built in.
if docker buildx version >/dev/null 2>&1; then
    build=(docker buildx build --load)
else
    build=(/usr/bin/docker build)
fi
cd "$root"
sed '1{/^# syntax=/d}' Dockerfile | DOCKER_BUILDKIT=1 timeout 3600 "${build[@]}" \
    --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt \
    -f - -t "$image" .
