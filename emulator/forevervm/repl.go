//go:build linux

package forevervm

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// wsWriteTimeout bounds one WebSocket write; a client that reads nothing for
// this long loses its connection (its instructions keep running).
const wsWriteTimeout = 30 * time.Second

// execReceivedDelay postpones exec_received a little: the Rust SDK records
// that it waits for one only after sending its exec, so an instant answer
// could in theory arrive first and be dropped (spec §3.3).
const execReceivedDelay = time.Millisecond

// replConn is one REPL WebSocket. Its reader (the handler goroutine) reads
// without pause, which is also what answers the client's pings; its
// forwarder sends the frames of the instructions this connection submitted,
// in order, and no others (spec §8 #5).
type replConn struct {
	s   *Server
	c   *websocket.Conn
	m   *machine
	ctx context.Context

	mu      sync.Mutex
	pending []*instruction
	wakeup  chan struct{} // capacity 1: pending grew
}

// GET /v1/machine/{name|new}/repl (spec §3).
func (s *Server) handleREPL(w http.ResponseWriter, r *http.Request, name string) {
	// The handler is tracked because the HTTP server forgets hijacked
	// connections: Close must wait for it itself.
	if !s.track() {
		writeError(w, http.StatusServiceUnavailable, "Unavailable", errClosed.Error())
		return
	}
	defer s.wg.Done()
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		// Checked before "new" creates a machine that nobody would use.
		writeError(w, http.StatusBadRequest, "BadRequest", "this endpoint is a WebSocket: send an Upgrade: websocket request")
		return
	}
	// Spec §2.8: "new" creates a fresh machine, whose name the connected
	// message then gives.
	m, ok := s.machineOrNew(w, r, name)
	if !ok {
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// Any Origin is accepted: this is an API authenticated by a bearer
		// token sent explicitly (header or query), not by cookies, so a page
		// of another origin gains nothing it could not do with the token
		// anyway; and the JS SDK in a browser connects from the page's origin.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		s.log.Debug().Err(err).Msg("websocket handshake failed")
		return // Accept has answered
	}
	c.SetReadLimit(s.opts.MaxBodyBytes)
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.conns[c] = struct{}{}
	}
	s.mu.Unlock()
	if closed {
		c.CloseNow()
		return
	}
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.CloseNow()
	}()

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	rc := &replConn{s: s, c: c, m: m, ctx: ctx, wakeup: make(chan struct{}, 1)}
	log := s.log.With().Str("machine", m.name).Logger()
	log.Debug().Msg("repl connected")
	// Spec §3.2: connected must be the first frame.
	if err := rc.write(mustJSON(map[string]string{"type": "connected", "machine_name": m.name})); err != nil {
		return
	}
	forwarded := make(chan struct{})
	go func() {
		defer close(forwarded)
		rc.forward()
	}()
	err = rc.read()
	cancel()
	<-forwarded
	log.Debug().Err(err).Msg("repl disconnected")
}

// read handles the client's messages until the connection ends. Spec §3.6:
// reading without pause is what lets the library answer client pings; the
// server itself never pings (§8 #13).
func (rc *replConn) read() error {
	for {
		typ, data, err := rc.c.Read(rc.ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			err = rc.sendError("BadRequest")
		} else {
			err = rc.handle(data)
		}
		if err != nil {
			return err
		}
	}
}

// handle runs one client message: an exec (spec §3.1), the only type.
func (rc *replConn) handle(data []byte) error {
	var msg struct {
		Type        string           `json:"type"`
		Instruction *instructionJSON `json:"instruction"`
		RequestID   *uint32          `json:"request_id"`
	}
	if err := json.Unmarshal(data, &msg); err != nil || msg.Type != "exec" || msg.RequestID == nil {
		rc.s.log.Debug().Str("machine", rc.m.name).Msg(`repl message is not {"type":"exec","instruction":{...},"request_id":N}`)
		return rc.sendError("BadRequest")
	}
	timeout, bad := rc.s.check(msg.Instruction)
	if bad != "" {
		rc.s.log.Debug().Str("machine", rc.m.name).Msg("repl exec refused: " + bad)
		return rc.sendError("BadRequest")
	}
	// Spec §8 #5: an exec while another instruction runs is queued, never
	// refused: an error frame would hang forevervm-mcp (spec §6.1).
	inst, _, err := rc.m.submit(*msg.Instruction.Code, timeout, false, false)
	if err != nil {
		return rc.sendError("Unavailable")
	}
	time.Sleep(execReceivedDelay)
	ack := struct {
		Type      string `json:"type"`
		Seq       int64  `json:"seq"`
		RequestID uint32 `json:"request_id"`
	}{"exec_received", inst.seq, *msg.RequestID}
	if err := rc.write(mustJSON(ack)); err != nil {
		return err
	}
	// Only now may its outputs go out: they must follow exec_received (§3.3).
	rc.mu.Lock()
	rc.pending = append(rc.pending, inst)
	rc.mu.Unlock()
	select {
	case rc.wakeup <- struct{}{}:
	default:
	}
	return nil
}

// forward sends the outputs and result of each submitted instruction in
// turn, until the connection ends.
func (rc *replConn) forward() {
	for {
		rc.mu.Lock()
		if len(rc.pending) == 0 {
			rc.mu.Unlock()
			select {
			case <-rc.wakeup:
				continue
			case <-rc.ctx.Done():
				return
			}
		}
		inst := rc.pending[0]
		rc.pending = rc.pending[1:]
		rc.mu.Unlock()
		if err := inst.follow(rc.ctx, rc.write); err != nil {
			if !errors.Is(err, context.Canceled) {
				rc.s.log.Debug().Err(err).Str("machine", rc.m.name).Msg("repl write failed; closing")
			}
			rc.c.CloseNow() // ends the reader too
			return
		}
	}
}

// sendError sends an error frame (spec §3.2); §8 #2: id is null.
func (rc *replConn) sendError(code string) error {
	return rc.write(mustJSON(struct {
		Type string  `json:"type"`
		Code string  `json:"code"`
		ID   *string `json:"id"`
	}{"error", code, nil}))
}

// write sends one text frame; the library serialises concurrent writers.
func (rc *replConn) write(frame []byte) error {
	ctx, cancel := context.WithTimeout(rc.ctx, wsWriteTimeout)
	defer cancel()
	return rc.c.Write(ctx, websocket.MessageText, frame)
}
