// {{name}}: a WebSocket echo function, on github.com/gorilla/websocket.
//
// The platform starts one instance of this program per client connection; it must listen on
// 0.0.0.0:9000. Everything printed to stdout is the function's log, one record per line.
package main

import (
	"errors"
	"log"
	"net/http"
	"os"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	// The client connects to the gateway, not to this server, so its Origin never matches the
	// Host this server sees: accept every origin (check it here if your function must).
	CheckOrigin: func(r *http.Request) bool { return true },
}

func echo(w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Printf("upgrade failed: %v", err) // Upgrade has already answered the request
		return
	}
	defer conn.Close()
	log.Printf("connection from %s, path %s", r.RemoteAddr, r.URL.Path)
	for {
		kind, data, err := conn.ReadMessage()
		if err != nil {
			// A close frame from the client is answered (echoing its code) inside ReadMessage.
			var closed *websocket.CloseError
			if errors.As(err, &closed) {
				log.Printf("connection closed, code %d reason %q", closed.Code, closed.Text)
			} else {
				log.Printf("connection error: %v", err)
			}
			return
		}
		name := "text"
		if kind == websocket.BinaryMessage {
			name = "binary"
		}
		log.Printf("%s message, %d bytes", name, len(data))
		// Echo: replace with your function's logic.
		if err := conn.WriteMessage(kind, data); err != nil {
			log.Printf("write failed: %v", err)
			return
		}
	}
}

func main() {
	log.SetOutput(os.Stdout) // stdout is the function's log
	log.SetFlags(0)
	http.HandleFunc("/", echo)
	log.Println("listening on 0.0.0.0:9000")
	log.Fatal(http.ListenAndServe("0.0.0.0:9000", nil))
}
