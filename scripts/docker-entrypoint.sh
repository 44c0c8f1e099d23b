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
set -eu

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
