//go:build linux

package fastvm

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

const testKey = "backend-test-key"

// testEnv is an emulator on loopback, a client of it and a backend over
// the client; hits counts the requests by "METHOD path-suffix".
type testEnv struct {
	c         *fastvmclient.Client
	b         *Backend
	emu       *fastvmemu.Server
	mu        sync.Mutex
	hits      []string
	conflicts int // 409 answers
}

// statusWriter remembers a response's status.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (env *testEnv) conflictCount() int {
	env.mu.Lock()
	defer env.mu.Unlock()
	return env.conflicts
}

func newTestEnv(t testing.TB, eopts fastvmemu.Options, bopts Options) *testEnv {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	eopts.Engine, eopts.APIKey, eopts.Logger = engine, testKey, zerolog.Nop()
	s, err := fastvmemu.New(eopts)
	if err != nil {
		t.Fatal(err)
	}
	env := &testEnv{emu: s}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		s.ServeHTTP(rec, r)
		env.mu.Lock()
		env.hits = append(env.hits, r.Method+" "+r.URL.Path)
		if rec.status == http.StatusConflict {
			env.conflicts++
		}
		env.mu.Unlock()
	}))
	s.SetBaseURL(srv.URL)
	t.Cleanup(func() {
		srv.Close()
		s.Close()
		engine.Close()
	})
	env.c = fastvmclient.New(testKey, fastvmclient.WithBaseURL(srv.URL), fastvmclient.WithPollInterval(500*time.Millisecond))
	env.b = New(env.c, bopts)
	return env
}

// count is how many requests had this method and a path ending in suffix.
func (env *testEnv) count(method, suffix string) int {
	env.mu.Lock()
	defer env.mu.Unlock()
	n := 0
	for _, h := range env.hits {
		if strings.HasPrefix(h, method+" ") && strings.HasSuffix(h, suffix) {
			n++
		}
	}
	return n
}

func (env *testEnv) machine(t testing.TB) *Machine {
	t.Helper()
	info, err := env.b.Create(context.Background(), backend.MachineSpec{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := env.b.Machine(context.Background(), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*Machine)
}

func (env *testEnv) status(t testing.TB, id string) string {
	t.Helper()
	vm, err := env.c.GetVM(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return vm.Status
}

func mustRun(t testing.TB, m *Machine, shell string) string {
	t.Helper()
	res, err := m.Run(context.Background(), backend.Command{Shell: shell, Timeout: time.Minute})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%q: %+v, %v", shell, res, err)
	}
	return res.Stdout
}

// startSecretKeeper starts a process that holds a secret in memory only
// and writes it to /root/answer when /root/ask appears; it returns the
// secret.
func startSecretKeeper(t testing.TB, m *Machine) string {
	t.Helper()
	return strings.TrimSpace(mustRun(t, m, `nohup python3 -c '
import os, secrets, time
s = secrets.token_hex(8)
print(s, flush=True)
while True:
    if os.path.exists("/root/ask"):
        os.remove("/root/ask")
        open("/root/answer", "w").write(s)
    time.sleep(0.02)
' > /root/first 2>&1 &
while [ ! -s /root/first ]; do sleep 0.01; done; cat /root/first`))
}

// askSecret asks the keeper for its secret.
func askSecret(t testing.TB, m *Machine) string {
	t.Helper()
	return mustRun(t, m, `rm -f /root/answer; touch /root/ask; while [ ! -s /root/answer ]; do sleep 0.01; done; cat /root/answer`)
}

func TestIdlePausesAndTheNextCallResumes(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	m := env.machine(t)
	ctx := context.Background()
	mustRun(t, m, "echo kept > /root/f")
	secret := startSecretKeeper(t, m)

	snap, err := env.b.Idle(ctx, m.ID())
	if err != nil || snap != "" {
		t.Fatalf("Idle = %q, %v; want a pause (\"\")", snap, err)
	}
	if st := env.status(t, m.ID()); st != fastvmclient.StatusPaused {
		t.Fatalf("status after Idle: %s", st)
	}
	// The next call just works: files and the process's memory are there.
	if out := mustRun(t, m, "cat /root/f"); out != "kept\n" {
		t.Fatalf("file after the pause: %q", out)
	}
	if got := askSecret(t, m); got != secret {
		t.Fatalf("the process's secret after the pause: %q, want %q", got, secret)
	}
	if env.count("POST", "/resume") != 1 || env.count("POST", "/snapshots") != 0 {
		t.Fatalf("requests: %d resumes, %d snapshots; want one resume and no snapshot", env.count("POST", "/resume"), env.count("POST", "/snapshots"))
	}
	// Running ones are not resumed again.
	mustRun(t, m, "true")
	if env.count("POST", "/resume") != 1 {
		t.Fatal("a running VM was resumed")
	}
}

// Every operation on a machine resumes it first.
func TestEveryOperationResumes(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	m := env.machine(t)
	ctx := context.Background()
	mustRun(t, m, "mkdir -p /root/d && echo x > /root/d/a")
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	tw.WriteHeader(&tar.Header{Name: "in.txt", Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
	tw.Write([]byte("hi"))
	tw.Close()
	ops := map[string]func() error{
		"Run": func() error { _, err := m.Run(ctx, backend.Command{Argv: []string{"true"}}); return err },
		"Run streamed": func() error {
			_, err := m.Run(ctx, backend.Command{Argv: []string{"true"}, OnOutput: func(string, string) {}})
			return err
		},
		"WriteFile": func() error { _, err := m.WriteFile(ctx, "/root/w", strings.NewReader("data"), 0o644); return err },
		"ReadFile":  func() error { _, err := m.ReadFile(ctx, "/root/d/a", io.Discard); return err },
		"Stat":      func() error { _, err := m.Stat(ctx, "/root/d"); return err },
		"CopyIn":    func() error { return m.CopyIn(ctx, "/root/in", bytes.NewReader(tarball.Bytes())) },
		"CopyOut":   func() error { return m.CopyOut(ctx, "/root/d", io.Discard) },
		"Snapshot":  func() error { _, err := m.Snapshot(ctx, "s"); return err },
	}
	for name, op := range ops {
		if snap, err := env.b.Idle(ctx, m.ID()); err != nil || snap != "" {
			t.Fatalf("Idle: %q, %v", snap, err)
		}
		if err := op(); err != nil {
			t.Errorf("%s on a paused machine: %v", name, err)
		}
		if st := env.status(t, m.ID()); st != fastvmclient.StatusRunning {
			t.Errorf("%s left the machine %s", name, st)
		}
	}
	// Resumed before the call, never after a refusal.
	if n := env.conflictCount(); n != 0 {
		t.Errorf("%d calls were refused (409) on the paused machine", n)
	}
}

// A machine paused behind the backend's back (by another server, or its
// TTL): the call that finds it paused resumes it and runs again when it
// can; a backend that starts afresh learns it from its lookup.
func TestPausedBehindTheBackendsBack(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{})
	m := env.machine(t)
	ctx := context.Background()
	secret := startSecretKeeper(t, m)
	if _, err := env.c.PauseVM(ctx, m.ID()); err != nil {
		t.Fatal(err)
	}
	if got := askSecret(t, m); got != secret || env.conflictCount() != 1 {
		t.Fatalf("after a pause behind its back: %q after %d refusals (want 1, then the repeat)", got, env.conflictCount())
	}
	// An upload consumed its stream before it met the pause: it says to
	// repeat it, and the repeat works.
	if _, err := env.c.PauseVM(ctx, m.ID()); err != nil {
		t.Fatal(err)
	}
	_, err := m.WriteFile(ctx, "/root/up", strings.NewReader("payload"), 0o644)
	if err == nil || !strings.Contains(err.Error(), "repeat the call") {
		t.Fatalf("upload into a VM paused behind its back: %v", err)
	}
	if _, err := m.WriteFile(ctx, "/root/up", strings.NewReader("payload"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A new backend (a restart of the server) learns of the pause when it
	// looks the machine up, and resumes before the first call.
	if _, err := env.c.PauseVM(ctx, m.ID()); err != nil {
		t.Fatal(err)
	}
	fresh := New(env.c, Options{})
	fm, err := fresh.Machine(ctx, m.ID())
	if err != nil {
		t.Fatal(err)
	}
	execsBefore := env.count("POST", "/exec")
	conflicts := func() int { return env.count("POST", "/exec") - execsBefore }
	if got := askSecret(t, fm.(*Machine)); got != secret || conflicts() != 1 {
		t.Fatalf("after a restart: %q with %d execs (want 1: resumed before, no 409)", got, conflicts())
	}
}

func TestIdleFallsBackToSnapshotsWithoutPause(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{NoExtensions: true}, Options{})
	ctx := context.Background()
	a, b := env.machine(t), env.machine(t)
	snap, err := env.b.Idle(ctx, a.ID())
	if err != nil || snap == "" {
		t.Fatalf("Idle without pause: %q, %v; want a snapshot", snap, err)
	}
	if env.b.pauseSupport.Load() != -1 || env.count("POST", "/pause") != 1 {
		t.Fatalf("support %d after %d pauses", env.b.pauseSupport.Load(), env.count("POST", "/pause"))
	}
	// Learned once: the next idle machine is not asked to pause.
	if snap, err := env.b.Idle(ctx, b.ID()); err != nil || snap == "" || env.count("POST", "/pause") != 1 {
		t.Fatalf("second Idle: %q, %v after %d pauses", snap, err, env.count("POST", "/pause"))
	}
	// Explicitly pause on such a service: an error that says what to do.
	strict := New(env.c, Options{IdleAction: IdlePause})
	if _, err := strict.Idle(ctx, b.ID()); err == nil || !strings.Contains(err.Error(), "snapshot") {
		t.Fatalf("IdlePause without pause support: %v", err)
	}
	// An unknown VM is not found, not "no pause".
	fresh := New(env.c, Options{})
	if _, err := fresh.Idle(ctx, "00000000-0000-4000-8000-000000000000"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("Idle of an unknown VM: %v", err)
	}
	if fresh.pauseSupport.Load() != 0 {
		t.Fatal("a 404 for an unknown VM was taken for a service without pause")
	}
}

func TestIdleActionSnapshot(t *testing.T) {
	env := newTestEnv(t, fastvmemu.Options{}, Options{IdleAction: IdleSnapshot})
	m := env.machine(t)
	mustRun(t, m, "echo kept > /root/f")
	snap, err := env.b.Idle(context.Background(), m.ID())
	if err != nil || snap == "" || env.count("POST", "/pause") != 0 {
		t.Fatalf("Idle = %q, %v with %d pauses; want a snapshot and no pause", snap, err, env.count("POST", "/pause"))
	}
	if st := env.status(t, m.ID()); st != fastvmclient.StatusRunning {
		t.Fatalf("status after parking: %s (the caller deletes it)", st)
	}
}
