// WebSocket echo function for scfsim, on the `ws` library.
//
// The platform starts one instance of this program per client connection; it must listen on
// 0.0.0.0:9000. Everything printed to stdout is the function's log, one record per line.
'use strict';

const { WebSocketServer } = require('ws');

const wss = new WebSocketServer({ port: 9000, host: '0.0.0.0' });

wss.on('listening', () => console.log('listening on 0.0.0.0:9000'));

wss.on('connection', (ws, req) => {
  const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  console.log(`connection from ${peer}, path ${req.url}`);
  ws.on('message', (data, isBinary) => {
    console.log(`${isBinary ? 'binary' : 'text'} message, ${data.length} bytes`);
    ws.send(data, { binary: isBinary }); // echo: replace with your function's logic
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
