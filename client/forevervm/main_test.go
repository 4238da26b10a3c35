//go:build linux

package forevervm_test

import (
	"context"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/client/forevervm"
	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	local.RunHelperIfRequested()
	os.Exit(m.Run())
}

// testToken is shaped like a real token (id.secret); tests check that its
// secret never shows up in errors or formatted values.
const (
	testToken   = "tok1.s3cr3t-never-printed"
	testSecret  = "s3cr3t-never-printed"
	testAccount = "client-tests"
)

// emulated is a ForeverVM emulator on loopback, running Python for real in
// sandboxes of a local engine, and a client pointed at it.
type emulated struct {
	emu *forevervmemu.Server
	srv *httptest.Server
	c   *forevervm.Client
}

func startEmulator(t testing.TB, opts ...forevervm.Option) *emulated {
	t.Helper()
	eng, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	emu, err := forevervmemu.New(forevervmemu.Options{Engine: eng, Token: testToken, Account: testAccount, Logger: zerolog.Nop()})
	if err != nil {
		eng.Close()
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		emu.Close()
		eng.Close()
	})
	opts = append([]forevervm.Option{forevervm.WithBaseURL(srv.URL)}, opts...)
	return &emulated{emu: emu, srv: srv, c: forevervm.New(testToken, opts...)}
}

// testCtx is a context that ends with the test, or after d.
func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *emulated) machine(t testing.TB, ctx context.Context) string {
	t.Helper()
	name, err := e.c.CreateMachine(ctx, forevervm.CreateMachineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// openREPL opens a REPL that is closed when the test ends.
func openREPL(t testing.TB, ctx context.Context, c *forevervm.Client, machine string) *forevervm.REPL {
	t.Helper()
	r, err := c.REPL(ctx, machine)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// submit sends code over HTTP and returns its seq.
func (e *emulated) submit(t testing.TB, ctx context.Context, machine, code string, opts forevervm.ExecOptions) int64 {
	t.Helper()
	resp, err := e.c.Exec(ctx, machine, code, opts)
	if err != nil {
		t.Fatalf("exec %q: %v", code, err)
	}
	if resp.InstructionSeq == nil {
		t.Fatalf("exec %q: not accepted (null instruction_seq)", code)
	}
	return *resp.InstructionSeq
}

// val is a result's value for messages.
func val(r *forevervm.Result) string {
	switch {
	case r == nil:
		return "<no result>"
	case r.IsError:
		return "<error " + r.Error + ">"
	case r.Value == nil:
		return "<none>"
	}
	return *r.Value
}
