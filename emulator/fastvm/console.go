//go:build linux

package fastvm

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/coder/websocket"

	"github.com/vmcp-dev/vmcp/local"
)

// The console (§7): a token minted with the API key, then a WebSocket at
// websocketPath authenticated only by ?session=<token>. The emulator's
// "serial console" is a login shell on a pseudo-terminal of the VM: its raw
// TTY bytes go out as binary frames; text or binary frames coming in are
// keystrokes, except a text frame {"type":"resize","cols":N,"rows":N}.

const (
	// Spec §13 #13: console tokens live 60 s and are single use.
	consoleTokenTTL    = 60 * time.Second
	consoleMaxFrame    = 1 << 20
	consoleWriteTimout = 10 * time.Second
)

type consoleToken struct {
	vmID    string
	expires time.Time
}

func consolePath(vmID string) string { return "/v1/vms/" + vmID + "/console/ws" }

func (s *Server) consoleToken(w http.ResponseWriter, r *http.Request) {
	var ignored map[string]any
	if !decodeBody(w, r, maxJSONBody, &ignored) {
		return
	}
	v, _, ok := s.runningMachine(w, r)
	if !ok {
		return
	}
	var b [32]byte
	rand.Read(b[:])
	tok := base64.RawURLEncoding.EncodeToString(b[:])
	now := time.Now()
	s.mu.Lock()
	for t, ct := range s.tokens {
		if now.After(ct.expires) {
			delete(s.tokens, t)
		}
	}
	s.tokens[tok] = consoleToken{vmID: v.ID, expires: now.Add(consoleTokenTTL)}
	s.mu.Unlock()
	// Spec §13 #4: 200.
	writeJSON(w, http.StatusOK, map[string]any{
		"token":         tok,
		"expiresInSec":  int(consoleTokenTTL / time.Second),
		"websocketPath": consolePath(v.ID),
	})
}

// takeToken consumes a console token for vmID.
func (s *Server) takeToken(tok, vmID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ct, ok := s.tokens[tok]
	if ok {
		delete(s.tokens, tok)
	}
	return ok && ct.vmID == vmID && time.Now().Before(ct.expires)
}

func (s *Server) console(w http.ResponseWriter, r *http.Request) {
	vmID := r.PathValue("id")
	if tok := r.URL.Query().Get("session"); tok == "" || !s.takeToken(tok, vmID) {
		writeError(w, http.StatusUnauthorized, fmt.Sprintf("invalid, used or expired console session: mint a token with POST /v1/vms/%s/console-token and connect within %d s", vmID, int(consoleTokenTTL/time.Second)))
		return
	}
	v, m, ok := s.runningMachine(w, r)
	if !ok {
		return
	}
	env := s.envOf(v)
	if env == nil {
		env = map[string]string{}
	}
	env["TERM"] = "xterm-256color"
	// The session token is the capability, so any origin may connect.
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
	if err != nil {
		return // Accept answered the client
	}
	defer c.CloseNow()
	c.SetReadLimit(consoleMaxFrame)
	// Not the request's context, which the upgrade leaves behind.
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()

	input, inputW := io.Pipe()
	sizes := make(chan local.WindowSize, 4)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		defer cancel() // the client left: end the shell
		readConsole(ctx, c, inputW, sizes)
	}()
	out := writerFunc(func(p []byte) (int, error) {
		wctx, wcancel := context.WithTimeout(ctx, consoleWriteTimout)
		defer wcancel()
		if err := c.Write(wctx, websocket.MessageBinary, p); err != nil {
			cancel()
			return 0, err
		}
		return len(p), nil
	})
	_, err = m.Run(ctx, local.Command{
		Argv:    []string{"/bin/bash", "-l"},
		TTY:     &local.TTY{Size: local.WindowSize{Rows: 24, Cols: 80}, Resize: sizes},
		Stdin:   input,
		Stdout:  out,
		Env:     env,
		Workdir: "/root",
	})
	input.Close()
	if ctx.Err() == nil {
		if err != nil {
			c.Close(websocket.StatusInternalError, "the console failed")
		} else {
			c.Close(websocket.StatusNormalClosure, "console session ended")
		}
	}
	cancel()
	c.CloseNow()
	<-readerDone
}

// readConsole passes keystrokes to the shell's terminal and resize frames to
// its window size until the client leaves.
func readConsole(ctx context.Context, c *websocket.Conn, keys *io.PipeWriter, sizes chan<- local.WindowSize) {
	defer keys.Close()
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		if typ == websocket.MessageText && len(data) > 0 && data[0] == '{' {
			var msg struct {
				Type       string `json:"type"`
				Cols, Rows int
			}
			if json.Unmarshal(data, &msg) == nil && msg.Type == "resize" {
				if msg.Cols > 0 && msg.Rows > 0 && msg.Cols <= 10000 && msg.Rows <= 10000 {
					select {
					case sizes <- local.WindowSize{Rows: uint16(msg.Rows), Cols: uint16(msg.Cols)}:
					case <-ctx.Done():
						return
					}
				}
				continue
			}
		}
		if _, err := keys.Write(data); err != nil {
			return
		}
	}
}
