//go:build linux

package forevervm_test

// The client against the ForeverVM emulator over real HTTP and WebSocket on
// loopback, running real Python in sandboxes of the local engine.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/client/forevervm"
)

const printLoop = "for i in range(5):\n    print(i)"

func TestEmulatorMachines(t *testing.T) {
	e := startEmulator(t)
	ctx := testCtx(t, 60*time.Second)
	acct, err := e.c.Whoami(ctx)
	if err != nil || acct != testAccount {
		t.Fatalf("whoami = %q, %v", acct, err)
	}
	plain := e.machine(t, ctx)
	tag := fmt.Sprint("run-", time.Now().UnixNano())
	tagged, err := e.c.CreateMachine(ctx, forevervm.CreateMachineOptions{Tags: map[string]string{"test": tag, "env": "ci"}, MemoryMB: 512})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[A-Za-z0-9]{16}$`).MatchString(tagged) {
		t.Errorf("machine name %q is not 16 alphanumerics", tagged)
	}
	all, err := e.c.ListMachines(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Name != tagged || all[1].Name != plain {
		t.Fatalf("list = %+v; want %s then %s (newest first)", all, tagged, plain)
	}
	m := all[0]
	if m.CreatedAt.IsZero() || time.Since(m.CreatedAt) > time.Minute || m.ExpiresAt != nil || m.Tags["env"] != "ci" || m.HasPendingInstruction {
		t.Errorf("machine %+v", m)
	}
	// Tag filters are AND.
	for _, tc := range []struct {
		tags map[string]string
		want int
	}{
		{map[string]string{"test": tag}, 1},
		{map[string]string{"test": tag, "env": "ci"}, 1},
		{map[string]string{"test": tag, "env": "prod"}, 0},
		{map[string]string{"nope": "x"}, 0},
	} {
		got, err := e.c.ListMachines(ctx, tc.tags)
		if err != nil || len(got) != tc.want || tc.want == 1 && got[0].Name != tagged {
			t.Errorf("list %v = %+v, %v; want %d", tc.tags, got, err, tc.want)
		}
	}
	// The client lists with POST; the emulator also serves GET (the Python
	// SDK's form), which only a raw request can show.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v1/machine/list", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct{ Machines []forevervm.Machine }
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 || len(got.Machines) != 2 {
		t.Fatalf("GET list: %d %+v %v", resp.StatusCode, got, err)
	}
}

func TestEmulatorExecAndResults(t *testing.T) {
	e := startEmulator(t)
	ctx := testCtx(t, 120*time.Second)
	m := e.machine(t, ctx)

	if seq := e.submit(t, ctx, m, "1 + 1", forevervm.ExecOptions{}); seq != 0 {
		t.Errorf("first seq %d, want 0", seq)
	}
	r, err := e.c.ExecResult(ctx, m, 0)
	if err != nil || val(r) != "2" || r.Value == nil || r.IsError || r.Error != "" {
		t.Fatalf("1 + 1 = %s, %v", val(r), err)
	}
	seq := e.submit(t, ctx, m, "1 / 0", forevervm.ExecOptions{})
	if seq != 1 {
		t.Errorf("second seq %d, want 1", seq)
	}
	r, err = e.c.ExecResult(ctx, m, seq)
	if err != nil || !r.IsError || r.Value != nil || !strings.Contains(r.Error, "ZeroDivisionError") || !strings.Contains(r.Error, "division by zero") {
		t.Fatalf("1 / 0 = %+v, %v", r, err)
	}
	r, _ = e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "x = 5", forevervm.ExecOptions{}))
	if r.IsError || r.Value != nil {
		t.Fatalf("a statement gave %s", val(r))
	}
	r, _ = e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "print(123) or 567", forevervm.ExecOptions{}))
	if val(r) != "567" {
		t.Fatalf("print(123) or 567 = %s", val(r))
	}

	// The print loop through stream-result: chunks 0–4, then the result.
	seq = e.submit(t, ctx, m, printLoop, forevervm.ExecOptions{})
	want := "stdout:0:0 stdout:1:1 stdout:2:2 stdout:3:3 stdout:4:4 result:<none>"
	if got := streamed(t, e, m, seq); got != want {
		t.Fatalf("stream-result while it runs: %s\nwant %s", got, want)
	}
	// After the end, stream-result replays all the output.
	if got := streamed(t, e, m, seq); got != want {
		t.Fatalf("stream-result after the end: %s\nwant %s", got, want)
	}

	// Unknown seqs, unknown machines and bad tokens are typed errors.
	if _, err := e.c.ExecResult(ctx, m, 999); !forevervm.IsNotFound(err) {
		t.Errorf("unknown seq: %v", err)
	}
	if _, err := e.c.Exec(ctx, "NoSuchMachine000", "1", forevervm.ExecOptions{}); !forevervm.IsNotFound(err) {
		t.Errorf("unknown machine: %v", err)
	}
	for _, err := range e.c.StreamResult(ctx, m, 999) {
		if !forevervm.IsNotFound(err) {
			t.Errorf("stream of an unknown seq: %v", err)
		}
	}
	bad := forevervm.New("tok9.wrong-secret", forevervm.WithBaseURL(e.srv.URL))
	if _, err := bad.Whoami(ctx); !forevervm.IsUnauthorized(err) || strings.Contains(err.Error(), "wrong-secret") {
		t.Errorf("bad token: %v", err)
	}
}

// streamed renders the events of a stream-result.
func streamed(t *testing.T, e *emulated, m string, seq int64) string {
	t.Helper()
	var got []string
	for ev, err := range e.c.StreamResult(testCtx(t, 60*time.Second), m, seq) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.InstructionID != seq {
			t.Errorf("instruction_id %d, want %d", ev.InstructionID, seq)
		}
		if ev.Output != nil {
			got = append(got, fmt.Sprintf("%s:%d:%s", ev.Output.Stream, ev.Output.Seq, ev.Output.Data))
		} else {
			got = append(got, "result:"+val(ev.Result))
		}
	}
	return strings.Join(got, " ")
}

func TestEmulatorTimeoutKeepsState(t *testing.T) {
	e := startEmulator(t)
	ctx := testCtx(t, 120*time.Second)
	m := e.machine(t, ctx)
	r, err := e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "from time import sleep", forevervm.ExecOptions{}))
	if err != nil || r.IsError {
		t.Fatalf("import: %+v %v", r, err)
	}
	start := time.Now()
	r, err = e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "sleep(10)", forevervm.ExecOptions{Timeout: time.Second}))
	if err != nil || !r.IsError || !strings.Contains(r.Error, "Timed out") || r.Value != nil {
		t.Fatalf("sleep(10) with a 1 s timeout: %+v, %v", r, err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("the timeout took %v", d)
	}
	// Same machine, no re-import; this time through the REPL.
	repl := openREPL(t, ctx, e.c, m)
	var out []forevervm.OutputChunk
	r, err = repl.Exec(ctx, "sleep(1); print('done')", forevervm.ExecOptions{OnOutput: func(c forevervm.OutputChunk) { out = append(out, c) }})
	if err != nil || r.IsError || len(out) != 1 || out[0] != (forevervm.OutputChunk{Stream: "stdout", Data: "done", Seq: 0}) {
		t.Fatalf("after the timeout: %s, %+v, %v", val(r), out, err)
	}
}

func TestEmulatorBusyAndInterrupt(t *testing.T) {
	e := startEmulator(t)
	ctx := testCtx(t, 120*time.Second)
	m := e.machine(t, ctx)
	e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "import time\nstate = 'kept'", forevervm.ExecOptions{}))
	long := e.submit(t, ctx, m, "print('started')\ntime.sleep(60)", forevervm.ExecOptions{Timeout: 90 * time.Second})
	// Interrupt it once it runs. (Interrupting within a millisecond of the
	// start can kill the local engine's interpreter and lose the state: an
	// engine race, not the client's.)
	for ev, err := range e.c.StreamResult(ctx, m, long) {
		if err != nil || ev.Output == nil || ev.Output.Data != "started" {
			t.Fatalf("first event of the long instruction: %+v, %v", ev, err)
		}
		break
	}

	// Busy: the instruction is not accepted (null seq) ...
	resp, err := e.c.Exec(ctx, m, "1", forevervm.ExecOptions{})
	if err != nil || resp.InstructionSeq != nil || resp.Interrupted {
		t.Fatalf("exec while busy: %+v, %v; want a null seq", resp, err)
	}
	ms, _ := e.c.ListMachines(ctx, nil)
	if len(ms) != 1 || !ms[0].HasPendingInstruction {
		t.Errorf("busy machine listed as %+v", ms)
	}
	// ... unless it interrupts.
	start := time.Now()
	resp, err = e.c.Exec(ctx, m, "state", forevervm.ExecOptions{Interrupt: true})
	if err != nil || resp.InstructionSeq == nil || !resp.Interrupted || resp.Machine != m {
		t.Fatalf("interrupting exec: %+v, %v", resp, err)
	}
	r, err := e.c.ExecResult(ctx, m, long)
	if err != nil || !r.IsError || !strings.Contains(r.Error, "Interrupted") {
		t.Fatalf("interrupted instruction: %+v, %v", r, err)
	}
	r, err = e.c.ExecResult(ctx, m, *resp.InstructionSeq)
	if err != nil || val(r) != "'kept'" {
		t.Fatalf("after the interrupt: %s, %v", val(r), err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the interrupt took %v", d)
	}
}

func TestEmulatorREPL(t *testing.T) {
	e := startEmulator(t)
	ctx := testCtx(t, 120*time.Second)
	repl := openREPL(t, ctx, e.c, "") // "new": a machine created for the REPL
	m := repl.Machine()
	if ms, err := e.c.ListMachines(ctx, nil); err != nil || len(ms) != 1 || ms[0].Name != m {
		t.Fatalf("REPL machine %q; list %+v, %v", m, ms, err)
	}
	// The print loop yields chunks 0–4, then the result.
	var events []string
	r, err := repl.Exec(ctx, printLoop, forevervm.ExecOptions{OnOutput: func(c forevervm.OutputChunk) {
		events = append(events, fmt.Sprintf("%s:%d:%s", c.Stream, c.Seq, c.Data))
	}})
	if err != nil {
		t.Fatal(err)
	}
	events = append(events, "result:"+val(r))
	if got, want := strings.Join(events, " "), "stdout:0:0 stdout:1:1 stdout:2:2 stdout:3:3 stdout:4:4 result:<none>"; got != want {
		t.Fatalf("print loop: %s\nwant %s", got, want)
	}
	var stderr []forevervm.OutputChunk
	r, err = repl.Exec(ctx, "import sys\nprint('e', file=sys.stderr)\nx = 41\nx + 1", forevervm.ExecOptions{OnOutput: func(c forevervm.OutputChunk) { stderr = append(stderr, c) }})
	if err != nil || val(r) != "42" || r.Error != "" || len(stderr) != 1 || stderr[0].Stream != "stderr" || stderr[0].Seq != 0 {
		t.Fatalf("x + 1 = %s %+v, %v", val(r), stderr, err)
	}
	r, err = repl.Exec(ctx, "undefined_name", forevervm.ExecOptions{})
	if err != nil || !r.IsError || r.Value != nil || !strings.Contains(r.Error, "NameError") {
		t.Fatalf("NameError: %+v, %v", r, err)
	}
	r, err = repl.Exec(ctx, "import time; time.sleep(5)", forevervm.ExecOptions{Timeout: time.Second})
	if err != nil || !r.IsError || !strings.Contains(r.Error, "Timed out") {
		t.Fatalf("timeout over the REPL: %+v, %v", r, err)
	}
	// State is shared between the REPL and HTTP.
	r, err = e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "x * 2", forevervm.ExecOptions{}))
	if err != nil || val(r) != "82" {
		t.Fatalf("x * 2 over HTTP = %s, %v", val(r), err)
	}

	// Concurrent execs on one socket each get their own result.
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			var out []string
			r, err := repl.Exec(ctx, fmt.Sprintf("print(%d)\n%d * %d", i, i, i), forevervm.ExecOptions{OnOutput: func(c forevervm.OutputChunk) { out = append(out, c.Data) }})
			if err != nil || val(r) != fmt.Sprint(i*i) || len(out) != 1 || out[0] != fmt.Sprint(i) {
				t.Errorf("exec %d: %s %v, %v", i, val(r), out, err)
			}
		})
	}
	wg.Wait()
}

// TestEmulatorREPLSurvivesDrop: the server drops every REPL socket while an
// instruction runs; Exec still returns that instruction's result and all of
// its output once, and the REPL goes on working.
func TestEmulatorREPLSurvivesDrop(t *testing.T) {
	e := startEmulator(t)
	ctx := testCtx(t, 120*time.Second)
	m := e.machine(t, ctx)
	repl := openREPL(t, ctx, e.c, m)
	started := make(chan struct{})
	var startOnce sync.Once
	var mu sync.Mutex
	var out []forevervm.OutputChunk
	onOutput := func(c forevervm.OutputChunk) {
		mu.Lock()
		defer mu.Unlock()
		out = append(out, c)
		if c.Data == "before" {
			startOnce.Do(func() { close(started) })
		}
	}
	type outcome struct {
		r   *forevervm.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		r, err := repl.Exec(ctx, "import time\nprint('before')\ntime.sleep(2)\nprint('after')\n'finished'", forevervm.ExecOptions{OnOutput: onOutput})
		done <- outcome{r, err}
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("the instruction did not start")
	}
	if n := e.emu.DropREPLConnections(); n != 1 {
		t.Fatalf("dropped %d REPL connections, want 1", n)
	}
	var res outcome
	select {
	case res = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("Exec did not return after the drop")
	}
	if res.err != nil || val(res.r) != "'finished'" {
		t.Fatalf("after the drop: %s, %v", val(res.r), res.err)
	}
	mu.Lock()
	got := fmt.Sprint(out)
	mu.Unlock()
	if want := "[{stdout before 0} {stdout after 1}]"; got != want {
		t.Fatalf("output across the drop: %s, want %s", got, want)
	}
	// The REPL reconnected: the next instruction runs on the same machine.
	r, err := repl.Exec(ctx, "time.sleep(0); 1 + 1", forevervm.ExecOptions{})
	if err != nil || val(r) != "2" || repl.Machine() != m {
		t.Fatalf("next exec: %s, %v (machine %s)", val(r), err, repl.Machine())
	}
}

// TestEmulatorREPLCloseEndsEverything: after Close no goroutine of the REPL
// is left (counted with the server's, which end with the socket).
func TestEmulatorREPLCloseEndsEverything(t *testing.T) {
	e := startEmulator(t, forevervm.WithKeepalive(50*time.Millisecond))
	ctx := testCtx(t, 60*time.Second)
	m := e.machine(t, ctx)
	e.c.ExecResult(ctx, m, e.submit(t, ctx, m, "0", forevervm.ExecOptions{})) // start the sandbox first
	before := runtime.NumGoroutine()
	repl, err := e.c.REPL(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := repl.Exec(ctx, "1", forevervm.ExecOptions{}); err != nil || val(r) != "1" {
		t.Fatalf("exec: %s, %v", val(r), err)
	}
	time.Sleep(200 * time.Millisecond) // a few keepalive pings
	if err := repl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := repl.Exec(ctx, "1", forevervm.ExecOptions{}); !errors.Is(err, forevervm.ErrClosed) {
		t.Fatalf("exec after Close: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Close, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
