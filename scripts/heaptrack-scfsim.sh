#!/usr/bin/env bash
# scfsim under heaptrack, for memory profiles of the benchmark's scenarios:
#
#   scfsim-bench hold -n 300 --scfsim scripts/heaptrack-scfsim.sh
#   heaptrack_print -f /tmp/heaptrack-scfsim.PID.zst --flamegraph-cost-type peak -F stacks.txt
#
# The interpreter runs detached (not one of scfsim's children, which hold counts), and this
# script execs scfsim so that the benchmark measures scfsim's own pid. Instances start with a
# cleared environment, so only scfsim is traced. SCFSIM_REAL names the binary (default: the
# release build next to this script's repository).
set -euo pipefail
real="${SCFSIM_REAL:-$(cd "$(dirname "$0")/.." && pwd)/target/release/scfsim}"
lib=/usr/lib/heaptrack
[ -e "$lib/libheaptrack_preload.so" ] || {
    echo "heaptrack is not installed: apt-get install heaptrack" >&2
    exit 1
}
out="${HEAPTRACK_OUT:-/tmp}/heaptrack-scfsim.$$"
pipe="$out.fifo"
mkfifo "$pipe"
(setsid bash -c "'$lib/libexec/heaptrack_interpret' < '$pipe' | zstd -q -c > '$out.zst'; rm -f '$pipe'" &)
export LD_PRELOAD="$lib/libheaptrack_preload.so" DUMP_HEAPTRACK_OUTPUT="$pipe"
exec "$real" "$@"
