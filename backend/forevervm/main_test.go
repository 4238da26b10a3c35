//go:build linux

package forevervm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
)

// emulatorEnv asks the test binary to serve the emulator instead of running
// tests (see serveEmulator).
const emulatorEnv = "VMCP_FVM_TEST_EMULATOR"

func TestMain(m *testing.M) {
	local.RunHelperIfRequested() // the emulator runs machines on an engine of this binary
	if opts := os.Getenv(emulatorEnv); opts != "" {
		serveEmulator(opts)
		return
	}
	os.Exit(m.Run())
}

const testToken = "tok.forevervm-backend-tests"

// emulated is a ForeverVM emulator on loopback, running the machines in
// sandboxes of a local engine, and a backend pointed at it.
type emulated struct {
	b   *Backend
	c   *forevervmclient.Client
	url string
}

// emulatorOptions are what a test sets of the emulator.
type emulatorOptions struct {
	Limits       local.Limits
	MaxBodyBytes int64
}

func (o emulatorOptions) server(eng *local.Engine) (*forevervmemu.Server, error) {
	return forevervmemu.New(forevervmemu.Options{Engine: eng, Token: testToken, Limits: o.Limits, MaxBodyBytes: o.MaxBodyBytes, Logger: zerolog.Nop()})
}

// startEmulator runs the emulator in this process.
func startEmulator(t testing.TB, o emulatorOptions) *emulated {
	t.Helper()
	eng, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	emu, err := o.server(eng)
	if err != nil {
		eng.Close()
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	e := newEmulated(srv.URL)
	t.Cleanup(func() {
		e.b.Close()
		srv.CloseClientConnections()
		srv.Close()
		emu.Close()
		eng.Close()
	})
	return e
}

// startEmulatorProcess runs the emulator in a child process, so that what
// this process holds is only the backend's (the emulator keeps the code and
// output of the last 1000 instructions).
func startEmulatorProcess(t testing.TB, o emulatorOptions) *emulated {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := json.Marshal(struct {
		emulatorOptions
		StateDir string
	}{o, t.TempDir()})
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), emulatorEnv+"="+string(opts))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the emulator process did not start: %v", err)
	}
	e := newEmulated(strings.TrimSpace(line))
	t.Cleanup(func() {
		e.b.Close()
		stdin.Close() // asks it to stop
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return e
}

// serveEmulator is the child process of startEmulatorProcess: it prints the
// emulator's URL and serves until its stdin closes.
func serveEmulator(raw string) {
	var o struct {
		emulatorOptions
		StateDir string
	}
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	eng, err := local.New(local.Options{StateDir: o.StateDir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	emu, err := o.server(eng)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	srv := &http.Server{Handler: emu}
	go srv.Serve(ln)
	fmt.Printf("http://%s\n", ln.Addr())
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	emu.Close()
	eng.Close()
}

func newEmulated(url string) *emulated {
	c := forevervmclient.New(testToken, forevervmclient.WithBaseURL(url))
	return &emulated{b: New(c, Options{}), c: c, url: url}
}

// machine creates a machine of the backend.
func (e *emulated) machine(t testing.TB) *Machine {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	info, err := e.b.Create(ctx, backend.MachineSpec{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.b.Machine(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*Machine)
}

// testCtx ends with the test, or after d.
func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// python runs code and returns its value ("" for None), failing the test
// on an exception.
func python(t testing.TB, m *Machine, code string) string {
	t.Helper()
	res, err := m.RunPython(testCtx(t, time.Minute), code, backend.PythonOptions{})
	if err != nil {
		t.Fatalf("run %q: %v", code, err)
	}
	if res.Error != "" {
		t.Fatalf("run %q: %s", code, res.Error)
	}
	if res.Value == nil {
		return ""
	}
	return *res.Value
}

// userState records the user's globals and `_`; check says whether our
// operations left them as they were, and x = 41 still gives 42.
type userState struct{ names string }

const globalsCode = "sorted(k for k in globals() if k != '_' and not k.startswith('__'))"

func setUserState(t testing.TB, m *Machine) userState {
	t.Helper()
	python(t, m, "x = 41")
	u := userState{names: python(t, m, globalsCode)}
	python(t, m, "'sentinel'") // sets _
	return u
}

func (u userState) check(t testing.TB, m *Machine) {
	t.Helper()
	if got := python(t, m, "_"); got != "'sentinel'" {
		t.Errorf("_ is %s after the file and command operations; want 'sentinel'", got)
	}
	if got := python(t, m, globalsCode); got != u.names {
		t.Errorf("the user's globals are %s after the operations; want %s", got, u.names)
	}
	if got := python(t, m, "x + 1"); got != "42" {
		t.Errorf("x + 1 = %s after the operations; want 42", got)
	}
}
