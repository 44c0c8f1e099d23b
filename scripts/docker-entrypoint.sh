#!/bin/sh
# Entrypoint of the scfsim image (see Dockerfile and docker-compose.yml).
#
# `serve` and `check` get a copy of the mounted config that also sets gateway.admin_token:
# inside the container the admin API listens on 0.0.0.0, and scfsim refuses a non-loopback admin
# listener without a token. The token comes from the config itself if it sets one, else from
# $SCFSIM_ADMIN_TOKEN. Every other command (`invocations`, `--help`) runs unchanged.
#
#   SCFSIM_CONFIG       the config to serve (default /srv/scfsim/config/scfsim.toml; read-only)
#   SCFSIM_ADMIN_TOKEN  the admin token, unless the config sets gateway.admin_token
#
# The copy is written to a directory next to the config's own (its parent must be writable), in
# which every other entry of the config's directory is linked: relative paths in the config
# (`code_dir = "../examples/echo"`, `code_dir = "functions/f"`) resolve to the same places.
#
# Before `serve`, the container's own cgroups are made writable, so that scfsim can give every
# instance a cgroup and enforce memory_mb and the process limit (see writable_cgroups below).
set -eu

# Docker mounts the container's cgroups read-only (also with SYS_ADMIN). Remounting them
# writable needs SYS_ADMIN and no AppArmor mount rule against it (docker-compose.yml grants
# both); what becomes writable is only the container's own subtree, whose limits still bound
# everything scfsim makes in it. Best effort: where it fails, scfsim says at startup that it
# watches memory_mb itself instead, and why.
writable_cgroups() {
    if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
        # cgroup v1: one bind mount per controller; flip the mount's read-only flag.
        for controller in memory pids; do
            dir="/sys/fs/cgroup/$controller"
            [ -d "$dir" ] || continue
            probe="$dir/scfsim-probe-$$"
            if mkdir "$probe" 2>/dev/null; then
                rmdir "$probe"
                continue
            fi
            mount -o remount,bind,rw "$dir" 2>/dev/null || mount -o remount,rw "$dir" 2>/dev/null ||
                echo "scfsim-docker: cannot make $dir writable (needs SYS_ADMIN, AppArmor unconfined)" >&2
        done
    elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        # cgroup v2 (the container's own cgroup namespace): writable, then every process of the
        # container moved out of its root into a leaf, so that the root can hand the memory and
        # pids controllers down to scfsim's cgroups (a cgroup with processes cannot).
        # Not tested on the machine this was written on (cgroup v1).
        root=/sys/fs/cgroup
        if ! mkdir "$root/scfsim-probe-$$" 2>/dev/null; then
            mount -o remount,rw "$root" 2>/dev/null || mount -o remount,bind,rw "$root" 2>/dev/null || {
                echo "scfsim-docker: cannot make $root writable (needs SYS_ADMIN, AppArmor unconfined)" >&2
                return 0
            }
        else
            rmdir "$root/scfsim-probe-$$"
        fi
        mkdir -p "$root/init" 2>/dev/null || return 0
        while read -r pid; do
            echo "$pid" >"$root/init/cgroup.procs" 2>/dev/null || true
        done <"$root/cgroup.procs"
        echo "+memory +pids" >"$root/cgroup.subtree_control" 2>/dev/null ||
            echo "scfsim-docker: cannot enable the memory and pids controllers in $root" >&2
    fi
}

case "${1:-}" in
serve | check) ;;
*) exec scfsim "$@" ;;
esac
for arg in "$@"; do
    case "$arg" in
    --config | --config=*)
        exec scfsim "$@" # a config named on the command line is served as it is
        ;;
    esac
done

# With --isolation docker (docker-compose.docker.yml) instances are the engine's containers:
# scfsim makes no cgroups here, and the container has no SYS_ADMIN to remount them.
isolation=
previous=
for arg in "$@"; do
    case "$previous/$arg" in
    --isolation/*) isolation="$arg" ;;
    */--isolation=*) isolation="${arg#--isolation=}" ;;
    esac
    previous="$arg"
done
if [ "$1" = serve ] && [ "$isolation" != docker ]; then
    writable_cgroups
fi

src="${SCFSIM_CONFIG:-/srv/scfsim/config/scfsim.toml}"
if [ ! -f "$src" ]; then
    echo "scfsim-docker: config $src not found (mount a config directory there, or set SCFSIM_CONFIG)" >&2
    exit 2
fi
src_dir="$(cd "$(dirname "$src")" && pwd)"
name="$(basename "$src")"
out_dir="$(dirname "$src_dir")/.docker-$(basename "$src_dir")"
rm -rf "$out_dir"
mkdir -p "$out_dir"
for entry in "$src_dir"/* "$src_dir"/.[!.]*; do
    if [ -e "$entry" ] && [ "$(basename "$entry")" != "$name" ]; then
        ln -s "$entry" "$out_dir/"
    fi
done
out="$out_dir/$name"

if grep -Eq '^[[:space:]]*admin_token[[:space:]]*=' "$src"; then
    cp "$src" "$out"
else
    token="${SCFSIM_ADMIN_TOKEN:-}"
    if [ -z "$token" ]; then
        echo "scfsim-docker: set SCFSIM_ADMIN_TOKEN (or gateway.admin_token in $src): the admin API listens on a non-loopback address in the container" >&2
        exit 2
    fi
    case "$token" in
    *[!A-Za-z0-9._~+/=-]*)
        echo "scfsim-docker: SCFSIM_ADMIN_TOKEN may hold only letters, digits and . _ ~ + / = -" >&2
        exit 2
        ;;
    esac
    gateway='^[[:space:]]*\[gateway\][[:space:]]*(#.*)?$'
    if grep -Eq "$gateway" "$src"; then
        sed -E "/$gateway/a admin_token = \"$token\"" "$src" >"$out"
    else
        { cat "$src" && printf '\n[gateway]\nadmin_token = "%s"\n' "$token"; } >"$out"
    fi
fi

exec scfsim "$@" --config "$out"
