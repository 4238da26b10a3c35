package transport

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

type principalKey struct{}

// hostedServer serves an MCP server with one tool, "hold", that runs until
// release is closed, behind an authentication that takes the principal from
// the X-Principal header.
func hostedServer(t *testing.T, maxCalls, maxStreams int) (url string, running *atomic.Int32, peak *atomic.Int32, release chan struct{}) {
	t.Helper()
	srv := server.NewMCPServer("test", "1", server.WithToolCapabilities(false), server.WithHooks(&server.Hooks{}))
	running, peak = &atomic.Int32{}, &atomic.Int32{}
	release = make(chan struct{})
	srv.AddTool(mcp.NewTool("hold"), func(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			if p := peak.Load(); n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-release:
		case <-time.After(30 * time.Second):
		}
		return mcp.NewToolResultText("done"), nil
	})
	h, shutdown := NewHTTPHandler(srv, HTTPOptions{
		MaxConcurrentPerPrincipal: maxCalls,
		MaxStreamsPerPrincipal:    maxStreams,
		Authenticate: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, r.Header.Get("X-Principal"))))
			})
		},
		Principal: func(ctx context.Context) string { p, _ := ctx.Value(principalKey{}).(string); return p },
	})
	ts := httptest.NewServer(h)
	t.Cleanup(func() {
		shutdown(context.Background())
		ts.Close()
	})
	return ts.URL, running, peak, release
}

// sseStream opens GET /sse as principal and returns the message URL from
// its endpoint event, and the stream's lines.
func sseStream(t *testing.T, base, principal string) (messageURL string, lines chan string, resp *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+PathSSE, nil)
	req.Header.Set("X-Principal", principal)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		return "", nil, resp
	}
	lines = make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for l := range lines {
		if rest, ok := strings.CutPrefix(l, "data: "); ok && strings.Contains(rest, "sessionId=") {
			if strings.HasPrefix(rest, "/") {
				rest = base + rest
			}
			return rest, lines, resp
		}
	}
	t.Fatal("no endpoint event")
	return
}

func post(t *testing.T, url, principal, body string, headers ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("X-Principal", principal)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

const initialize = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`

// TestSSECallsCountAgainstTheLimit: legacy SSE answers each message 202 at
// once and runs it in the background; a principal's tool calls must still
// be bounded by its limit, and its slots come back when the calls end.
func TestSSECallsCountAgainstTheLimit(t *testing.T) {
	base, running, peak, release := hostedServer(t, 4, 8)
	msg, _, _ := sseStream(t, base, "alice")
	post(t, msg, "alice", initialize).Body.Close()
	post(t, msg, "alice", `{"jsonrpc":"2.0","method":"notifications/initialized"}`).Body.Close()
	accepted, refused := 0, 0
	for i := 1; i <= 12; i++ {
		resp := post(t, msg, "alice", fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"hold"}}`, i))
		switch resp.StatusCode {
		case http.StatusAccepted:
			accepted++
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("call %d: status %d", i, resp.StatusCode)
		}
		resp.Body.Close()
	}
	time.Sleep(300 * time.Millisecond)
	if accepted != 4 || refused != 8 || peak.Load() > 4 {
		t.Fatalf("accepted %d, refused %d, at most %d ran at once; want 4, 8, 4", accepted, refused, peak.Load())
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for running.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	// The slots came back.
	for i := 0; i < 4; i++ {
		resp := post(t, msg, "alice", fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"hold"}}`, 100+i))
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("after the calls ended: %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
}

// TestStreamsPerPrincipalAreBounded: one principal cannot hold more than
// its share of open streams, over either transport; another still can.
func TestStreamsPerPrincipalAreBounded(t *testing.T) {
	base, _, _, _ := hostedServer(t, 4, 3)
	for i := 0; i < 3; i++ {
		if _, _, resp := sseStream(t, base, "mallory"); resp.StatusCode != 200 {
			t.Fatalf("stream %d: %d", i, resp.StatusCode)
		}
	}
	if _, _, resp := sseStream(t, base, "mallory"); resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a fourth stream: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", base+PathMCP, nil)
	req.Header.Set("X-Principal", "mallory")
	req.Header.Set("Accept", "text/event-stream")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("a streamable stream past the limit: %v %v", resp, err)
	}
	if _, _, resp := sseStream(t, base, "alice"); resp.StatusCode != 200 {
		t.Fatalf("another principal's stream: %d", resp.StatusCode)
	}
}

// TestSessionsBelongToTheirPrincipal: Bob presents Alice's session ids,
// legacy SSE and streamable HTTP: "not found", and nothing of his reaches
// Alice's stream.
func TestSessionsBelongToTheirPrincipal(t *testing.T) {
	base, _, _, release := hostedServer(t, 4, 8)
	close(release)
	msg, lines, _ := sseStream(t, base, "alice")
	post(t, msg, "alice", initialize).Body.Close()
	time.Sleep(100 * time.Millisecond)
	for len(lines) > 0 {
		<-lines
	}
	resp := post(t, msg, "bob", `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("bob's message into alice's SSE session: %d", resp.StatusCode)
	}
	resp.Body.Close()
	time.Sleep(200 * time.Millisecond)
	for len(lines) > 0 {
		if l := <-lines; strings.Contains(l, `"id":7`) {
			t.Fatalf("bob's response reached alice's stream: %s", l)
		}
	}

	resp = post(t, base+PathMCP, "alice", initialize)
	id := resp.Header.Get("Mcp-Session-Id")
	resp.Body.Close()
	if id == "" {
		t.Fatal("no streamable session id")
	}
	for _, m := range []string{"POST", "GET", "DELETE"} {
		req, _ := http.NewRequest(m, base+PathMCP, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
		req.Header.Set("X-Principal", "bob")
		req.Header.Set("Mcp-Session-Id", id)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("bob's %s with alice's streamable session: %d", m, resp.StatusCode)
		}
	}
	resp = post(t, base+PathMCP, "alice", `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, "Mcp-Session-Id", id)
	if resp.StatusCode != 200 {
		t.Fatalf("alice's own session: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

// TestBodyLimits: a body declared past --max-request-mb is refused before
// it is read; the in-flight budget holds a principal's bodies and gives
// them back once.
func TestBodyLimits(t *testing.T) {
	read := false
	h := limitBody(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		read = true
	}), 1<<20)
	req := httptest.NewRequest("POST", "/mcp", strings.NewReader("x"))
	req.ContentLength = 2 << 20
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || read || !strings.Contains(rec.Body.String(), "--max-request-mb") {
		t.Fatalf("a body past the limit: %d %q (handler ran: %v)", rec.Code, rec.Body, read)
	}

	b := newBudget(10)
	r1, ok := b.take("alice", 6)
	if !ok {
		t.Fatal("the first body was refused")
	}
	if _, ok := b.take("alice", 6); ok {
		t.Fatal("alice went past her budget")
	}
	if r, ok := b.take("bob", 6); !ok {
		t.Fatal("bob was refused for alice's bodies")
	} else {
		r()
	}
	r1()
	r1() // a second release gives nothing more back
	r2, ok := b.take("alice", 10)
	if !ok {
		t.Fatal("alice's budget did not come back")
	}
	if _, ok := b.take("alice", 1); ok {
		t.Fatal("a double release gave alice more than her budget")
	}
	r2()
	if r, ok := b.take("alice", 50); !ok {
		t.Fatal("one body larger than the budget, with nothing else in flight, was refused")
	} else {
		r()
	}
}
