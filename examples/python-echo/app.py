"""WebSocket echo function for scfsim, on the `websockets` library (version 12 or newer).

The platform starts one instance of this program per client connection; it must listen on
0.0.0.0:9000. Everything printed to stdout is the function's log, one record per line.
"""
import asyncio
import signal

import websockets


def log(*args):
    print(*args, flush=True)


async def handler(websocket):
    # websockets >= 13 (new asyncio API) has `websocket.request.path`; 12 has `websocket.path`.
    request = getattr(websocket, "request", None)
    path = request.path if request is not None else getattr(websocket, "path", "?")
    peer = websocket.remote_address
    log(f"connection from {peer}, path {path}")
    try:
        async for message in websocket:
            kind = "text" if isinstance(message, str) else "binary"
            log(f"{kind} message, {len(message)} {'chars' if kind == 'text' else 'bytes'}")
            await websocket.send(message)  # echo: replace with your function's logic
    except websockets.ConnectionClosed:
        pass  # closed without a proper close handshake: nothing left to do
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
