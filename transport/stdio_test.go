//go:build linux

package transport

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

// newServer is vmcp's real MCP server on a fresh engine.
func newServer(t testing.TB, allowedRoots ...string) (*server.MCPServer, *local.Engine) {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	store, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "sessions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	svc, err := tools.NewService(tools.Config{Backends: []backend.Backend{localbackend.New(engine)}, Conversations: conversations.NewManager(store, conversations.Limits{}), AllowedRoots: allowedRoots, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	return svc.NewMCPServer("test"), engine
}

// rawClient speaks JSON-RPC lines to ServeStdio over pipes, with no MCP
// library in between, so that the tests see exactly what is on the wire.
type rawClient struct {
	in    *io.PipeWriter
	lines chan string
	done  chan error // ServeStdio's return
}

func startRaw(t testing.TB, srv *server.MCPServer, opts StdioOptions) *rawClient {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	c := &rawClient{in: inW, lines: make(chan string, 100), done: make(chan error, 1)}
	go func() {
		c.done <- ServeStdio(context.Background(), srv, inR, outW, opts)
		outW.Close()
	}()
	go func() {
		r := bufio.NewReader(outR)
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				close(c.lines)
				return
			}
			c.lines <- l
		}
	}()
	t.Cleanup(func() {
		inW.Close()
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			t.Error("ServeStdio did not return after stdin closed")
		}
	})
	return c
}

func (c *rawClient) send(t testing.TB, format string, args ...any) {
	t.Helper()
	if _, err := fmt.Fprintf(c.in, format+"\n", args...); err != nil {
		t.Fatal(err)
	}
}

// recv returns the next message the server wrote.
func (c *rawClient) recv(t testing.TB) map[string]any {
	t.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			t.Fatal("the server closed its output")
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("the server wrote a line that is not JSON: %q", l)
		}
		return m
	case <-time.After(30 * time.Second):
		t.Fatal("no message from the server in 30 s")
	}
	return nil
}

func (c *rawClient) initialize(t testing.TB, capabilities string) {
	t.Helper()
	c.send(t, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":%s,"clientInfo":{"name":"raw","version":"1"}}}`, capabilities)
	if r := c.recv(t); r["result"] == nil {
		t.Fatalf("initialize: %v", r)
	}
	c.send(t, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
}

func errorOf(m map[string]any) string {
	e, _ := m["error"].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}

func TestBadLinesGetErrorsAndServingGoesOn(t *testing.T) {
	srv, _ := newServer(t)
	c := startRaw(t, srv, StdioOptions{MaxMessageBytes: 1000})
	c.initialize(t, `{}`)

	c.send(t, `{"jsonrpc":"2.0","id":1,"method":`)
	if r := c.recv(t); r["id"] != nil || !strings.Contains(errorOf(r), "not valid JSON") {
		t.Errorf("broken JSON: %v", r)
	}
	c.send(t, `{"jsonrpc":"2.0","id":2,"method":"ping","params":{"pad":"%s"}}`, strings.Repeat("x", 5000))
	if r := c.recv(t); !strings.Contains(errorOf(r), "longer than the 1000 bytes") {
		t.Errorf("long line: %v", r)
	}
	c.send(t, "")
	c.send(t, `{"jsonrpc":"2.0","id":3,"method":"ping"}`)
	if r := c.recv(t); r["id"] != float64(3) || r["result"] == nil {
		t.Errorf("ping after bad lines: %v", r)
	}
}

func TestProgressPrecedesTheResult(t *testing.T) {
	srv, _ := newServer(t)
	c := startRaw(t, srv, StdioOptions{})
	c.initialize(t, `{}`)
	for i := 1; i <= 5; i++ {
		c.send(t, `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"_meta":{"progressToken":"p%d"},"name":"run_python","arguments":{"code":"for i in range(3): print('line', i)"}}}`, i, i)
		var last string
		for {
			m := c.recv(t)
			if m["method"] == "notifications/progress" {
				p := m["params"].(map[string]any)
				if p["progressToken"] != fmt.Sprintf("p%d", i) {
					t.Fatalf("call %d: a notification for %v", i, p["progressToken"])
				}
				last = p["message"].(string)
				continue
			}
			if m["id"] != float64(i) {
				t.Fatalf("call %d: unexpected message %v", i, m)
			}
			break
		}
		if last != "stdout: line 2" {
			t.Errorf("call %d: the last notification before the result was %q, want the last line", i, last)
		}
	}
}

func TestCancelledNotificationStopsTheCall(t *testing.T) {
	srv, _ := newServer(t)
	c := startRaw(t, srv, StdioOptions{})
	c.initialize(t, `{}`)
	c.send(t, `{"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"exec_command","arguments":{"command":"sleep 60"}}}`)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	c.send(t, `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow","reason":"user stopped"}}`)
	r := c.recv(t)
	if time.Since(start) > 10*time.Second {
		t.Errorf("the call ended %v after its cancellation", time.Since(start))
	}
	if r["id"] != "slow" {
		t.Fatalf("got %v", r)
	}
	c.send(t, `{"jsonrpc":"2.0","id":9,"method":"ping"}`)
	if r := c.recv(t); r["id"] != float64(9) {
		t.Errorf("ping after a cancellation: %v", r)
	}
}

func TestClosingStdinCancelsCallsInFlight(t *testing.T) {
	srv, engine := newServer(t)
	c := startRaw(t, srv, StdioOptions{})
	c.initialize(t, `{}`)
	c.send(t, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"exec_command","arguments":{"command":"sleep 60"}}}`)
	deadline := time.Now().Add(10 * time.Second)
	var machine *local.Machine
	for machine == nil && time.Now().Before(deadline) {
		if ms := engine.Machines(); len(ms) == 1 {
			machine, _ = engine.Machine(ms[0].ID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if machine == nil {
		t.Fatal("no machine was created")
	}
	time.Sleep(500 * time.Millisecond) // let sleep start
	start := time.Now()
	c.in.Close()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("ServeStdio: %v", err)
		}
		c.done <- err // for the cleanup
	case <-time.After(15 * time.Second):
		t.Fatal("ServeStdio still running 15 s after stdin closed")
	}
	t.Logf("returned %v after stdin closed", time.Since(start))
	if out, err := machine.Run(context.Background(), local.Command{Shell: "ps -eo comm | grep -c '^sleep$' || true"}); err != nil || strings.TrimSpace(out.Stdout) != "0" {
		t.Errorf("sleep still runs in the machine: %q, %v", out.Stdout, err)
	}
}

func TestServerAsksTheClientForRoots(t *testing.T) {
	dir := t.TempDir()
	srv, _ := newServer(t, dir)
	c := startRaw(t, srv, StdioOptions{})
	c.initialize(t, `{"roots":{"listChanged":true}}`)
	c.send(t, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"upload_file","arguments":{"path":"x","local_path":%q}}}`, dir+"/missing")
	req := c.recv(t)
	if req["method"] != "roots/list" || req["id"] == nil {
		t.Fatalf("want a roots/list request, got %v", req)
	}
	id, _ := json.Marshal(req["id"])
	c.send(t, `{"jsonrpc":"2.0","id":%s,"result":{"roots":[{"uri":"file://%s"}]}}`, id, dir)
	r := c.recv(t)
	res, _ := r["result"].(map[string]any)
	content, _ := json.Marshal(res["content"])
	// The file does not exist; what matters is that the call completed
	// after the roots arrived.
	if res["isError"] != true || !strings.Contains(string(content), "does not exist") {
		t.Errorf("result after roots/list: %v", r)
	}
}

func BenchmarkToolCall(b *testing.B) {
	srv, engine := newServer(b)
	c := startRaw(b, srv, StdioOptions{})
	c.initialize(b, `{}`)
	call := func(i int) {
		c.send(b, `{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"run_python","arguments":{"code":"1+1"}}}`, i)
		if r := c.recv(b); r["result"] == nil {
			b.Fatalf("run_python: %v", r)
		}
	}
	for i := 0; i < 100; i++ {
		call(i)
	}
	b.Run("mcp", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			call(i + 100)
		}
	})
	m, err := engine.Machine(engine.Machines()[0].ID)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("engine", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := m.RunPython(context.Background(), "1+1", local.PythonOptions{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestPromptWithoutItsArgumentIsInvalidParams: prompts/get without a
// required argument is the caller's mistake (-32602) naming the argument,
// not an internal error; with it, the prompt comes back.
func TestPromptWithoutItsArgumentIsInvalidParams(t *testing.T) {
	srv := server.NewMCPServer("t", "1", server.WithPromptCapabilities(false))
	srv.AddPrompt(mcp.NewPrompt("greet", mcp.WithArgument("who", mcp.RequiredArgument())),
		func(_ context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return mcp.NewGetPromptResult("greeting", []mcp.PromptMessage{mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent("hello "+req.Params.Arguments["who"]))}), nil
		})
	c := startRaw(t, srv, StdioOptions{})
	c.initialize(t, `{}`)
	for i, params := range []string{`{"name":"greet"}`, `{"name":"greet","arguments":{}}`, `{"name":"greet","arguments":{"who":""}}`} {
		c.send(t, `{"jsonrpc":"2.0","id":%d,"method":"prompts/get","params":%s}`, i+1, params)
		r := c.recv(t)
		e, _ := r["error"].(map[string]any)
		if e["code"] != float64(mcp.INVALID_PARAMS) || !strings.Contains(errorOf(r), `prompt greet needs the argument "who"`) {
			t.Errorf("%s: %v", params, r)
		}
	}
	c.send(t, `{"jsonrpc":"2.0","id":9,"method":"prompts/get","params":{"name":"greet","arguments":{"who":"you"}}}`)
	if r := c.recv(t); r["result"] == nil {
		t.Errorf("with the argument: %v", r)
	}
}
