//go:build linux

package forevervm_test

// REPL protocol tests against hand-written WebSocket servers: the frames the
// emulator never sends (unknown types, message, error, server pings) and
// orderings it does not produce (spec §3, §7.2).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vmcp-dev/vmcp/client/forevervm"
)

// execFrame is what the client sends.
type execFrame struct {
	Type        string  `json:"type"`
	RequestID   *uint32 `json:"request_id"`
	Instruction struct {
		Code           string `json:"code"`
		TimeoutSeconds *int64 `json:"timeout_seconds"`
	} `json:"instruction"`
}

// wsServer runs script for each REPL connection; conns counts them.
func wsServer(t *testing.T, script func(ctx context.Context, c *websocket.Conn, n int)) (*forevervm.Client, *atomic.Int32) {
	t.Helper()
	var conns atomic.Int32
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+testToken || r.Header.Get("x-forevervm-sdk") != "go" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"code":"Unauthorized","id":null}`)
			return
		}
		if r.URL.Path != "/v1/machine/m/repl" && r.URL.Path != "/v1/machine/new/repl" {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"code":"MachineNotFound","id":null}`)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer c.CloseNow()
		script(r.Context(), c, int(conns.Add(1)))
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	})
	return forevervm.New(testToken, forevervm.WithBaseURL(srv.URL),
		forevervm.WithReconnectPolicy(forevervm.ReconnectPolicy{Attempts: 3, InitialBackoff: 10 * time.Millisecond})), &conns
}

func send(ctx context.Context, c *websocket.Conn, frame string) error {
	return c.Write(ctx, websocket.MessageText, []byte(frame))
}

func readExec(ctx context.Context, c *websocket.Conn) (*execFrame, error) {
	_, b, err := c.Read(ctx)
	if err != nil {
		return nil, err
	}
	var f execFrame
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, err
	}
	if f.Type != "exec" || f.RequestID == nil || f.Instruction.TimeoutSeconds == nil {
		return nil, fmt.Errorf("bad exec frame %s", b)
	}
	return &f, nil
}

func TestREPLToleratesUnknownFramesAndAnswersPings(t *testing.T) {
	pinged := make(chan error, 1)
	c, _ := wsServer(t, func(ctx context.Context, c *websocket.Conn, _ int) {
		send(ctx, c, `{"type":"connected","machine_name":"m","new_field":true}`)
		f, err := readExec(ctx, c)
		if err != nil {
			t.Error(err)
			return
		}
		if *f.Instruction.TimeoutSeconds != 15 || f.Instruction.Code != "print(1)\n2" {
			t.Errorf("exec frame %+v", f)
		}
		// The server must read for its ping to see the pong.
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			c.Read(ctx) // until the client closes
		}()
		// Noise the client must skip: a diagnostic, a type it does not
		// know, text that is not JSON, a binary frame, a result for
		// someone else, and a ping it must answer while an exec waits.
		send(ctx, c, `{"type":"message","message":"worker moved","level":"warn"}`)
		send(ctx, c, `{"type":"progress","percent":50}`)
		send(ctx, c, `not json at all`)
		c.Write(ctx, websocket.MessageBinary, []byte{0, 1, 2})
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		pinged <- c.Ping(pctx)
		cancel()
		send(ctx, c, fmt.Sprintf(`{"type":"exec_received","seq":5,"request_id":%d,"extra":"x"}`, *f.RequestID))
		send(ctx, c, `{"type":"result","instruction_id":99,"result":{"value":"'not yours'","data":null,"runtime_ms":1}}`)
		send(ctx, c, `{"type":"output","chunk":{"stream":"stdout","data":"1","seq":0,"more":1},"instruction_id":5}`)
		send(ctx, c, `{"type":"result","instruction_id":5,"result":{"value":"2","data":null,"runtime_ms":3,"cpu":7}}`)
		<-readDone
	})
	ctx := testCtx(t, 30*time.Second)
	r := openREPL(t, ctx, c, "m")
	var chunks []forevervm.OutputChunk
	res, err := r.Exec(ctx, "print(1)\n2", forevervm.ExecOptions{OnOutput: func(ch forevervm.OutputChunk) { chunks = append(chunks, ch) }})
	if err != nil {
		t.Fatal(err)
	}
	if val(res) != "2" || res.RuntimeMS != 3 || len(chunks) != 1 || chunks[0] != (forevervm.OutputChunk{Stream: "stdout", Data: "1", Seq: 0}) {
		t.Fatalf("result %s, chunks %+v", val(res), chunks)
	}
	if err := <-pinged; err != nil {
		t.Fatalf("the client did not answer the server's ping: %v", err)
	}
}

func TestREPLRequiresConnectedFirst(t *testing.T) {
	c, _ := wsServer(t, func(ctx context.Context, c *websocket.Conn, _ int) {
		send(ctx, c, `{"type":"exec_received","seq":0,"request_id":0}`)
		c.Read(ctx)
	})
	_, err := c.REPL(testCtx(t, 10*time.Second), "m")
	if err == nil || !strings.Contains(err.Error(), "connected") {
		t.Fatalf("REPL with exec_received first: %v", err)
	}
}

func TestREPLErrorMessages(t *testing.T) {
	// An error instead of connected fails the dial.
	c, _ := wsServer(t, func(ctx context.Context, c *websocket.Conn, n int) {
		if n == 1 {
			send(ctx, c, `{"type":"error","code":"MachineNotFound","id":"e1"}`)
			return
		}
		send(ctx, c, `{"type":"connected","machine_name":"m"}`)
		if _, err := readExec(ctx, c); err != nil {
			return
		}
		// An error answering an exec fails that exec.
		send(ctx, c, `{"type":"error","code":"InstructionTooLarge","id":null}`)
		c.Read(ctx)
	})
	ctx := testCtx(t, 30*time.Second)
	_, err := c.REPL(ctx, "m")
	if !forevervm.IsNotFound(err) || !forevervm.IsCode(err, "MachineNotFound") {
		t.Fatalf("dial answered with an error message: %v", err)
	}
	r := openREPL(t, ctx, c, "m")
	_, err = r.Exec(ctx, "x", forevervm.ExecOptions{})
	var ae *forevervm.APIError
	if !errors.As(err, &ae) || ae.Code != "InstructionTooLarge" || ae.StatusCode != 0 {
		t.Fatalf("exec answered with an error message: %v", err)
	}
	// HTTP refusals of the upgrade are APIErrors too.
	if _, err := c.REPL(ctx, "other"); !forevervm.IsNotFound(err) {
		t.Fatalf("unknown machine: %v", err)
	}
	bad := forevervm.New("tok2.wrong", forevervm.WithBaseURL(c.BaseURL()))
	if _, err := bad.REPL(ctx, "m"); !forevervm.IsUnauthorized(err) || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("bad token: %v", err)
	}
}

// TestREPLMatchesFramesByRequestThenInstruction runs three execs at once; the
// server acknowledges them out of order and interleaves their frames.
func TestREPLMatchesFramesByRequestThenInstruction(t *testing.T) {
	c, _ := wsServer(t, func(ctx context.Context, c *websocket.Conn, _ int) {
		send(ctx, c, `{"type":"connected","machine_name":"m"}`)
		var frames []*execFrame
		for range 3 {
			f, err := readExec(ctx, c)
			if err != nil {
				t.Error(err)
				return
			}
			frames = append(frames, f)
		}
		// seq 10+i for the i-th frame received, acknowledged last first.
		for i := len(frames) - 1; i >= 0; i-- {
			send(ctx, c, fmt.Sprintf(`{"type":"exec_received","seq":%d,"request_id":%d}`, 10+i, *frames[i].RequestID))
		}
		for line := range 2 {
			for i, f := range frames {
				send(ctx, c, fmt.Sprintf(`{"type":"output","chunk":{"stream":"stdout","data":"%s-%d","seq":%d},"instruction_id":%d}`, f.Instruction.Code, line, line, 10+i))
			}
		}
		for i, f := range frames {
			send(ctx, c, fmt.Sprintf(`{"type":"result","instruction_id":%d,"result":{"value":"'%s'","data":null,"runtime_ms":0}}`, 10+i, f.Instruction.Code))
		}
		c.Read(ctx)
	})
	ctx := testCtx(t, 30*time.Second)
	r := openREPL(t, ctx, c, "m")
	var wg sync.WaitGroup
	for _, code := range []string{"a", "b", "c"} {
		wg.Go(func() {
			var out []string
			res, err := r.Exec(ctx, code, forevervm.ExecOptions{OnOutput: func(ch forevervm.OutputChunk) { out = append(out, ch.Data) }})
			if err != nil {
				t.Errorf("%s: %v", code, err)
				return
			}
			if val(res) != "'"+code+"'" || fmt.Sprint(out) != fmt.Sprintf("[%s-0 %s-1]", code, code) {
				t.Errorf("%s: result %s, output %v", code, val(res), out)
			}
		})
	}
	wg.Wait()
}

// TestREPLDropBeforeAcknowledgement: an exec the server never acknowledged
// is not resent (it may have run) but reported; the REPL reconnects for the
// next one, and request ids keep counting.
func TestREPLDropBeforeAcknowledgement(t *testing.T) {
	ids := make(chan uint32, 2)
	c, conns := wsServer(t, func(ctx context.Context, c *websocket.Conn, n int) {
		send(ctx, c, `{"type":"connected","machine_name":"m"}`)
		f, err := readExec(ctx, c)
		if err != nil {
			return
		}
		ids <- *f.RequestID
		if n == 1 {
			return // drop without exec_received
		}
		send(ctx, c, fmt.Sprintf(`{"type":"exec_received","seq":1,"request_id":%d}`, *f.RequestID))
		send(ctx, c, `{"type":"result","instruction_id":1,"result":{"value":"'again'","data":null,"runtime_ms":0}}`)
		c.Read(ctx)
	})
	ctx := testCtx(t, 30*time.Second)
	r := openREPL(t, ctx, c, "m")
	if _, err := r.Exec(ctx, "first", forevervm.ExecOptions{}); !errors.Is(err, forevervm.ErrUnacknowledged) {
		t.Fatalf("exec dropped before acknowledgement: %v", err)
	}
	res, err := r.Exec(ctx, "second", forevervm.ExecOptions{})
	if err != nil || val(res) != "'again'" {
		t.Fatalf("exec after the reconnection: %s, %v", val(res), err)
	}
	if a, b := <-ids, <-ids; b != a+1 || conns.Load() != 2 {
		t.Fatalf("request ids %d then %d over %d connections", a, b, conns.Load())
	}
}

// TestREPLBrokenThenRetried: when every reconnection attempt fails, Exec
// reports why; once the server is back, the next Exec reconnects.
func TestREPLBrokenThenRetried(t *testing.T) {
	var refuse atomic.Bool
	var conns atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			http.Error(w, "maintenance", http.StatusServiceUnavailable)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := r.Context()
		send(ctx, c, `{"type":"connected","machine_name":"m"}`)
		if conns.Add(1) == 1 {
			refuse.Store(true)
			return // drop; every redial is refused from now on
		}
		f, err := readExec(ctx, c)
		if err != nil {
			return
		}
		send(ctx, c, fmt.Sprintf(`{"type":"exec_received","seq":0,"request_id":%d}`, *f.RequestID))
		send(ctx, c, `{"type":"result","instruction_id":0,"result":{"value":"1","data":null,"runtime_ms":0}}`)
		c.Read(ctx)
	}))
	defer srv.Close()
	c := forevervm.New(testToken, forevervm.WithBaseURL(srv.URL),
		forevervm.WithReconnectPolicy(forevervm.ReconnectPolicy{Attempts: 2, InitialBackoff: 10 * time.Millisecond}))
	ctx := testCtx(t, 30*time.Second)
	r := openREPL(t, ctx, c, "m")
	// The first exec may still race the drop (ErrUnacknowledged); then the
	// failed reconnection is reported.
	var lastErr error
	var ae *forevervm.APIError
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !errors.As(lastErr, &ae); {
		_, lastErr = r.Exec(ctx, "1", forevervm.ExecOptions{})
	}
	if !errors.As(lastErr, &ae) || ae.StatusCode != http.StatusServiceUnavailable || !strings.Contains(lastErr.Error(), "could not be reopened") {
		t.Fatalf("exec while the server refuses: %v", lastErr)
	}
	refuse.Store(false)
	if res, err := r.Exec(ctx, "1", forevervm.ExecOptions{}); err != nil || val(res) != "1" {
		t.Fatalf("exec once the server is back: %s, %v", val(res), err)
	}
}

func TestREPLCloseAndCancel(t *testing.T) {
	c, _ := wsServer(t, func(ctx context.Context, c *websocket.Conn, _ int) {
		send(ctx, c, `{"type":"connected","machine_name":"m"}`)
		for {
			f, err := readExec(ctx, c)
			if err != nil {
				return
			}
			// Acknowledge and never answer.
			send(ctx, c, fmt.Sprintf(`{"type":"exec_received","seq":%d,"request_id":%d}`, *f.RequestID, *f.RequestID))
		}
	})
	ctx := testCtx(t, 30*time.Second)
	r, err := c.REPL(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.Machine() != "m" {
		t.Fatalf("machine %q, want the name from connected", r.Machine())
	}
	// A cancelled context ends the wait.
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = r.Exec(short, "forever", forevervm.ExecOptions{})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("exec past its context: %v", err)
	}
	if _, err := r.Exec(ctx, "1", forevervm.ExecOptions{Interrupt: true}); err == nil {
		t.Fatal("the REPL accepted Interrupt, which its protocol cannot send")
	}
	// Close ends an Exec that is waiting.
	done := make(chan error, 1)
	go func() {
		_, err := r.Exec(ctx, "forever", forevervm.ExecOptions{})
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, forevervm.ErrClosed) {
			t.Fatalf("waiting exec after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end a waiting Exec")
	}
	if _, err := r.Exec(ctx, "1", forevervm.ExecOptions{}); !errors.Is(err, forevervm.ErrClosed) {
		t.Fatalf("exec after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
