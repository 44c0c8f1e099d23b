// A binary-frame WebSocket function for scfsim, on the `ws` library.
//
// It answers every binary message with that message's SHA-256 digest, as a 32-byte binary
// message; a text message gets a text message back that explains the mistake (the connection
// stays open). Try it: send a file's bytes and compare with `sha256sum`.
//
// The platform starts one instance of this program per client connection; it must listen on
// 0.0.0.0:9000. Everything printed to stdout is the function's log, one record per line.
'use strict';

const crypto = require('crypto');
const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ port: 9000, host: '0.0.0.0' });

wss.on('listening', () => console.log('listening on 0.0.0.0:9000'));

wss.on('connection', (ws, req) => {
  const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  console.log(`connection from ${peer}, path ${req.url}`);
  ws.on('message', (data, isBinary) => {
    if (!isBinary) {
      console.log(`text message, ${data.length} bytes: answering with an error text`);
      ws.send('error: send binary messages; each one is answered with its SHA-256 digest (32 bytes)');
      return;
    }
    const digest = crypto.createHash('sha256').update(data).digest();
    console.log(`binary message, ${data.length} bytes, sha256 ${digest.toString('hex')}`);
    ws.send(digest, { binary: true });
  });
  ws.on('close', (code, reason) => {
    console.log(`connection closed, code ${code} reason ${JSON.stringify(reason.toString())}`);
  });
  ws.on('error', (err) => console.log(`connection error: ${err.message}`));
});

// Stop cleanly on SIGTERM (how an instance is stopped).
process.on('SIGTERM', () => {
  console.log('stopping');
  wss.close();
  for (const ws of wss.clients) ws.terminate();
});
