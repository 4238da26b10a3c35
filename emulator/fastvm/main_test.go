//go:build linux

package fastvm

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

const testKey = "test-api-key-not-a-secret"

// env is an emulator on loopback over an engine of its own.
type env struct {
	t      *testing.T
	dir    string
	engine *local.Engine
	s      *Server
	srv    *httptest.Server
}

func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	return newEnvAt(t, t.TempDir(), opts)
}

func newEnvAt(t *testing.T, dir string, opts Options) *env {
	t.Helper()
	return newEnvEngine(t, local.Options{StateDir: dir}, opts)
}

// newEnvEngine is newEnvAt with an engine of the given options.
func newEnvEngine(t *testing.T, engineOpts local.Options, opts Options) *env {
	t.Helper()
	dir := engineOpts.StateDir
	e, err := local.New(engineOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	opts.Engine, opts.APIKey = e, testKey
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	s.SetBaseURL(srv.URL)
	return &env{t: t, dir: dir, engine: e, s: s, srv: srv}
}

// close stops the server and its engine now (for restart tests).
func (e *env) close() {
	e.srv.Close()
	if err := e.s.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.engine.Close()
}

// do sends a raw request with the API key (unless headers set X-API-Key to
// "") and returns the status, headers and body.
func (e *env) do(method, path, body string, headers ...string) (int, http.Header, []byte) {
	e.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	url := path
	if strings.HasPrefix(path, "/") {
		url = e.srv.URL + path
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("X-API-Key", testKey)
	req.Header.Set("Accept", "application/json")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// call sends a request and decodes a JSON object answer, failing unless
// the status is want.
func (e *env) call(method, path, body string, want int) map[string]any {
	e.t.Helper()
	status, _, b := e.do(method, path, body)
	if status != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, b)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		e.t.Fatalf("%s %s: answer is not a JSON object: %q", method, path, b)
	}
	return out
}

// errorOf checks that an answer is exactly {"error": "..."} and returns it.
func errorOf(t *testing.T, b []byte) string {
	t.Helper()
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil || len(out) != 1 {
		t.Fatalf("error body is not {\"error\": ...}: %q", b)
	}
	msg, ok := out["error"].(string)
	if !ok || msg == "" {
		t.Fatalf("error body is not {\"error\": \"<message>\"}: %q", b)
	}
	return msg
}

// launch starts a VM and returns its id (it answers 201 running with no
// provisioning delay).
func (e *env) launch(body string) string {
	e.t.Helper()
	vm := e.call("POST", "/v1/vms", body, http.StatusCreated)
	if vm["status"] != "running" {
		e.t.Fatalf("launch answered 201 with status %v", vm["status"])
	}
	return vm["id"].(string)
}

// execJSON runs argv in a VM with the aggregate answer.
func (e *env) execJSON(vm string, argv ...string) execResult {
	e.t.Helper()
	b, _ := json.Marshal(map[string]any{"command": argv, "timeoutSec": 60})
	status, _, body := e.do("POST", "/v1/vms/"+vm+"/exec", string(b))
	if status != http.StatusOK {
		e.t.Fatalf("exec %q: status %d: %s", argv, status, body)
	}
	var res execResult
	if err := json.Unmarshal(body, &res); err != nil {
		e.t.Fatal(err)
	}
	return res
}

// sh runs a shell line in a VM, as the Python SDK's helper does, and fails
// the test unless it exits 0.
func (e *env) sh(vm, line string) string {
	e.t.Helper()
	res := e.execJSON(vm, "sh", "-c", line)
	if res.ExitCode != 0 {
		e.t.Fatalf("sh -c %q: exit %d: %s%s", line, res.ExitCode, res.Stdout, res.Stderr)
	}
	return res.Stdout
}

// waitStatus polls path until its "status" is want (or fails on one of
// stop), and returns the last answer.
func (e *env) waitStatus(path, want string, stop ...string) map[string]any {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		obj := e.call("GET", path, "", http.StatusOK)
		st, _ := obj["status"].(string)
		if st == want {
			return obj
		}
		for _, s := range stop {
			if st == s {
				e.t.Fatalf("GET %s: status %q while waiting for %q: %v", path, st, want, obj)
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("GET %s: still %q after 60 s, want %q", path, st, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// httpDo sends a request with no API key (presigned URLs).
func httpDo(t *testing.T, method, url string, body io.Reader, headers ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	if b, ok := body.(*bytes.Reader); ok {
		req.ContentLength = int64(b.Len())
	} else if body != nil {
		req.ContentLength = -1 // chunked, like a tar | curl -T - upload
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}
