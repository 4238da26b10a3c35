//go:build linux

package forevervm

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/vmcp-dev/vmcp/local"
)

// The raw-protocol suite: every test speaks plain HTTP with hand-written
// JSON, or WebSocket frames, to an emulator on loopback that runs real Python
// in real sandboxes.

const testToken = "tok_id.s3cret"

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

// emu is an emulator served on loopback.
type emu struct {
	t      testing.TB
	engine *local.Engine
	srv    *Server
	ts     *httptest.Server
	url    string
}

// newEngine opens an engine on dir (a fresh one if empty); closed at cleanup.
func newEngine(t testing.TB, dir string) *local.Engine {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e, err := local.New(local.Options{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// newEmu serves an emulator on engine (a fresh one if nil) with opts.
func newEmu(t testing.TB, engine *local.Engine, opts Options) *emu {
	t.Helper()
	if engine == nil {
		engine = newEngine(t, "")
	}
	opts.Engine = engine
	if opts.Token == "" {
		opts.Token = testToken
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	// Cleanups run last-in first-out: the emulator closes (ending long
	// polls and WebSockets) before the HTTP server waits for its handlers.
	t.Cleanup(ts.Close)
	t.Cleanup(func() { s.Close() })
	return &emu{t: t, engine: engine, srv: s, ts: ts, url: ts.URL}
}

// reply is a finished HTTP exchange.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with the emulator's token; body "" sends none.
func (e *emu) do(method, path, body string) reply {
	e.t.Helper()
	return e.doWith(method, path, body, map[string]string{"Authorization": "Bearer " + testToken})
}

// doWith sends a request with exactly these headers (no Content-Type unless
// given).
func (e *emu) doWith(method, path, body string, headers map[string]string) reply {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, e.url+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return reply{resp.StatusCode, resp.Header, b}
}

// ok checks the status is 200 and decodes the body's top level.
func (r reply) ok(t testing.TB) map[string]json.RawMessage {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.status, r.body)
	}
	return keys(t, r.body)
}

// wantError checks an error reply: status, and the body exactly {"code","id":null}.
func (r reply) wantError(t testing.TB, status int, code string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	m := keys(t, r.body)
	if len(m) != 2 || string(m["code"]) != `"`+code+`"` || string(m["id"]) != "null" {
		t.Fatalf("error body %s, want {\"code\":%q,\"id\":null}", r.body, code)
	}
}

// keys decodes a JSON object one level deep.
func keys(t testing.TB, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a JSON object: %s (%v)", b, err)
	}
	return m
}

// str decodes a JSON string.
func str(t testing.TB, raw json.RawMessage) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatalf("not a JSON string: %s", raw)
	}
	return s
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9]{16}$`)

// newMachine creates a machine over HTTP and returns its name.
func (e *emu) newMachine(body string) string {
	e.t.Helper()
	name := str(e.t, e.do("POST", "/v1/machine/new", body).ok(e.t)["machine_name"])
	if !nameRE.MatchString(name) {
		e.t.Fatalf("machine name %q is not 16 alphanumeric characters", name)
	}
	return name
}

// exec submits code over HTTP and returns the instruction seq.
func (e *emu) exec(machine, code string, timeoutSeconds int) int64 {
	e.t.Helper()
	body := mustJSON(map[string]any{"instruction": map[string]any{"code": code, "timeout_seconds": timeoutSeconds}})
	m := e.do("POST", "/v1/machine/"+machine+"/exec", string(body)).ok(e.t)
	var seq *int64
	if err := json.Unmarshal(m["instruction_seq"], &seq); err != nil || seq == nil {
		e.t.Fatalf("exec was not accepted: %v", m)
	}
	return *seq
}

// result long-polls an instruction's result and returns the result object.
func (e *emu) result(machine string, seq int64) map[string]json.RawMessage {
	e.t.Helper()
	m := e.do("GET", "/v1/machine/"+machine+"/exec/"+itoa(seq)+"/result", "").ok(e.t)
	if string(m["instruction_id"]) != itoa(seq) {
		e.t.Fatalf("instruction_id %s, want %d", m["instruction_id"], seq)
	}
	return keys(e.t, m["result"])
}

// run execs code and waits for its result.
func (e *emu) run(machine, code string) map[string]json.RawMessage {
	e.t.Helper()
	return e.result(machine, e.exec(machine, code, 30))
}

func itoa(n int64) string { return string(mustJSON(n)) }

// wantValue checks a value result's raw JSON: value (a JSON literal: a
// quoted repr or null), data null, no error key, integer runtime_ms.
func wantValue(t testing.TB, r map[string]json.RawMessage, value string) {
	t.Helper()
	if _, has := r["error"]; has {
		t.Fatalf("value result has an error key: %v", r)
	}
	if string(r["value"]) != value {
		t.Fatalf("value %s, want %s (result %v)", r["value"], value, r)
	}
	wantRuntime(t, r)
}

// wantErrorResult checks an error result: no value key; the error text.
func wantErrorResult(t testing.TB, r map[string]json.RawMessage) string {
	t.Helper()
	if _, has := r["value"]; has {
		t.Fatalf("error result has a value key: %v", r)
	}
	if _, has := r["data"]; has {
		t.Fatalf("error result has a data key: %v", r)
	}
	if _, has := r["error"]; !has {
		t.Fatalf("result has no error: %v", r)
	}
	wantRuntime(t, r)
	return str(t, r["error"])
}

func wantRuntime(t testing.TB, r map[string]json.RawMessage) {
	t.Helper()
	if !regexp.MustCompile(`^[0-9]+$`).Match(r["runtime_ms"]) {
		t.Fatalf("runtime_ms %q is not a whole number", r["runtime_ms"])
	}
}

// wsURL is the REPL WebSocket address of machine (or "new").
func (e *emu) wsURL(machine string) string {
	return "ws" + strings.TrimPrefix(e.url, "http") + "/v1/machine/" + machine + "/repl"
}

// repl is a WebSocket client that knows nothing of the protocol: it sends
// and receives JSON text messages.
type repl struct {
	t testing.TB
	c *websocket.Conn
}

// dial opens a REPL WebSocket with the token in the Authorization header.
func (e *emu) dial(machine string) *repl {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, e.wsURL(machine), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + testToken}},
	})
	if err != nil {
		e.t.Fatalf("dial %s: %v", machine, err)
	}
	c.SetReadLimit(64 << 20)
	e.t.Cleanup(func() { c.CloseNow() })
	return &repl{e.t, c}
}

// replOnNew opens a REPL on a new machine and returns it with the
// machine's name, from the connected message.
func (e *emu) replOnNew() (*repl, string) {
	e.t.Helper()
	r := e.dial("new")
	return r, r.connected()
}

// send writes one text message.
func (r *repl) send(msg string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		r.t.Fatal(err)
	}
}

// exec sends an exec message.
func (r *repl) exec(code string, requestID int) {
	r.t.Helper()
	r.send(string(mustJSON(map[string]any{"type": "exec", "instruction": map[string]any{"code": code, "timeout_seconds": 30}, "request_id": requestID})))
}

// execAcked sends an exec and reads its exec_received.
func (r *repl) execAcked(code string, requestID int) msg {
	r.t.Helper()
	r.exec(code, requestID)
	return r.expect("exec_received")
}

// msg is a server message, decoded one level deep.
type msg map[string]json.RawMessage

func (m msg) typ() string {
	var s string
	json.Unmarshal(m["type"], &s)
	return s
}

// recv reads the next message; it must be text JSON with a type.
func (r *repl) recv() msg {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	typ, b, err := r.c.Read(ctx)
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		r.t.Fatalf("got a %v message, want text", typ)
	}
	var m msg
	if err := json.Unmarshal(b, &m); err != nil {
		r.t.Fatalf("not JSON: %s", b)
	}
	switch m.typ() {
	case "connected", "exec_received", "output", "result", "error", "message":
	default:
		r.t.Fatalf("message of unknown type: %s", b)
	}
	return m
}

// expect reads the next message and checks its type.
func (r *repl) expect(typ string) msg {
	r.t.Helper()
	m := r.recv()
	if m.typ() != typ {
		r.t.Fatalf("got %v, want a %s message", m, typ)
	}
	return m
}

// connected reads the first message, which must be connected, and returns
// the machine name.
func (r *repl) connected() string {
	r.t.Helper()
	return str(r.t, r.expect("connected")["machine_name"])
}

// instructionFrames reads exec_received, then outputs up to the result, and
// returns the seq, the chunks and the result.
func (r *repl) instructionFrames(requestID int) (int64, []chunk, map[string]json.RawMessage) {
	r.t.Helper()
	ack := r.expect("exec_received")
	if string(ack["request_id"]) != itoa(int64(requestID)) {
		r.t.Fatalf("exec_received %v, want request_id %d", ack, requestID)
	}
	var seq int64
	if err := json.Unmarshal(ack["seq"], &seq); err != nil {
		r.t.Fatal(err)
	}
	chunks, result := collectFrames(r.t, seq, r.recv)
	return seq, chunks, result
}

// collectFrames reads output messages of instruction seq up to its result.
func collectFrames(t testing.TB, seq int64, next func() msg) ([]chunk, map[string]json.RawMessage) {
	t.Helper()
	var chunks []chunk
	for {
		m := next()
		if string(m["instruction_id"]) != itoa(seq) {
			t.Fatalf("frame %v is not for instruction %d", m, seq)
		}
		switch m.typ() {
		case "output":
			var c chunk
			dec := json.NewDecoder(bytes.NewReader(m["chunk"]))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&c); err != nil {
				t.Fatalf("bad chunk %s: %v", m["chunk"], err)
			}
			chunks = append(chunks, c)
		case "result":
			return chunks, keys(t, m["result"])
		default:
			t.Fatalf("unexpected %v during instruction %d", m, seq)
		}
	}
}

// wantChunks checks chunk data and seqs 0..n-1 on one stream.
func wantChunks(t testing.TB, got []chunk, stream string, data ...string) {
	t.Helper()
	if len(got) != len(data) {
		t.Fatalf("chunks %+v, want data %q", got, data)
	}
	for i, c := range got {
		if c.Stream != stream || c.Data != data[i] || c.Seq != int64(i) {
			t.Fatalf("chunk %d is %+v, want {%s %q %d}", i, c, stream, data[i], i)
		}
	}
}
