//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/auth"
	"github.com/vmcp-dev/vmcp/tools"
)

// httpServer is a running mcp-server --transport http.
type httpServer struct {
	base string // http://127.0.0.1:PORT
	cmd  *exec.Cmd
	log  *syncBuffer
}

// freePort returns a loopback port nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startHTTPServer runs the server over http with the given extra flags and
// waits for /healthz.
func startHTTPServer(t *testing.T, state string, args []string, env ...string) *httpServer {
	t.Helper()
	port := freePort(t)
	s := &httpServer{base: fmt.Sprintf("http://127.0.0.1:%d", port), log: &syncBuffer{}}
	s.cmd = exec.Command(serverBin, append([]string{"--transport", "http", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--state-dir", state, "--log-level", "debug"}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { s.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			t.Error("the http server did not stop within 20 s of SIGINT")
		}
		if strings.Contains(s.log.String(), "DATA RACE") {
			t.Error("the server reported a data race")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", s.log)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(s.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no /healthz within 30 s:\n%s", s.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// bearer adds a token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// connect opens an MCP session to the server over streamable HTTP or SSE.
func (s *httpServer) connect(t *testing.T, sse bool, token string) *harness {
	t.Helper()
	return s.connectWithRoots(t, sse, token, nil)
}

// connectWithRoots is connect for a client that declares roots.
func (s *httpServer) connectWithRoots(t *testing.T, sse bool, token string, roots []string) *harness {
	t.Helper()
	h := &harness{log: s.log, cmd: s.cmd}
	client := mcp.NewClient(&mcp.Implementation{Name: "vmcp-e2e-http", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			h.mu.Lock()
			h.progress = append(h.progress, req.Params)
			h.mu.Unlock()
		},
	})
	for _, r := range roots {
		//lint:ignore SA1019 roots are what this exercises: clients before protocol 2026-07-28 send them
		client.AddRoots(&mcp.Root{URI: "file://" + r})
	}
	hc := &http.Client{Transport: bearer{token: token, next: http.DefaultTransport}}
	var tr mcp.Transport = &mcp.StreamableClientTransport{Endpoint: s.base + "/mcp", HTTPClient: hc}
	if sse {
		tr = &mcp.SSEClientTransport{Endpoint: s.base + "/sse", HTTPClient: hc}
	}
	// The SSE transport keeps the connect context for its stream: it must
	// outlive Connect (the test's timeout bounds a hang).
	cs, err := client.Connect(context.Background(), tr, nil)
	if err != nil {
		t.Fatalf("connect over http (sse=%v): %v\n%s", sse, err, s.log)
	}
	h.cs = cs
	t.Cleanup(func() { cs.Close() })
	return h
}

// tokensFile writes a tokens file for principal→token pairs.
func tokensFile(t *testing.T, tokens map[string]string) string {
	t.Helper()
	var b strings.Builder
	for principal, token := range tokens {
		fmt.Fprintf(&b, "%s %s\n", principal, auth.HashToken(token))
	}
	p := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHTTPConversation: the run_python conversation of the stdio tests, and
// commands, over streamable HTTP and over legacy SSE, authenticated.
func TestHTTPConversation(t *testing.T) {
	t.Parallel()
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-token-for-tests"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend"})
	for _, sse := range []bool{false, true} {
		t.Run(map[bool]string{false: "streamable", true: "sse"}[sse], func(t *testing.T) {
			h := s.connect(t, sse, "vmcp_alice-token-for-tests")
			pythonConversation(t, h)
			pythonProgress(t, h)
			var cmd tools.ExecCommandOutput
			h.ok(t, "exec_command", map[string]any{"command": "echo over http"}, &cmd)
			if cmd.Stdout != "over http\n" {
				t.Errorf("exec_command: %+v", cmd)
			}
			// Hosted defaults: no host paths.
			h.fails(t, "upload_file", map[string]any{"path": "x", "local_path": "/etc/hostname"}, "allows no host directories")
		})
	}
}

// TestHTTPClientRoots: over HTTP too, with allowed roots configured, a
// client that declares roots is asked for them (a multi round-trip input
// request on streamable HTTP, a roots/list request on SSE) and local_path
// must lie under them.
func TestHTTPClientRoots(t *testing.T) {
	t.Parallel()
	// On the hosted endpoint, alice's directory under the allowed root is
	// hers: <root>/alice.
	own, _, _ := rootDirs(t)
	root := t.TempDir()
	if err := os.Rename(own, filepath.Join(root, "alice")); err != nil {
		t.Fatal(err)
	}
	mine, other := filepath.Join(root, "alice", "mine"), filepath.Join(root, "alice", "other")
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-token-for-tests"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend", "--allowed-roots", root})
	for _, sse := range []bool{false, true} {
		t.Run(map[bool]string{false: "streamable", true: "sse"}[sse], func(t *testing.T) {
			h := s.connectWithRoots(t, sse, "vmcp_alice-token-for-tests", []string{mine})
			var up struct {
				Bytes int64 `json:"bytes"`
			}
			h.ok(t, "upload_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(mine, "f.txt")}, &up)
			if up.Bytes != int64(len("from "+filepath.Join(own, "mine"))) {
				t.Errorf("uploaded %d bytes", up.Bytes)
			}
			h.fails(t, "upload_file", map[string]any{"path": "c.txt", "local_path": filepath.Join(other, "f.txt")}, "roots your MCP client allows ("+mine+")")
		})
	}
}

// TestHTTPAuth: no token or a wrong one is 401 with WWW-Authenticate; one
// principal's conversation and machines are not found for another.
func TestHTTPAuth(t *testing.T) {
	t.Parallel()
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-secret", "bob": "vmcp_bob-secret"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend"})
	for _, token := range []string{"", "vmcp_wrong"} {
		req, _ := http.NewRequest("POST", s.base+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("token %q: %d %q, want 401 with a Bearer challenge", token, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	alice := s.connect(t, false, "vmcp_alice-secret")
	bob := s.connect(t, false, "vmcp_bob-secret")
	var a tools.RunPythonOutput
	alice.ok(t, "run_python", map[string]any{"code": "secret = 1", "session": "new"}, &a)
	bob.fails(t, "run_python", map[string]any{"code": "secret", "session": a.Session}, "not found")
	bob.fails(t, "run_python", map[string]any{"code": "secret", "machine": a.Machine}, "not found")
	bob.fails(t, "delete_vm", map[string]any{"machine": a.Machine}, "not found")
	alice.ok(t, "run_python", map[string]any{"code": "secret", "session": a.Session}, &a)
	if a.Value == nil || *a.Value != "1" {
		t.Errorf("alice after bob: %+v", a)
	}
	if strings.Contains(s.log.String(), "secret") && strings.Contains(s.log.String(), "vmcp_alice-secret") {
		t.Error("a token appears in the server log")
	}
}

// startRedis runs Debian's redis-server on a free loopback port for the
// test and returns its URL.
func startRedis(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is missing: scripts/install-deps installs it (apt-get install -y redis-server)")
	}
	port := freePort(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return fmt.Sprintf("redis://127.0.0.1:%d/0", port)
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplicasShareConversations: two replicas of the hosted server share
// one Redis; a conversation started through one continues through the other
// (on ForeverVM, a backend both replicas reach, so its memory is there too).
func TestReplicasShareConversations(t *testing.T) {
	t.Parallel()
	redisURL := startRedis(t)
	fvURL, fvToken := forevervmEmulator(t)
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-replicas"})
	args := []string{"--tokens-file", tokens, "--session-store", redisURL, "--forevervm-url", fvURL}
	r1 := startHTTPServer(t, t.TempDir(), args, "FOREVERVM_TOKEN="+fvToken)
	r2 := startHTTPServer(t, t.TempDir(), args, "FOREVERVM_TOKEN="+fvToken)

	h1 := r1.connect(t, false, "vmcp_alice-replicas")
	var out tools.RunPythonOutput
	h1.ok(t, "run_python", map[string]any{"code": "shared = 'from replica 1'", "session": "new"}, &out)
	handle, machine := out.Session, out.Machine

	h2 := r2.connect(t, false, "vmcp_alice-replicas")
	h2.ok(t, "run_python", map[string]any{"code": "shared", "session": handle}, &out)
	if out.Value == nil || *out.Value != "'from replica 1'" || out.Machine != machine || out.Session != handle {
		t.Fatalf("through replica 2: %+v", out)
	}
	var info tools.SessionInfoOutput
	h2.ok(t, "session_info", map[string]any{"session": handle}, &info)
	if len(info.Machines) != 1 || info.Machines[0].ID != machine {
		t.Errorf("session_info through replica 2: %+v", info)
	}
}

// TestPrincipalCredentials: a principal that brings its own ForeverVM token
// runs Python on ForeverVM with it; one that brings none gets the server's
// backends; the token shows in no output or log.
func TestPrincipalCredentials(t *testing.T) {
	t.Parallel()
	fvURL, fvToken := forevervmEmulator(t)
	creds := filepath.Join(t.TempDir(), "creds.json")
	if err := os.WriteFile(creds, []byte(`{"alice": {"forevervm_token": "`+fvToken+`"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-creds", "bob": "vmcp_bob-creds"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--principal-credentials", creds,
		"--forevervm-url", fvURL, "--enable-local-backend"})
	var out tools.RunPythonOutput
	res := s.connect(t, false, "vmcp_alice-creds").ok(t, "run_python", map[string]any{"code": "1+1"}, &out)
	if !forevervmName.MatchString(out.Machine) {
		t.Errorf("alice's Python ran on %q, not on ForeverVM with her token", out.Machine)
	}
	if strings.Contains(text(res), fvToken) {
		t.Error("alice's token in a tool result")
	}
	s.connect(t, false, "vmcp_bob-creds").ok(t, "run_python", map[string]any{"code": "1+1"}, &out)
	if forevervmName.MatchString(out.Machine) {
		t.Errorf("bob, with no credentials, reached ForeverVM: %s", out.Machine)
	}
	if strings.Contains(s.log.String(), fvToken) {
		t.Error("a principal's token in the server log")
	}
	// The file must be private.
	os.Chmod(creds, 0o644)
	cmd := exec.Command(serverBin, "--transport", "http", "--tokens-file", tokens, "--principal-credentials", creds)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "chmod 600") {
		t.Errorf("a world-readable credentials file: %v\n%s", err, out)
	}
}

// getWithToken GETs url with a bearer token (none if empty) and returns
// the status and body.
func getWithToken(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsNeedAuthentication: /metrics is behind the endpoint's
// authentication, or on a listener of its own with --metrics-listen.
func TestMetricsNeedAuthentication(t *testing.T) {
	t.Parallel()
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-secret"})
	get := func(url, token string) (int, string) { return getWithToken(t, url, token) }
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend"})
	if code, _ := get(s.base+"/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("/metrics without a token: %d", code)
	}
	if code, body := get(s.base+"/metrics", "vmcp_alice-secret"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics with a token: %d", code)
	}
	port := freePort(t)
	s2 := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend", "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", port)})
	if code, _ := get(s2.base+"/metrics", "vmcp_alice-secret"); code != http.StatusNotFound {
		t.Errorf("/metrics on the public listener with --metrics-listen: %d", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := 0, ""
		if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port)); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, string(b)
		}
		if code == 200 && strings.Contains(body, "go_goroutines") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics listener: %d", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHTTPHostPathsPerPrincipal: on the hosted endpoint, each principal's
// local_path lives in its own directory under the allowed root: what alice
// saves, bob can neither read nor overwrite.
func TestHTTPHostPathsPerPrincipal(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-secret", "bob": "vmcp_bob-secret"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend", "--allowed-roots", root})
	alice := s.connect(t, false, "vmcp_alice-secret")
	bob := s.connect(t, true, "vmcp_bob-secret")
	alice.ok(t, "upload_file", map[string]any{"path": "secret.txt", "content": "alice's secret"}, nil)
	alice.ok(t, "download_file", map[string]any{"path": "secret.txt", "local_path": "secret.txt"}, nil)
	if b, err := os.ReadFile(filepath.Join(root, "alice", "secret.txt")); err != nil || string(b) != "alice's secret" {
		t.Fatalf("alice's download: %q %v", b, err)
	}
	bob.fails(t, "upload_file", map[string]any{"path": "stolen.txt", "local_path": "secret.txt"}, "does not exist")
	bob.fails(t, "upload_file", map[string]any{"path": "stolen.txt", "local_path": filepath.Join(root, "alice", "secret.txt")}, "outside the allowed roots")
	bob.fails(t, "upload_file", map[string]any{"path": "stolen.txt", "local_path": "../alice/secret.txt"}, "outside the allowed roots")
	bob.ok(t, "upload_file", map[string]any{"path": "mine.txt", "content": "bob's"}, nil)
	bob.fails(t, "download_file", map[string]any{"path": "mine.txt", "local_path": filepath.Join(root, "alice", "planted.txt")}, "outside the allowed roots")
	bob.ok(t, "download_file", map[string]any{"path": "mine.txt", "local_path": "secret.txt"}, nil)
	if b, _ := os.ReadFile(filepath.Join(root, "alice", "secret.txt")); string(b) != "alice's secret" {
		t.Fatalf("alice's file changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(root, "alice", "planted.txt")); err == nil {
		t.Fatal("bob wrote into alice's directory")
	}
}
