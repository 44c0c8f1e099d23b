"""A chat-room-style WebSocket function for scfsim, on the `websockets` library (version 12 or newer).

Like the platform's own WebSocket demo, it does two things at once on every connection:
- it answers each message the client sends (here: echoes it back, text or binary), and
- it pushes messages the client never asked for: every TICK_SECONDS (default 2) seconds a text
  message `{"type":"tick","n":N}` with N = 1, 2, 3, ...

The platform starts one instance of this program per client connection; it must listen on
0.0.0.0:9000. Everything printed to stdout is the function's log, one record per line.

Note that the pushed messages count as traffic for the idle timeout: a client that stays
connected never idles out; its invocation ends when the client leaves, or at the function's
execution timeout (status 433).
"""
import asyncio
import json
import os
import signal

import websockets

TICK_SECONDS = float(os.environ.get("TICK_SECONDS", "2"))


def log(*args):
    print(*args, flush=True)


async def push(websocket):
    """Sends a tick every TICK_SECONDS until the connection closes."""
    n = 0
    while True:
        await asyncio.sleep(TICK_SECONDS)
        n += 1
        await websocket.send(json.dumps({"type": "tick", "n": n}, separators=(",", ":")))


async def handler(websocket):
    peer = websocket.remote_address
    log(f"connection from {peer}, pushing a tick every {TICK_SECONDS:g}s")
    pusher = asyncio.create_task(push(websocket))
    try:
        async for message in websocket:
            kind = "text" if isinstance(message, str) else "binary"
            log(f"{kind} message, {len(message)} {'chars' if kind == 'text' else 'bytes'}")
            await websocket.send(message)
    except websockets.ConnectionClosed:
        pass  # closed without a proper close handshake: nothing left to do
    finally:
        pusher.cancel()
        try:
            await pusher
        except (asyncio.CancelledError, websockets.ConnectionClosed):
            pass
    log(f"connection closed, code {websocket.close_code} reason {websocket.close_reason!r}")


async def main():
    # Stop cleanly on SIGTERM (how an instance is stopped) as well as on Ctrl-C.
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with websockets.serve(handler, "0.0.0.0", 9000):
        log(f"listening on 0.0.0.0:9000 (websockets {websockets.__version__})")
        try:
            await stop
        except asyncio.CancelledError:
            log("stopping")


if __name__ == "__main__":
    asyncio.run(main())
