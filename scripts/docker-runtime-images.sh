#!/usr/bin/env bash
# Makes scfsim's runtime image for code functions with isolation = "docker":
#   scfsim-runtime:<DEBIAN_RELEASE>   debian:<DEBIAN_RELEASE>-slim plus Debian's python3 and nodejs,
#                                      reachable under the platform's /var/lang paths
#                                      (/var/lang/python3/bin/python3, /var/lang/node16/bin/node, …,
#                                      the same list scfsim maps for native instances)
# built from Debian's packages over plain HTTP, as scripts/docker-base-images.sh makes the base
# images (no registry is needed). Idempotent: an image that exists is kept
# (DOCKER_RUNTIME_IMAGES_REBUILD=1 makes it again; the replaced image is removed).
#
# Needs a running engine (scripts/docker-engine.sh) and the base image
# (scripts/docker-base-images.sh).
#
# Usage: scripts/docker-runtime-images.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
release="$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$root/Dockerfile" | head -n 1)"
release="${release:-bookworm}"
tag="scfsim-runtime:${release}"
base="debian:${release}-slim"

if [ "${DOCKER_RUNTIME_IMAGES_REBUILD:-0}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "docker-runtime-images: $tag exists"
    exit 0
fi
if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "docker-runtime-images: the base image $base is missing; run scripts/docker-base-images.sh" >&2
    exit 1
fi
old="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"

work="$(mktemp -d /var/tmp/scfsim-runtime-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The /var/lang paths platform bootstraps call, as crates/pool/src/runtimes.rs maps them.
links=""
for py in python3 python36 python37 python38 python39 python310 python311 python312; do
    links="$links mkdir -p /var/lang/$py/bin && ln -s /usr/bin/python3 /var/lang/$py/bin/python3 &&"
done
links="$links ln -s /usr/bin/python3 /var/lang/python3/bin/python &&"
for node in node10 node12 node14 node16 node18 node20; do
    links="$links mkdir -p /var/lang/$node/bin && ln -s /usr/bin/node /var/lang/$node/bin/node &&"
done

cat >"$work/Dockerfile" <<DOCKERFILE
FROM $base
# python3-websockets: the one library the Python examples import; everything else is the
# standard library, as on the platform's runtime.
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
        python3 python3-websockets nodejs ca-certificates >/dev/null \\
    && rm -rf /var/lib/apt/lists/* \\
    && $links true
ENV PATH=/var/lang/python3/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /var/user
DOCKERFILE

echo "docker-runtime-images: building $tag from $base (Debian's python3 and nodejs)"
timeout 1800 docker build --quiet --tag "$tag" \
    --label io.scfsim.image=runtime "$work" >/dev/null
new="$(docker image inspect -f '{{.Id}}' "$tag")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
fi
echo "docker-runtime-images: $tag built"
