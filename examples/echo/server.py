"""Zero-dependency WebSocket echo server for scfsim (Python 3 standard library only).

Listens on 0.0.0.0:9000 as the platform requires, and echoes every text and binary message.
Put your logic where the message is echoed, in serve().
It implements just enough of RFC 6455: the opening handshake, masked client frames, fragmented
messages (reassembled before echoing), ping/pong, and the close handshake (echoing the code).
"""
import asyncio
import base64
import hashlib
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # fixed by RFC 6455 section 1.3
MAX_MESSAGE = 16 * 1024 * 1024
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def log(*args):
    print("echo:", *args, flush=True)  # stdout is the function's log: one record per line


class ProtocolError(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code, self.reason = code, reason


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
    method, path, *_ = request_line.split(" ") + ["", ""]
    key = headers.get("sec-websocket-key")
    if method != "GET" or headers.get("upgrade", "").lower() != "websocket" or not key:
        body = b"expected a WebSocket upgrade request\n"
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        return None
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    await writer.drain()
    return path


async def read_frame(reader):
    """Returns (fin, opcode, payload) of one client frame, unmasked."""
    b0, b1 = await reader.readexactly(2)
    fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
    if b0 & 0x70:
        raise ProtocolError(1002, "reserved bits set (no extension was negotiated)")
    if not b1 & 0x80:
        raise ProtocolError(1002, "client frames must be masked")
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    if opcode >= CLOSE and (not fin or length > 125):
        raise ProtocolError(1002, "control frames must be final and at most 125 bytes")
    if length > MAX_MESSAGE:
        raise ProtocolError(1009, "frame too big")
    mask = await reader.readexactly(4)
    data = await reader.readexactly(length)
    # Unmask with one big-integer XOR (much faster than a per-byte loop in Python).
    key = (mask * (length // 4 + 1))[:length]
    data = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
    return fin, opcode, data


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


def valid_close_code(code):
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


async def serve(reader, writer, peer):
    """Echo loop. Returns (code, reason) of the close frame that ended the connection."""
    message, message_opcode = bytearray(), None
    while True:
        fin, opcode, data = await read_frame(reader)
        if opcode == PING:
            send_frame(writer, PONG, data)
        elif opcode == PONG:
            pass
        elif opcode == CLOSE:
            code, reason = 1005, ""  # 1005: the close frame carried no code
            if len(data) == 1:
                raise ProtocolError(1002, "close frame with a 1-byte payload")
            if data:
                (code,) = struct.unpack("!H", data[:2])
                if not valid_close_code(code):
                    raise ProtocolError(1002, "invalid close code %d" % code)
                try:
                    reason = data[2:].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError(1007, "close reason is not UTF-8") from None
            send_frame(writer, CLOSE, data[:2])  # echo the code, as RFC 6455 suggests
            return code, reason
        elif opcode in (TEXT, BINARY, CONT):
            if (opcode == CONT) != (message_opcode is not None):
                raise ProtocolError(1002, "unexpected continuation or interleaved message")
            message_opcode = message_opcode or opcode
            message += data
            if len(message) > MAX_MESSAGE:
                raise ProtocolError(1009, "message too big")
            if fin:
                if message_opcode == TEXT:
                    try:
                        bytes(message).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(1007, "text message is not UTF-8") from None
                kind = "text" if message_opcode == TEXT else "binary"
                log("%s: %s message, %d bytes" % (peer, kind, len(message)))
                send_frame(writer, message_opcode, bytes(message))
                message, message_opcode = bytearray(), None
        else:
            raise ProtocolError(1002, "unknown opcode %d" % opcode)
        await writer.drain()


async def handle(reader, writer):
    peer = "%s:%s" % writer.get_extra_info("peername")[:2]
    try:
        path = await handshake(reader, writer)
        if path is None:
            return
        log("%s: connected, path %s" % (peer, path))
        try:
            code, reason = await serve(reader, writer, peer)
            log("%s: closed by client, code %d %r" % (peer, code, reason))
        except ProtocolError as err:
            send_frame(writer, CLOSE, struct.pack("!H", err.code) + err.reason.encode())
            log("%s: protocol error, closing with %d: %s" % (peer, err.code, err.reason))
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        log("%s: connection dropped without a close frame" % peer)
    finally:
        writer.close()  # after the close handshake the server closes the TCP connection first


async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", 9000)
    log("listening on 0.0.0.0:9000")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
