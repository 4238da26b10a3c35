//go:build linux

package fastvm_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/local"
)

// emuKey is the API key of every test emulator.
const emuKey = "emu-test-key-7f3a9c"

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	if os.Getenv(childEnv) != "" {
		os.Exit(transferChild())
	}
	os.Exit(runWithExampleEmulator(m))
}

// runWithExampleEmulator runs the tests with FASTVM_API_KEY and
// FASTVM_BASE_URL pointing at an emulator, so that the package Examples run
// the same code a user would write (fastvm.NewFromEnv) for real.
func runWithExampleEmulator(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fastvm-client-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	env, closeEnv, err := startEmulator(dir, fastvmemu.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer closeEnv()
	os.Setenv("FASTVM_API_KEY", emuKey)
	os.Setenv("FASTVM_BASE_URL", env.srv.URL)
	return m.Run()
}

// emuEnv is an emulator on loopback over a local engine of its own, behind a
// wire log, and a client for it.
type emuEnv struct {
	srv    *httptest.Server
	emu    *fastvmemu.Server
	engine *local.Engine
	wire   *wireLog
	c      *fastvm.Client
}

// startEmulator opens an engine on stateDir and serves an emulator over it.
func startEmulator(stateDir string, opts fastvmemu.Options, copts ...fastvm.Option) (*emuEnv, func(), error) {
	e, err := local.New(local.Options{StateDir: stateDir})
	if err != nil {
		return nil, nil, err
	}
	opts.Engine, opts.APIKey, opts.Logger = e, emuKey, zerolog.Nop()
	s, err := fastvmemu.New(opts)
	if err != nil {
		e.Close()
		return nil, nil, err
	}
	wire := &wireLog{}
	srv := httptest.NewServer(wire.wrap(s))
	s.SetBaseURL(srv.URL)
	env := &emuEnv{srv: srv, emu: s, engine: e, wire: wire,
		c: fastvm.New(emuKey, append([]fastvm.Option{fastvm.WithBaseURL(srv.URL)}, copts...)...)}
	return env, func() {
		srv.Close()
		s.Close()
		e.Close()
	}, nil
}

// newEmu starts an emulator for one test, on an engine in t.TempDir().
func newEmu(t testing.TB, opts fastvmemu.Options, copts ...fastvm.Option) *emuEnv {
	t.Helper()
	env, closeEnv, err := startEmulator(t.TempDir(), opts, copts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeEnv)
	return env
}

// launch starts a running VM that is deleted when the test ends.
func (env *emuEnv) launch(t testing.TB, req fastvm.LaunchRequest) *fastvm.VM {
	t.Helper()
	if req.MachineType == "" && req.SnapshotID == "" {
		req.MachineType = "c1m2"
	}
	vm, err := env.c.Launch(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.c.DeleteVM(context.Background(), vm.ID) })
	return vm
}

// wireEntry is one request the emulator answered.
type wireEntry struct {
	Method, Path string
	Status       int
	Header       http.Header
	Length       int64    // request Content-Length; -1 when chunked
	Encoding     []string // request Transfer-Encoding
	Body         []byte   // response body of NDJSON exec streams
	At, Done     time.Time
}

// wireLog records the requests reaching the emulator: what the client really
// sent and what it got back.
type wireLog struct {
	mu      sync.Mutex
	entries []wireEntry
}

func (l *wireLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &wireWriter{ResponseWriter: w, status: http.StatusOK,
			capture: strings.HasSuffix(r.URL.Path, "/exec") && r.Header.Get("Accept") == "application/x-ndjson"}
		at := time.Now()
		h.ServeHTTP(rec, r)
		l.mu.Lock()
		defer l.mu.Unlock()
		l.entries = append(l.entries, wireEntry{Method: r.Method, Path: r.URL.Path, Status: rec.status, Header: r.Header.Clone(),
			Length: r.ContentLength, Encoding: r.TransferEncoding, Body: rec.body.Bytes(), At: at, Done: time.Now()})
	})
}

// find returns the entries of one method whose path starts with prefix.
func (l *wireLog) find(method, prefix string) []wireEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []wireEntry
	for _, e := range l.entries {
		if e.Method == method && strings.HasPrefix(e.Path, prefix) {
			out = append(out, e)
		}
	}
	return out
}

// await is find for responses that the client may finish reading before
// the handler returns (streams): it waits a little for n entries.
func (l *wireLog) await(t testing.TB, n int, method, prefix string) []wireEntry {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := l.find(method, prefix)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d %s %s requests recorded, want %d", len(got), method, prefix, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reset forgets what was recorded so far.
func (l *wireLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = nil
}

// wireWriter keeps the status (and, for streams, the body) of a response.
type wireWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
	capture     bool
	body        bytes.Buffer
}

func (w *wireWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *wireWriter) Write(p []byte) (int, error) {
	w.wroteHeader = true
	if w.capture && w.body.Len() < 1<<20 {
		w.body.Write(p)
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *wireWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush and Hijack for handlers that assert the interfaces directly.
func (w *wireWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }
