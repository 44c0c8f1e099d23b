#!/usr/bin/env bash
# Makes, from Debian's packages and this machine's Rust toolchain, the base images the
# Dockerfile's FROM lines name, for an engine that cannot pull them from a registry:
#   debian:<DEBIAN_RELEASE>-slim           debootstrap --variant=minbase, docs and locales left out
#   rust:<RUST_VERSION>-<DEBIAN_RELEASE>   the same plus a C toolchain, git, curl, and this
#                                           machine's Rust toolchain under /usr/local/rustup, with
#                                           the official image's RUSTUP_HOME, CARGO_HOME and PATH
# The tags come from the Dockerfile's ARG defaults, so the Dockerfile stays what a user with
# Docker Hub builds. Idempotent: an image that exists is kept (DOCKER_BASE_IMAGES_REBUILD=1
# makes them again). Neither image carries this machine's CA bundle.
#
# Needs root, a running engine (scripts/docker-engine.sh), and Debian's mirror over plain HTTP
# (DEBIAN_MIRROR, default http://deb.debian.org/debian); installs debootstrap if missing. The
# host's rustc must be the RUST_VERSION the Dockerfile names.
#
# Usage: scripts/docker-base-images.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

arg_default() {
    sed -n "s/^ARG $1=//p" "$root/Dockerfile" | head -n 1
}
release="$(arg_default DEBIAN_RELEASE)"
rust_version="$(arg_default RUST_VERSION)"
if [ -z "$release" ] || [ -z "$rust_version" ]; then
    echo "docker-base-images: no ARG DEBIAN_RELEASE= / ARG RUST_VERSION= default in the Dockerfile" >&2
    exit 1
fi
slim_tag="debian:${release}-slim"
rust_tag="rust:${rust_version}-${release}"

exists() {
    [ "${DOCKER_BASE_IMAGES_REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1
}

if exists "$slim_tag" && exists "$rust_tag"; then
    echo "docker-base-images: $slim_tag and $rust_tag exist"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    echo "docker-base-images: installing debootstrap"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq debootstrap >/dev/null
fi

work="$(mktemp -d /var/tmp/scfsim-base-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# A root file system from Debian's packages, trimmed as Docker's official slim images are.
# $1: directory; $2: extra packages (comma-separated, may be empty).
rootfs() {
    local dir="$1" include="$2"
    echo "docker-base-images: debootstrap $release into $dir${include:+ (with $include)}"
    timeout 1800 debootstrap --variant=minbase ${include:+--include="$include"} \
        "$release" "$dir" "$mirror" >"$dir.log" 2>&1 || {
        tail -n 30 "$dir.log" >&2
        return 1
    }
    cat >"$dir/etc/apt/sources.list" <<EOF
deb $mirror $release main
deb $mirror $release-updates main
deb $security_mirror $release-security main
EOF
    # What the official slim images leave out of every later `apt-get install`, too.
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/var/lib/apt/lists/* \
        "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log
    find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    # The engine provides these at run time; the host's copies must not go into the image.
    : >"$dir/etc/resolv.conf"
    : >"$dir/etc/hostname"
}

import() {
    local dir="$1" tag="$2"
    shift 2
    echo "docker-base-images: importing $tag"
    tar --numeric-owner -C "$dir" -c . | docker import "$@" - "$tag" >/dev/null
}

if ! exists "$slim_tag"; then
    rootfs "$work/slim" ""
    import "$work/slim" "$slim_tag" --change 'CMD ["bash"]'
fi

if ! exists "$rust_tag"; then
    host_version="$(rustc --version | awk '{print $2}')"
    case "$host_version" in
    "$rust_version" | "$rust_version".*) ;;
    *)
        echo "docker-base-images: the Dockerfile wants Rust $rust_version, this machine has $host_version" >&2
        exit 1
        ;;
    esac
    rootfs "$work/rust" "ca-certificates,curl,gcc,git,libc6-dev,make,pkg-config,xz-utils"
    toolchain="${host_version}-x86_64-unknown-linux-gnu"
    sysroot="$(rustc --print sysroot)"
    dest="$work/rust/usr/local/rustup/toolchains/$toolchain"
    mkdir -p "$dest" "$work/rust/usr/local/cargo/bin"
    # Everything but the HTML docs (most of the size), as the official image's minimal profile.
    tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$dest" -x
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$toolchain" \
        >"$work/rust/usr/local/rustup/settings.toml"
    install -m 755 "$(command -v rustup)" "$work/rust/usr/local/cargo/bin/rustup"
    for tool in "$dest"/bin/*; do
        ln -s rustup "$work/rust/usr/local/cargo/bin/$(basename "$tool")"
    done
    import "$work/rust" "$rust_tag" \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV RUST_VERSION=$host_version" \
        --change 'CMD ["bash"]'
    docker run --rm "$rust_tag" sh -c 'rustc --version && cargo --version'
fi

docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($slim_tag|$rust_tag) "
