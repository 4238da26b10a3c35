//go:build linux

package forevervm_test

import (
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/client/forevervm"
)

// BenchmarkREPLExec is 1+1 over one long-lived socket: what a backend that
// keeps a REPL per machine pays per call.
func BenchmarkREPLExec(b *testing.B) {
	e := startEmulator(b)
	ctx := testCtx(b, 10*time.Minute)
	repl := openREPL(b, ctx, e.c, e.machine(b, ctx))
	if _, err := repl.Exec(ctx, "0", forevervm.ExecOptions{}); err != nil { // start the sandbox
		b.Fatal(err)
	}
	for b.Loop() {
		r, err := repl.Exec(ctx, "1+1", forevervm.ExecOptions{})
		if err != nil || val(r) != "2" {
			b.Fatalf("1+1 = %s, %v", val(r), err)
		}
	}
}

// BenchmarkExecNewSocketPerCall dials, waits for connected, runs 1+1 and
// closes, per call: what the official forevervm-mcp server does.
func BenchmarkExecNewSocketPerCall(b *testing.B) {
	e := startEmulator(b)
	ctx := testCtx(b, 10*time.Minute)
	m := e.machine(b, ctx)
	e.c.ExecResult(ctx, m, e.submit(b, ctx, m, "0", forevervm.ExecOptions{}))
	for b.Loop() {
		repl, err := e.c.REPL(ctx, m)
		if err != nil {
			b.Fatal(err)
		}
		r, err := repl.Exec(ctx, "1+1", forevervm.ExecOptions{})
		if err != nil || val(r) != "2" {
			b.Fatalf("1+1 = %s, %v", val(r), err)
		}
		repl.Close()
	}
}
