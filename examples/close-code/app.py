"""A WebSocket function that ends the connection itself, with a custom close code.

It echoes the client's first message, then closes with code 4000 and the reason
"bye from the function". On the platform (and in scfsim) a function that closes with a code other
than 1000 or 1011 ends its invocation with status 439 (function_closed): this example is there to
show that record. (Close with 1000 instead and the invocation is a 200 success.)

Written on the Python 3 standard library alone (asyncio plus just enough of RFC 6455: the
opening handshake, masked client frames, ping/pong, the close handshake), so it needs nothing but
python3. It must listen on 0.0.0.0:9000; everything printed to stdout is the function's log.
"""
import asyncio
import base64
import hashlib
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # fixed by RFC 6455 section 1.3
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
CLOSE_CODE, CLOSE_REASON = 4000, "bye from the function"  # 4000-4999: for applications
MAX_MESSAGE = 1 << 20


def log(*args):
    print(*args, flush=True)  # stdout is the function's log: one record per line


async def handshake(reader, writer):
    """Reads the HTTP upgrade request and answers 101. Returns the request path, or None."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None  # not HTTP (or a port probe that hung up)
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in filter(None, lines):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    key = headers.get("sec-websocket-key")
    if headers.get("upgrade", "").lower() != "websocket" or not key:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return None
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    await writer.drain()
    return request_line.split(" ")[1] if " " in request_line else "?"


async def read_frame(reader):
    """Returns (fin, opcode, payload) of one client frame, unmasked."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if length > MAX_MESSAGE:
        raise ValueError("frame too big")
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(length)
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return bool(b0 & 0x80), b0 & 0x0F, data


def send_frame(writer, opcode, payload=b""):
    """Writes one final, unmasked server frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    writer.write(header + payload)


async def next_message(reader, writer):
    """The next text or binary message as (opcode, payload); None if the client closed first."""
    message, message_opcode = bytearray(), None
    while True:
        fin, opcode, data = await read_frame(reader)
        if opcode == PING:
            send_frame(writer, PONG, data)
            await writer.drain()
        elif opcode == CLOSE:
            send_frame(writer, CLOSE, data[:2])  # answer the client's close, echoing its code
            await writer.drain()
            return None
        elif opcode in (TEXT, BINARY, CONT):
            message_opcode = message_opcode or opcode
            message += data
            if fin:
                return message_opcode, bytes(message)


async def handle(reader, writer):
    peer = "%s:%s" % writer.get_extra_info("peername")[:2]
    try:
        path = await handshake(reader, writer)
        if path is None:
            return
        log("%s: connected, path %s" % (peer, path))
        first = await next_message(reader, writer)
        if first is None:
            log("%s: the client closed before sending anything" % peer)
            return
        opcode, payload = first
        log("%s: echoing one %s message of %d bytes, then closing with %d"
            % (peer, "text" if opcode == TEXT else "binary", len(payload), CLOSE_CODE))
        send_frame(writer, opcode, payload)
        send_frame(writer, CLOSE, struct.pack("!H", CLOSE_CODE) + CLOSE_REASON.encode())
        await writer.drain()
        # Wait (a bounded time) for the client's answering close frame, then hang up.
        async def answered():
            while True:
                _, op, data = await read_frame(reader)
                if op == CLOSE:
                    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        code = await asyncio.wait_for(answered(), timeout=10)
        log("%s: the client answered the close with %d" % (peer, code))
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.TimeoutError) as err:
        log("%s: connection ended without a close handshake (%s)" % (peer, type(err).__name__))
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", 9000)
    log("listening on 0.0.0.0:9000")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
