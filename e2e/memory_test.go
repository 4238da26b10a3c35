//go:build linux

package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// peakMemory is the process's peak resident set (VmHWM), in bytes.
func peakMemory(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/pid/status")
	return 0
}

// TestBigUploadStaysWithinThreeTimesItsSize: a 75 MiB file sent as base64
// in one stdio line arrives intact, and the server's peak memory stays
// within three times the line.
func TestBigUploadStaysWithinThreeTimesItsSize(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.ok(t, "run_python", map[string]any{"code": "1"}, nil) // the machine, started
	data := make([]byte, 75<<20)
	rand.Read(data)
	encoded := base64.StdEncoding.EncodeToString(data)
	sum := sha256.Sum256(data)
	data = nil
	began := time.Now()
	h.ok(t, "upload_file", map[string]any{"path": "big.bin", "content_base64": encoded, "timeout_seconds": 300}, nil)
	took := time.Since(began)
	peak := peakMemory(t, h.cmd.Process.Pid)
	line := int64(len(encoded))
	t.Logf("75 MiB upload (%d MiB line): %v, server peak %d MiB (%.1f× the line)", line>>20, took.Round(time.Millisecond), peak>>20, float64(peak)/float64(line))
	if peak > 3*line {
		t.Errorf("the server peaked at %d MiB for a %d MiB line: more than 3×", peak>>20, line>>20)
	}
	var out struct {
		Stdout string `json:"stdout"`
	}
	h.ok(t, "exec_command", map[string]any{"command": "sha256sum big.bin"}, &out)
	if got := strings.Fields(out.Stdout); len(got) == 0 || got[0] != hex.EncodeToString(sum[:]) {
		t.Fatalf("the uploaded file's sha256 is %q, want %x", out.Stdout, sum)
	}
}

// rawSession opens an MCP session over streamable HTTP without an SDK, so
// the test sees the HTTP status of each call.
type rawSession struct {
	base, token, id string
}

func (s *httpServer) rawSession(t *testing.T, token string) *rawSession {
	t.Helper()
	r := &rawSession{base: s.base, token: token}
	code, body, header := r.post(t, map[string]any{"jsonrpc": "2.0", "id": 1, "method": "initialize",
		"params": map[string]any{"protocolVersion": "2025-06-18", "capabilities": map[string]any{}, "clientInfo": map[string]any{"name": "raw", "version": "1"}}})
	if code != 200 {
		t.Fatalf("initialize: %d %s", code, body)
	}
	r.id = header.Get("Mcp-Session-Id")
	if code, body, _ := r.post(t, map[string]any{"jsonrpc": "2.0", "method": "notifications/initialized"}); code/100 != 2 {
		t.Fatalf("initialized: %d %s", code, body)
	}
	return r
}

func (r *rawSession) post(t *testing.T, msg any) (int, string, http.Header) {
	b, err := json.Marshal(msg)
	if err != nil {
		t.Error(err)
		return 0, "", nil
	}
	req, _ := http.NewRequest("POST", r.base+"/mcp", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if r.id != "" {
		req.Header.Set("Mcp-Session-Id", r.id)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0, "", nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

// call posts one tools/call and returns the HTTP status and body.
func (r *rawSession) call(t *testing.T, id int, name string, args map[string]any) (int, string) {
	code, body, _ := r.post(t, map[string]any{"jsonrpc": "2.0", "id": id, "method": "tools/call",
		"params": map[string]any{"name": name, "arguments": args}})
	return code, body
}

// TestHTTPInFlightRequestBudget: the request bodies one principal's calls
// hold at once are bounded; past the budget a call is refused with 429 and
// a message saying what to do, other principals are not affected, and the
// budget comes back when the calls end.
func TestHTTPInFlightRequestBudget(t *testing.T) {
	t.Parallel()
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-secret", "bob": "vmcp_bob-secret"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend",
		"--max-request-mb", "16", "--max-inflight-request-mb", "24"})
	alice := s.rawSession(t, "vmcp_alice-secret")
	bob := s.rawSession(t, "vmcp_bob-secret")
	stdin := strings.Repeat("x", 10<<20)
	slow := map[string]any{"command": "sleep 4; wc -c", "stdin": stdin}
	if code, body := alice.call(t, 2, "exec_command", map[string]any{"command": "true"}); code != 200 {
		t.Fatalf("first call: %d %s", code, body) // the machine, started
	}
	// One large upload: the server holds the request once.
	data := make([]byte, 11<<20)
	rand.Read(data)
	sum := sha256.Sum256(data)
	before := peakMemory(t, s.cmd.Process.Pid)
	encoded := base64.StdEncoding.EncodeToString(data)
	if code, body := alice.call(t, 3, "upload_file", map[string]any{"path": "big.bin", "content_base64": encoded}); code != 200 || !strings.Contains(body, hex.EncodeToString(sum[:])) {
		t.Fatalf("a 15 MiB upload: %d %.300s", code, body)
	}
	peak := peakMemory(t, s.cmd.Process.Pid)
	t.Logf("a %d MiB upload over http: server peak %d MiB, from %d MiB", len(encoded)>>20, peak>>20, before>>20)
	if peak-before > 3*int64(len(encoded)) {
		t.Errorf("the server grew by %d MiB for a %d MiB upload: more than 3×", (peak-before)>>20, len(encoded)>>20)
	}
	before = peak
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, body := alice.call(t, 10+i, "exec_command", slow); code != 200 || !strings.Contains(body, strconv.Itoa(10<<20)) {
				t.Errorf("a call within the budget: %d %.300s", code, body)
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond) // both bodies are held: 20 MiB of 24
	code, body := alice.call(t, 20, "exec_command", map[string]any{"command": "wc -c", "stdin": stdin})
	if code != http.StatusTooManyRequests || !strings.Contains(body, "retry when a call ends") {
		t.Errorf("a call past the budget: %d %.300s", code, body)
	}
	if code, body := bob.call(t, 21, "exec_command", map[string]any{"command": "wc -c", "stdin": stdin}); code != 200 || !strings.Contains(body, strconv.Itoa(10<<20)) {
		t.Errorf("another principal's call meanwhile: %d %.300s", code, body)
	}
	wg.Wait()
	if code, body := alice.call(t, 22, "exec_command", map[string]any{"command": "wc -c", "stdin": stdin}); code != 200 || !strings.Contains(body, strconv.Itoa(10<<20)) {
		t.Errorf("a call after the others ended: %d %.300s", code, body)
	}
	peak = peakMemory(t, s.cmd.Process.Pid)
	t.Logf("server peak %d MiB before the calls with stdin, %d MiB after (30 MiB of bodies at most in flight)", before>>20, peak>>20)
	if peak-before > 3*30<<20 {
		t.Errorf("the server grew by %d MiB for at most 30 MiB of bodies in flight", (peak-before)>>20)
	}
}

// TestLargeArgumentsArriveIntact: large file contents and stdin, with
// escapes and non-ASCII text in them, arrive byte for byte over streamable
// HTTP and legacy SSE (where the transport sets them aside from the MCP
// library's decoding) and over stdio.
func TestLargeArgumentsArriveIntact(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	for i := 0; b.Len() < 300<<10; i++ {
		fmt.Fprintf(&b, "line %d: \"quoted\"\ttab \\ backslash, é ü 日本 \U0001F600 </script>\n", i)
	}
	content := b.String()
	sum := sha256.Sum256([]byte(content))
	want := hex.EncodeToString(sum[:])
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-secret"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend"})
	clients := map[string]*harness{
		"streamable": s.connect(t, false, "vmcp_alice-secret"),
		"sse":        s.connect(t, true, "vmcp_alice-secret"),
		"stdio":      start(t),
	}
	for name, h := range clients {
		t.Run(name, func(t *testing.T) {
			var up struct {
				SHA256 string `json:"sha256"`
			}
			h.ok(t, "upload_file", map[string]any{"path": name + ".txt", "content": content}, &up)
			if up.SHA256 != want {
				t.Errorf("upload_file content: sha256 %s, want %s", up.SHA256, want)
			}
			h.ok(t, "upload_file", map[string]any{"path": name + ".b64", "content_base64": base64.StdEncoding.EncodeToString([]byte(content))}, &up)
			if up.SHA256 != want {
				t.Errorf("upload_file content_base64: sha256 %s, want %s", up.SHA256, want)
			}
			var out struct {
				Stdout string `json:"stdout"`
			}
			h.ok(t, "exec_command", map[string]any{"command": "sha256sum", "stdin": content}, &out)
			if !strings.HasPrefix(out.Stdout, want) {
				t.Errorf("exec_command stdin: %q, want %s", out.Stdout, want)
			}
		})
	}
}
