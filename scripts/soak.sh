#!/usr/bin/env bash
# Soak test of scfsim (issue #6; not run in CI): N connect/message/close cycles against a release
# scfsim, mixing normal clients with hostile ones (protocol violations, dropped TCP, bad and
# dangling handshakes) and a function that breaks the protocol. Afterwards it reports:
#   - errors: cycles whose client-visible result (echo, close code, HTTP status) or record
#     (status code) was not the expected one, by scenario;
#   - leaks: scfsim's child processes, open descriptors and instance cgroups once everything
#     has ended, against a baseline taken after a warm-up; processes left in the functions'
#     code directories anywhere on the host (escaped instances);
#   - scfsim's RSS after the warm-up and at the end.
#
#   scripts/soak.sh                  # 10,000 cycles, 4 clients at a time
#   SOAK_N=2000 scripts/soak.sh      # fewer
#   SOAK_CONCURRENCY=8 scripts/soak.sh
#   SOAK_KEEP=1 scripts/soak.sh      # keep the temp dir (config, data, scfsim's log)
#
# The client is a stdlib-only Python driver (raw sockets, its own frame encoder), since a
# hostile client must write frames no WebSocket library will. Traffic goes to 127.0.0.1 only;
# every loop is bounded in count, every socket operation in time. Exit status: 0 when there
# were no errors and no leaks, 1 otherwise. Run as root, like scfsim's namespaces need.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${SOAK_N:-${1:-10000}}"
CONCURRENCY="${SOAK_CONCURRENCY:-4}"
WARMUP="${SOAK_WARMUP:-100}"

command -v python3 >/dev/null || { echo "soak: python3 is required" >&2; exit 2; }

echo "--- building release binaries" >&2
cargo build --release -p scfsim -p scfsim-e2e --bins >&2
SCFSIM="$PWD/target/release/scfsim"
FIXTURE="$PWD/target/release/scfsim-fixture"

ulimit -n 16384 2>/dev/null || true

WORK="$(mktemp -d /tmp/scfsim-soak.XXXXXX)"
SCFSIM_PID=""
cleanup() {
    if [ -n "$SCFSIM_PID" ] && kill -0 "$SCFSIM_PID" 2>/dev/null; then
        kill -TERM "$SCFSIM_PID" 2>/dev/null || true
        wait "$SCFSIM_PID" 2>/dev/null || true
    fi
    if [ "${SOAK_KEEP:-0}" = 1 ]; then
        echo "--- kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- functions: the echo fixture, and a bootstrap that answers the handshake itself and then
# sends a text frame that is not UTF-8.
mkdir -p "$WORK/functions/echo" "$WORK/functions/bad"
cat >"$WORK/functions/echo/scf_bootstrap" <<EOF
#!/bin/bash
exec $FIXTURE echo
EOF
cat >"$WORK/functions/bad/scf_bootstrap" <<'EOF'
#!/bin/bash
exec python3 - <<'PYTHON'
import base64, hashlib, socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 9000))
srv.listen(16)
while True:
    conn, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    if b"\r\n\r\n" not in head:
        conn.close()
        continue
    key = b""
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            key = value.strip()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    conn.sendall(b"\x81\x02\xff\xfe")
    while conn.recv(4096):
        pass
    break
PYTHON
EOF
chmod 755 "$WORK/functions/echo/scf_bootstrap" "$WORK/functions/bad/scf_bootstrap"
cat >"$WORK/scfsim.toml" <<EOF
relaxed_limits = true

[gateway]
data_dir = "data"

[[functions]]
name = "echo"
path = "/echo"
code_dir = "functions/echo"
idle_timeout = "10s"
max_instances = 1000

[[functions]]
name = "bad"
path = "/bad"
code_dir = "functions/bad"
idle_timeout = "10s"
max_instances = 1000
EOF

echo "--- starting $SCFSIM" >&2
RUST_LOG=warn "$SCFSIM" serve --config "$WORK/scfsim.toml" --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --data-dir "$WORK/data" \
    >"$WORK/scfsim.stdout" 2>"$WORK/scfsim.stderr" </dev/null &
SCFSIM_PID=$!
for _ in $(seq 300); do
    grep -qx ready "$WORK/scfsim.stdout" 2>/dev/null && break
    kill -0 "$SCFSIM_PID" 2>/dev/null || { cat "$WORK/scfsim.stderr" >&2; exit 2; }
    sleep 0.1
done
grep -qx ready "$WORK/scfsim.stdout" || { echo "soak: scfsim never printed ready" >&2; exit 2; }
WS="$(sed -n 's|^listening ws://||p' "$WORK/scfsim.stdout")"
ADMIN="$(sed -n 's|^listening admin http://||p' "$WORK/scfsim.stdout")"
echo "--- scfsim pid $SCFSIM_PID, gateway $WS, admin $ADMIN; $N cycles, $CONCURRENCY at a time" >&2

export SOAK_WS="$WS" SOAK_ADMIN="$ADMIN" SOAK_PID="$SCFSIM_PID" SOAK_N="$N" \
    SOAK_CONCURRENCY="$CONCURRENCY" SOAK_WARMUP="$WARMUP" SOAK_WORK="$WORK"
set +e
python3 - <<'PYTHON'
import collections, json, os, random, socket, struct, sys, threading, time
from concurrent.futures import ThreadPoolExecutor

WS_HOST, WS_PORT = os.environ["SOAK_WS"].rsplit(":", 1)
ADMIN_HOST, ADMIN_PORT = os.environ["SOAK_ADMIN"].rsplit(":", 1)
PID = int(os.environ["SOAK_PID"])
N = int(os.environ["SOAK_N"])
CONCURRENCY = int(os.environ["SOAK_CONCURRENCY"])
WARMUP = int(os.environ["SOAK_WARMUP"])
WORK = os.environ["SOAK_WORK"]
TIMEOUT = 30.0
MASK = b"\x37\xfa\x21\x3d"
KEY_HEADERS = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


class Fail(Exception):
    pass


def frame(opcode, payload=b"", fin=True, rsv=0, masked=True):
    out = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        out.append(bit | n)
    elif n <= 0xFFFF:
        out.append(bit | 126)
        out += struct.pack(">H", n)
    else:
        out.append(bit | 127)
        out += struct.pack(">Q", n)
    if masked:
        out += MASK
        out += bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def close(code=None, reason=b""):
    return frame(0x8, (struct.pack(">H", code) if code is not None else b"") + reason)


def connect():
    s = socket.create_connection((WS_HOST, int(WS_PORT)), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def status(head):
    parts = head.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Fail("not an HTTP response: %r" % head[:80])
    return int(parts[1])


class Ws:
    def __init__(self, path="/echo", early=b""):
        self.s = connect()
        head = "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n%s\r\n" % (
            path, KEY_HEADERS)
        self.s.sendall(head.encode() + early)
        head, self.buf = read_head(self.s)
        if status(head) != 101:
            raise Fail("upgrade refused: %r" % head[:200])
        self.request_id = None
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "x-scf-request-id":
                self.request_id = v.strip()
        if not self.request_id:
            raise Fail("101 without X-Scf-Request-Id")

    def send(self, data):
        self.s.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def frame(self):
        """(fin, opcode, payload) or None at EOF."""
        if not self._fill(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n, at = b1 & 0x7F, 2
        if n == 126:
            if not self._fill(4):
                return None
            n, at = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            if not self._fill(10):
                return None
            n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
        if b1 & 0x80:
            raise Fail("masked frame from scfsim")
        if not self._fill(at + n):
            return None
        payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def message(self):
        """('text'|'binary'|'close'|'pong'|'ping', payload) or None at EOF."""
        parts, kind = [], None
        while True:
            f = self.frame()
            if f is None:
                return None
            fin, op, payload = f
            if op == 0x8:
                return "close", payload
            if op == 0x9:
                return "ping", payload
            if op == 0xA:
                return "pong", payload
            if op in (1, 2):
                kind = "text" if op == 1 else "binary"
            parts.append(payload)
            if fin:
                return kind, b"".join(parts)

    def expect(self, kind, payload):
        while True:
            m = self.message()
            if m is None:
                raise Fail("EOF while waiting for %s" % kind)
            if m[0] in ("ping", "pong"):
                continue
            if m != (kind, payload):
                raise Fail("expected %s %r, got %r" % (kind, payload[:40], (m[0], m[1][:40])))
            return

    def expect_close(self, code):
        while True:
            m = self.message()
            if m is None:
                raise Fail("EOF without a close frame (wanted %s)" % code)
            if m[0] == "close":
                got = struct.unpack(">H", m[1][:2])[0] if len(m[1]) >= 2 else None
                if got != code:
                    raise Fail("close %s, wanted %s (%r)" % (got, code, m[1][2:60]))
                try:
                    self.send(close(got))
                except OSError:
                    pass
                return

    def drain(self):
        try:
            while self.message() is not None:
                pass
        except (OSError, Fail):
            pass
        self.s.close()


# --- scenarios: each returns (request_id or None, expected record status or None).

def normal(i):
    ws = Ws()
    text = ("message %d ✓" % i).encode()
    ws.send(frame(1, text) + frame(2, bytes(range(256)) * 4))
    ws.expect("text", text)
    ws.expect("binary", bytes(range(256)) * 4)
    ws.send(close(1000))
    ws.expect_close(1000)
    ws.drain()
    return ws.request_id, 200


def fragmented_with_ping(i):
    ws = Ws()
    ws.send(frame(1, b"frag", fin=False) + frame(0x9, b"p") + frame(0, b"men", fin=False)
            + frame(0, b"ted", fin=True))
    ws.expect("text", b"fragmented")
    ws.send(close(1000))
    ws.expect_close(1000)
    ws.drain()
    return ws.request_id, 200


def empty_messages(i):
    ws = Ws()
    ws.send(frame(1, b"") + frame(2, b""))
    ws.expect("text", b"")
    ws.expect("binary", b"")
    ws.send(close(1000))
    ws.expect_close(1000)
    ws.drain()
    return ws.request_id, 200


def early_frames(i):
    ws = Ws(early=frame(1, b"early"))
    ws.expect("text", b"early")
    ws.send(close(1000))
    ws.expect_close(1000)
    ws.drain()
    return ws.request_id, 200


def utf8_close_reason(i):
    ws = Ws()
    ws.send(close(1000, "añ✓".encode()))
    m = ws.message()
    if m != ("close", struct.pack(">H", 1000) + "añ✓".encode()):
        raise Fail("close answer %r" % (m,))
    ws.drain()
    return ws.request_id, 200


def close_without_code(i):
    ws = Ws()
    ws.send(close())
    m = ws.message()
    if m is None or m[0] != "close":
        raise Fail("no close answer: %r" % (m,))
    ws.drain()
    return ws.request_id, 456


def violation(bad, code):
    def run(i):
        ws = Ws()
        ws.send(frame(1, b"ok"))
        ws.expect("text", b"ok")
        ws.send(bad)
        ws.expect_close(code)
        ws.drain()
        return ws.request_id, 456
    return run


def dropped_tcp(i):
    ws = Ws()
    ws.send(frame(1, b"bye"))
    ws.expect("text", b"bye")
    ws.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.s.close()  # RST, no close frame
    return ws.request_id, 456


def bad_function(i):
    ws = Ws("/bad")
    ws.expect_close(1011)
    ws.drain()
    return ws.request_id, 439


def http_answer(request, want):
    def run(i):
        s = connect()
        try:
            s.sendall(request)
        except OSError:
            pass
        head, _ = read_head(s)
        s.close()
        if status(head) != want:
            raise Fail("HTTP %s, wanted %s" % (head[:40], want))
        return None, None
    return run


def half_head(i):
    s = connect()
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: web")
    time.sleep(0.01)
    s.close()
    return None, None


UPGRADE = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
SCENARIOS = [
    (40, "normal", normal),
    (5, "fragmented_with_ping", fragmented_with_ping),
    (4, "empty_messages", empty_messages),
    (3, "early_frames", early_frames),
    (4, "utf8_close_reason", utf8_close_reason),
    (4, "close_without_code", close_without_code),
    (5, "invalid_utf8", violation(frame(1, b"\xff\xfe"), 1007)),
    (4, "unmasked", violation(frame(1, b"x", masked=False), 1002)),
    (3, "reserved_bits", violation(frame(1, b"x", rsv=4), 1002)),
    (2, "unknown_opcode", violation(frame(3), 1002)),
    (2, "big_control", violation(frame(9, b"p" * 126), 1002)),
    (2, "fragmented_control", violation(frame(9, b"p", fin=False), 1002)),
    (5, "dropped_tcp", dropped_tcp),
    (3, "bad_function", bad_function),
    (3, "not_upgrade", http_answer(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 426)),
    (2, "bad_version", http_answer((UPGRADE + "Sec-WebSocket-Key: a\r\nSec-WebSocket-Version: 8\r\n\r\n").encode(), 426)),
    (2, "huge_head", http_answer((UPGRADE + KEY_HEADERS + "X-Pad: " + "a" * 65536 + "\r\n\r\n").encode(), 431)),
    (2, "garbage_head", http_answer(b"\x16\x03\x01garbage\r\n\r\n", 400)),
    (2, "unknown_path", http_answer(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404)),
    (3, "half_head", half_head),
]
WEIGHTS = [w for w, _, _ in SCENARIOS]


def admin(path):
    s = socket.create_connection((ADMIN_HOST, int(ADMIN_PORT)), timeout=TIMEOUT)
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    data = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return json.loads(body)


def proc_children():
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        after = stat.rsplit(")", 1)[1].split()
        if after[1] == str(PID):
            out.append(int(entry))
    return out


def instance_processes():
    """Processes anywhere on the host whose working directory is one of this soak's code
    directories: instances, and anything they forked that escaped scfsim (only ours, even
    when other scfsims run on the machine)."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink("/proc/%s/cwd" % entry).startswith(WORK + "/functions"):
                    n += 1
            except OSError:
                pass
    return n


def fds():
    return len(os.listdir("/proc/%d/fd" % PID))


def rss_kib():
    with open("/proc/%d/status" % PID) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cgroups():
    n = 0
    for root in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        try:
            entries = os.listdir(root)
        except OSError:
            continue
        for e in entries:
            if e.startswith("scfsim-%d-" % PID):
                d = os.path.join(root, e)
                n += sum(1 for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
    return n


def settle():
    """Waits (bounded) until no instance is live, no child is left and no instance cgroup."""
    deadline = time.time() + 60
    while time.time() < deadline:
        if not admin("/api/instances") and not proc_children() and cgroups() == 0:
            return True
        time.sleep(0.2)
    return False


def run(n, tally, failures, expectations, pick):
    lock = threading.Lock()

    def one(i):
        name, fn = pick(i)
        try:
            rid, want = fn(i)
            with lock:
                tally[name] += 1
                if rid is not None:
                    expectations.append((rid, want, name))
        except (Fail, OSError, ValueError) as e:
            with lock:
                tally[name] += 1
                failures[name].append("%s: %s" % (type(e).__name__, e))

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(n)))


rng = random.Random(6)
names = [(name, fn) for _, name, fn in SCENARIOS]
plan = rng.choices(range(len(names)), weights=WEIGHTS, k=N)

# Warm-up: thread pools, allocator arenas and buffers reach their working size.
warm_tally, warm_fail = collections.Counter(), collections.defaultdict(list)
run(WARMUP, warm_tally, warm_fail, [], lambda i: ("normal", normal))
warm_settled = settle()
base = {"fds": fds(), "rss_kib": rss_kib(), "children": len(proc_children()),
        "cgroups": cgroups(), "instances": instance_processes()}
print("baseline after %d warm-up cycles (%d errors, settled: %s): %s" % (
    WARMUP, sum(len(v) for v in warm_fail.values()), warm_settled, base), flush=True)

tally, failures, expectations = collections.Counter(), collections.defaultdict(list), []
started = time.time()
run(N, tally, failures, expectations, lambda i: names[plan[i]])
elapsed = time.time() - started
settled = settle()
# Records: every upgraded cycle must have finished with its expected status code.
deadline = time.time() + 60
records = {}
while time.time() < deadline:
    records = {r["request_id"]: r for r in admin("/api/invocations?limit=10000")}
    pending = [rid for rid, _, _ in expectations if rid not in records
               or records[rid].get("status_code") is None]
    if not pending or len(records) >= 10000:
        break
    time.sleep(0.2)
for rid, want, name in expectations:
    r = records.get(rid)
    if r is None:
        if len(records) < 10000:
            failures[name].append("no record %s" % rid)
    elif r.get("status_code") != want:
        failures[name].append("record %s: status %s (%s), wanted %s" % (
            rid, r.get("status_code"), r.get("end_reason"), want))
statuses = collections.Counter(r.get("status_code") for r in records.values())
end = {"fds": fds(), "rss_kib": rss_kib(), "children": len(proc_children()),
       "cgroups": cgroups(), "instances": instance_processes()}

errors = sum(len(v) for v in failures.values())
print()
print("cycles: %d in %.1f s (%.0f/s), %d at a time" % (N, elapsed, N / elapsed, CONCURRENCY))
print("%-22s %7s %7s" % ("scenario", "cycles", "errors"))
for _, name, _ in SCENARIOS:
    print("%-22s %7d %7d" % (name, tally[name], len(failures[name])))
print("errors: %d" % errors)
for name, msgs in failures.items():
    for m in msgs[:5]:
        print("  %s: %s" % (name, m))
    if len(msgs) > 5:
        print("  %s: ... %d more" % (name, len(msgs) - 5))
print("records by status code (newest %d): %s" % (len(records), dict(sorted(statuses.items(), key=lambda kv: str(kv[0])))))
print("settled (no live instance, child or cgroup): %s" % settled)
print("%-26s %10s %10s" % ("", "baseline", "end"))
for key, label in [("children", "child processes"), ("instances", "instance processes (host)"),
                   ("cgroups", "instance cgroups"), ("fds", "open descriptors"),
                   ("rss_kib", "RSS (KiB)")]:
    print("%-26s %10d %10d" % (label, base[key], end[key]))
leaks = (end["children"] > base["children"] or end["cgroups"] > base["cgroups"]
         or end["instances"] > 0 or end["fds"] > base["fds"])
print("leaks: %s" % ("YES" if leaks else "none"))
sys.exit(1 if errors or leaks or not settled else 0)
PYTHON
status=$?
set -e
if ! kill -0 "$SCFSIM_PID" 2>/dev/null; then
    echo "soak: scfsim DIED during the soak" >&2
    tail -20 "$WORK/scfsim.stderr" >&2
    exit 1
fi
panics=$(grep -c -i "panicked" "$WORK/scfsim.stderr" || true)
echo "scfsim panics in its log: $panics"
[ "$panics" -eq 0 ] || status=1
exit "$status"
