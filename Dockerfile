# scfsim in a container: `docker compose up` (see docker-compose.yml) serves config/scfsim.toml
# and examples/ on ws://localhost:8080/… with the admin API on http://localhost:9100.
#
# Stages: `builder` compiles scfsim; `deps` fetches the example functions' libraries (websockets
# for Python, ws for Node.js); the final image has the runtimes, those libraries and scfsim, and
# downloads nothing when it runs.
#
# Builds with Compose v2 (`docker compose`, BuildKit), Compose v1 (`docker-compose`) and the
# classic builder alike: no `# syntax=` line (BuildKit would fetch a frontend image from Docker
# Hub), no `RUN --mount`, no build secrets.
#
# Behind a TLS-intercepting proxy, put the certificate(s) that trust it (PEM, *.crt) into
# docker/extra-ca-certificates/ before building: the `builder` and `deps` stages trust them while
# crates, wheels and npm packages download; the final image does not contain them (it copies
# only the scfsim binary and the libraries from those stages).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The workspace: Cargo needs every member's manifest (of tests/, the end-to-end tests' package,
# only the manifest: its targets are named there, and their files are needed only to build
# them, so editing a test does not invalidate this stage's cache), and crates/init compiles in
# its templates and the example functions' code it scaffolds from.
# Extra CAs first: this layer stays cached while the sources change.
COPY docker/extra-ca-certificates/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY tests/Cargo.toml tests/Cargo.toml
COPY examples examples
# Cargo's registry and target/ live only in this stage's layers, never in the final image.
RUN cargo build --release --locked -p scfsim \
    && install -m 755 target/release/scfsim /usr/local/bin/scfsim

FROM debian:${DEBIAN_RELEASE}-slim AS deps
# Not pinned to versions (DL3008): a Debian stable release only gets fixes, and a pin would
# break the build as soon as the pinned version leaves the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates npm python3-pip \
    && rm -rf /var/lib/apt/lists/*
COPY docker/extra-ca-certificates/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates
# Python packages go to /pyroot/usr/local/lib/python3.*/dist-packages, copied to / below: the
# interpreter finds them whichever path runs it (/usr/bin/python3 or a /var/lang link).
COPY examples/python-echo/requirements.txt /tmp/requirements.txt
RUN pip3 install --no-cache-dir --break-system-packages --root /pyroot -r /tmp/requirements.txt
# Node.js resolves `require('ws')` through every parent directory's node_modules, so one
# /srv/scfsim/node_modules serves every function under /srv/scfsim, including examples/ mounted
# from the host without a node_modules of its own.
WORKDIR /srv/scfsim
COPY examples/node-echo/package.json examples/node-echo/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM debian:${DEBIAN_RELEASE}-slim
# bash: bootstraps start with #!/bin/bash. iproute2: `ip`, with which scfsim wires each
# instance's namespace to the host. nftables: `nft`, for the instances' NAT to the outside. tini: PID 1, forwards SIGTERM to scfsim (which then closes every connection with
# 1001, records it, stops its instance) and reaps orphans. Not pinned to versions, as above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates iproute2 nftables nodejs python3 tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=deps /pyroot/ /
COPY --from=deps /srv/scfsim/node_modules /srv/scfsim/node_modules
COPY --from=builder /usr/local/bin/scfsim /usr/local/bin/scfsim

# The platform's runtime paths, so bootstraps written for the platform run unchanged. With
# namespace isolation scfsim mounts its own equivalent tree on /var/lang inside each instance;
# these links serve everything else (`docker compose exec`, isolation = none).
RUN set -eux; \
    for v in python3 python36 python37 python38 python39 python310 python311 python312; do \
        mkdir -p "/var/lang/$v/bin"; \
        ln -s /usr/bin/python3 "/var/lang/$v/bin/python3"; \
    done; \
    ln -s /usr/bin/python3 /var/lang/python3/bin/python; \
    for v in node10 node12 node14 node16 node18 node20; do \
        mkdir -p "/var/lang/$v/bin"; \
        ln -s /usr/bin/node "/var/lang/$v/bin/node"; \
    done; \
    /var/lang/python3/bin/python3 -c 'import websockets'; \
    /var/lang/node16/bin/node -e 'require("/srv/scfsim/node_modules/ws")'

# Defaults for `docker run`; docker-compose.yml mounts the repository's copies over these.
COPY config /srv/scfsim/config
COPY examples /srv/scfsim/examples
# (COPY --chmod is BuildKit-only; the classic builder of Compose v1 rejects it.)
COPY scripts/docker-entrypoint.sh /usr/local/bin/scfsim-docker-entrypoint
RUN chmod 755 /usr/local/bin/scfsim-docker-entrypoint

WORKDIR /srv/scfsim
VOLUME /var/lib/scfsim
EXPOSE 8080 9100
ENTRYPOINT ["tini", "--", "scfsim-docker-entrypoint"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--admin-listen", "0.0.0.0:9100", "--data-dir", "/var/lib/scfsim"]
