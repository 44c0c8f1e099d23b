#!/usr/bin/env bash
# The test command (README.md "Run the tests", and what .ci/run runs): installs what the tests
# need (scripts/test-setup.sh), then runs every test of the workspace. Extra arguments go to
# `cargo test`, e.g. `scripts/test.sh -p scfsim-e2e --test examples`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-setup.sh
if [ "$#" -eq 0 ]; then
    # Every test binary, even after one fails: one run shows every failure.
    set -- --workspace --no-fail-fast
fi
exec cargo test --locked "$@"
