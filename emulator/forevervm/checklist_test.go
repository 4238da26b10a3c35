//go:build linux

package forevervm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The tests are named after the items of the emulator checklist, spec §7.1.

// §7.1 #1: served at the host root; Bearer on HTTP and WS; ?_forevervm_jwt=
// on WS; tokens shaped id.secret.
func TestItem01_AuthAtHostRoot(t *testing.T) {
	e := newEmu(t, nil, Options{})
	e.do("GET", "/v1/whoami", "").ok(t)
	e.doWith("GET", "/v1/whoami", "", map[string]string{"authorization": "bearer " + testToken}).ok(t)

	for _, h := range []map[string]string{
		nil,
		{"Authorization": "Bearer wrong.token"},
		{"Authorization": testToken},                   // no scheme
		{"Authorization": "Basic " + testToken},        // wrong scheme
		{"Authorization": "Bearer " + testToken + "x"}, // a prefix of it is not it
	} {
		r := e.doWith("GET", "/v1/whoami", "", h)
		r.wantError(t, http.StatusUnauthorized, "Unauthorized")
		if strings.Contains(string(r.body)+fmt.Sprint(r.header), "s3cret") {
			t.Fatalf("an error reveals the token: %v %s", r.header, r.body)
		}
	}
	// The query token is for the WebSocket only (browsers cannot set headers).
	e.doWith("GET", "/v1/whoami?_forevervm_jwt="+testToken, "", nil).wantError(t, http.StatusUnauthorized, "Unauthorized")

	name := e.newMachine("")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, e.wsURL(name)+"?_forevervm_jwt="+testToken, nil)
	if err != nil {
		t.Fatalf("query-token WebSocket: %v", err)
	}
	r := &repl{t, c}
	t.Cleanup(func() { c.CloseNow() })
	if got := r.connected(); got != name {
		t.Fatalf("connected to %q, want %q", got, name)
	}
	_, resp, err := websocket.Dial(ctx, e.wsURL(name)+"?_forevervm_jwt=nope.nope", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad query token: err %v, resp %v; want 401", err, resp)
	}
	_, resp, err = websocket.Dial(ctx, e.wsURL(name), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: err %v, resp %v; want 401", err, resp)
	}

	if _, err := New(Options{Engine: e.engine, Token: "nodot"}); err == nil || strings.Contains(err.Error(), "nodot") {
		t.Fatalf("a token without a dot: err %v; want a refusal that does not quote it", err)
	}
}

// §7.1 #2.
func TestItem02_Whoami(t *testing.T) {
	e := newEmu(t, nil, Options{})
	m := e.do("GET", "/v1/whoami", "").ok(t)
	if string(m["account"]) != `"emulator"` {
		t.Fatalf("whoami %v, want account \"emulator\"", m)
	}
	e2 := newEmu(t, e.engine, Options{Account: "alice"})
	if got := e2.do("GET", "/v1/whoami", "").ok(t)["account"]; string(got) != `"alice"` {
		t.Fatalf("account %s, want \"alice\"", got)
	}
	e.do("POST", "/v1/whoami", "").wantError(t, http.StatusMethodNotAllowed, "MethodNotAllowed")
}

// §7.1 #3: every body old and new clients send.
func TestItem03_MachineNewBodies(t *testing.T) {
	e := newEmu(t, nil, Options{})
	seen := map[string]bool{}
	for _, body := range []string{"", "null", "{}", " \n", `{"tags":{"env":"prod"},"memory_mb":512}`, `{"tags":{},"future_field":[1]}`} {
		name := e.newMachine(body)
		if seen[name] {
			t.Fatalf("name %s given twice", name)
		}
		seen[name] = true
	}
	for _, bad := range []string{`{"tags":"x"}`, `{"memory_mb":-1}`, `[1]`, `{`} {
		e.do("POST", "/v1/machine/new", bad).wantError(t, http.StatusBadRequest, "BadRequest")
	}
	e.do("GET", "/v1/machine/new", "").wantError(t, http.StatusMethodNotAllowed, "MethodNotAllowed")

	// memory_mb is stored (never echoed) and enforced.
	name := e.newMachine(`{"memory_mb":300}`)
	for _, info := range e.engine.Machines() {
		if info.Tags[tagName] == name {
			if info.Tags[tagMemoryMB] != "300" || info.Limits.MemoryBytes != 300<<20 {
				t.Fatalf("memory_mb 300 gave tags %v, limits %+v", info.Tags, info.Limits)
			}
		}
	}
	for _, m := range listOf(t, e.do("GET", "/v1/machine/list", "")) {
		if _, has := m["memory_mb"]; has {
			t.Fatalf("the list echoes memory_mb: %v", m)
		}
	}
}

// listOf decodes a list response into its machines.
func listOf(t testing.TB, r reply) []map[string]json.RawMessage {
	t.Helper()
	var ms []map[string]json.RawMessage
	if err := json.Unmarshal(r.ok(t)["machines"], &ms); err != nil {
		t.Fatal(err)
	}
	return ms
}

func names(t testing.TB, ms []map[string]json.RawMessage) []string {
	var out []string
	for _, m := range ms {
		out = append(out, str(t, m["name"]))
	}
	return out
}

// §7.1 #4: POST and GET list, AND tag filter, the machine fields, newest first.
func TestItem04_ListGETAndPOST(t *testing.T) {
	e := newEmu(t, nil, Options{})
	a := e.newMachine(`{"tags":{"env":"prod","team":"x"}}`)
	b := e.newMachine(`{"tags":{"env":"prod"}}`)
	c := e.newMachine("")

	for _, r := range []reply{e.do("GET", "/v1/machine/list", ""), e.do("POST", "/v1/machine/list", ""), e.do("POST", "/v1/machine/list", "{}"), e.do("POST", "/v1/machine/list", "null")} {
		if got := names(t, listOf(t, r)); fmt.Sprint(got) != fmt.Sprint([]string{c, b, a}) {
			t.Fatalf("list %v, want newest first %v", got, []string{c, b, a})
		}
	}
	filter := func(tags string) []string {
		return names(t, listOf(t, e.do("POST", "/v1/machine/list", `{"tags":`+tags+`}`)))
	}
	if got := filter(`{"env":"prod"}`); fmt.Sprint(got) != fmt.Sprint([]string{b, a}) {
		t.Fatalf("env=prod gave %v, want %v", got, []string{b, a})
	}
	if got := filter(`{"env":"prod","team":"x"}`); fmt.Sprint(got) != fmt.Sprint([]string{a}) {
		t.Fatalf("env=prod AND team=x gave %v, want only %s", got, a)
	}
	if got := filter(`{"env":"prod","team":"y"}`); len(got) != 0 {
		t.Fatalf("env=prod AND team=y gave %v, want none", got)
	}

	createdAt := regexp.MustCompile(`^"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"$`)
	for _, m := range listOf(t, e.do("GET", "/v1/machine/list", "")) {
		for _, k := range []string{"name", "created_at", "running", "has_pending_instruction", "expires_at", "tags"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("machine %v lacks %q", m, k)
			}
		}
		if !createdAt.Match(m["created_at"]) || string(m["expires_at"]) != "null" {
			t.Fatalf("machine %v: created_at must be RFC 3339 UTC with microseconds, expires_at null", m)
		}
		if string(m["running"]) != "false" || string(m["has_pending_instruction"]) != "false" {
			t.Fatalf("an unused machine %v should be neither running nor busy", m)
		}
		if str(t, m["name"]) == c && string(m["tags"]) != "{}" {
			t.Fatalf("untagged machine has tags %s, want {}", m["tags"])
		}
		if str(t, m["name"]) == a && string(m["tags"]) != `{"env":"prod","team":"x"}` {
			t.Fatalf("tags %s", m["tags"])
		}
	}

	// running: true once the interpreter is live; has_pending_instruction
	// while an instruction runs.
	seq := e.exec(c, "import time; time.sleep(3)", 30)
	var busy bool
	for _, m := range listOf(t, e.do("POST", "/v1/machine/list", "")) {
		if str(t, m["name"]) == c {
			busy = string(m["has_pending_instruction"]) == "true"
		}
	}
	if !busy {
		t.Fatal("has_pending_instruction is false while an instruction runs")
	}
	e.result(c, seq)
	for _, m := range listOf(t, e.do("POST", "/v1/machine/list", "")) {
		if str(t, m["name"]) == c && (string(m["running"]) != "true" || string(m["has_pending_instruction"]) != "false") {
			t.Fatalf("after an instruction %v: want running true, has_pending_instruction false", m)
		}
	}
	e.do("POST", "/v1/machine/list", `{"tags":[1]}`).wantError(t, http.StatusBadRequest, "BadRequest")
}

// §7.1 #5: exec's request and response; a busy machine refuses without interrupt.
func TestItem05_Exec(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	r := e.do("POST", "/v1/machine/"+name+"/exec", `{"instruction":{"code":"x = 41"},"interrupt":false,"max_runtime_ms":5}`)
	m := r.ok(t)
	if string(m["instruction_seq"]) != "0" || string(m["machine"]) != `"`+name+`"` || string(m["interrupted"]) != "false" {
		t.Fatalf("first exec %s, want seq 0, machine %s, interrupted false", r.body, name)
	}
	wantValue(t, e.result(name, 0), "null")
	// timeout_seconds defaults to 15 when missing: this 1 s instruction completes.
	seq := e.exec(name, "import time; time.sleep(1); x + 1", 15)
	if seq != 1 {
		t.Fatalf("second seq %d, want 1", seq)
	}
	// The machine is busy: without interrupt the instruction is not accepted.
	r = e.do("POST", "/v1/machine/"+name+"/exec", `{"instruction":{"code":"1"}}`)
	if m := r.ok(t); string(m["instruction_seq"]) != "null" || string(m["interrupted"]) != "false" {
		t.Fatalf("exec on a busy machine %s, want instruction_seq null", r.body)
	}
	wantValue(t, e.result(name, seq), `"42"`)
	if seq := e.exec(name, "x", 15); seq != 2 {
		t.Fatalf("the refused exec took a seq: next is %d, want 2", seq)
	}

	for _, bad := range []string{"", "{}", `{"instruction":{}}`, `{"instruction":{"code":1}}`,
		`{"instruction":{"code":"1","timeout_seconds":0}}`, `{"instruction":{"code":"1","timeout_seconds":-5}}`, `{"instruction":{"code":"1","timeout_seconds":1.5}}`} {
		e.do("POST", "/v1/machine/"+name+"/exec", bad).wantError(t, http.StatusBadRequest, "BadRequest")
	}
	e.do("POST", "/v1/machine/AAAAAAAAAAAAAAAA/exec", `{"instruction":{"code":"1"}}`).wantError(t, http.StatusNotFound, "MachineNotFound")

	// Spec §8 #14: /v1/machine/new/exec creates a machine.
	m = e.do("POST", "/v1/machine/new/exec", `{"instruction":{"code":"6*7"}}`).ok(t)
	fresh := str(t, m["machine"])
	if !nameRE.MatchString(fresh) || fresh == name || string(m["instruction_seq"]) != "0" {
		t.Fatalf("new/exec answered %v", m)
	}
	wantValue(t, e.result(fresh, 0), `"42"`)
}

// Spec §8 #11: timeouts above the maximum are clamped to it.
func TestTimeoutClamp(t *testing.T) {
	e := newEmu(t, nil, Options{MaxTimeoutSeconds: 1})
	name := e.newMachine("")
	seq := e.exec(name, "import time; time.sleep(20)", 100000)
	start := time.Now()
	if got := wantErrorResult(t, e.result(name, seq)); got != "Timed out" {
		t.Fatalf("error %q, want Timed out", got)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("a 100000 s timeout clamped to 1 s took %v", d)
	}
}

// §7.1 #6: /result blocks until the instruction ends.
func TestItem06_ResultLongPollWaits(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	e.run(name, "import time") // the sandbox is up
	start := time.Now()
	seq := e.exec(name, "time.sleep(2); 'done'", 30)
	wantValue(t, e.result(name, seq), `"'done'"`)
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Fatalf("the long poll returned after %v, before the 2 s instruction ended", d)
	}
	// Finished results stay available.
	wantValue(t, e.result(name, seq), `"'done'"`)
}

// openStream starts a stream-result request; its body closes at cleanup.
func openStream(t testing.TB, e *emu, name string, seq int64) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/machine/"+name+"/exec/"+itoa(seq)+"/stream-result", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// readNDJSON reads a stream-result body line by line, checking that each
// line ends in \n and holds an output or result message.
func readNDJSON(t testing.TB, e *emu, name string, seq int64) ([]chunk, map[string]json.RawMessage, []string) {
	t.Helper()
	resp := openStream(t, e, name, seq)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("stream-result: status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	br := bufio.NewReader(resp.Body)
	var lines []string
	next := func() msg {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream line %q: %v (every line must end in \\n)", line, err)
		}
		lines = append(lines, line)
		var m msg
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q is not JSON", line)
		}
		if m.typ() != "output" && m.typ() != "result" {
			t.Fatalf("line %q: only output and result may appear", line)
		}
		return m
	}
	chunks, result := collectFrames(t, seq, next)
	if rest, _ := br.ReadString(0); rest != "" {
		t.Fatalf("data after the result: %q", rest)
	}
	return chunks, result, lines
}

// §7.1 #7: stream-result live, and replayed after completion.
func TestItem07_StreamResult(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	seq := e.exec(name, "import sys, time\nfor i in range(3):\n    print(i)\n    time.sleep(0.5)\nprint('warn', file=sys.stderr)\n'done'", 30)
	live, result, liveLines := readNDJSON(t, e, name, seq)
	if len(live) != 4 || live[3] != (chunk{"stderr", "warn", 3}) {
		t.Fatalf("live chunks %+v", live)
	}
	wantChunks(t, live[:3], "stdout", "0", "1", "2")
	wantValue(t, result, `"'done'"`)
	// After completion: the same lines, replayed.
	_, _, again := readNDJSON(t, e, name, seq)
	if fmt.Sprint(again) != fmt.Sprint(liveLines) {
		t.Fatalf("replay %q differs from the live stream %q", again, liveLines)
	}
	e.do("GET", "/v1/machine/"+name+"/exec/7/stream-result", "").wantError(t, http.StatusNotFound, "InstructionNotFound")
}

// Live: the first line arrives while the instruction still runs.
func TestStreamResultFlushesEachLine(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	seq := e.exec(name, "import time\nprint('first', flush=True)\ntime.sleep(4)\nprint('second')", 30)
	line, err := bufio.NewReader(openStream(t, e, name, seq).Body).ReadString('\n')
	if err != nil || !strings.Contains(line, `"data":"first"`) {
		t.Fatalf("first line %q, %v", line, err)
	}
	// The instruction still runs: the line was flushed, not held to the end.
	if m := e.do("POST", "/v1/machine/"+name+"/exec", `{"instruction":{"code":"1"}}`).ok(t); string(m["instruction_seq"]) != "null" {
		t.Fatal("the instruction had ended before its first line arrived")
	}
}

// §7.1 #8 and #10 over the WebSocket: connected first; exec_received,
// one output chunk per line (seq from 0 per instruction), then result.
func TestItem08_WebSocketREPL(t *testing.T) {
	e := newEmu(t, nil, Options{})
	r, name := e.replOnNew()
	if !nameRE.MatchString(name) {
		t.Fatalf("connected to %q", name)
	}
	r.exec("for i in range(5): print(i)", 0)
	seq, chunks, result := r.instructionFrames(0)
	if seq != 0 {
		t.Fatalf("first seq %d", seq)
	}
	wantChunks(t, chunks, "stdout", "0", "1", "2", "3", "4")
	wantValue(t, result, "null")

	r.exec("import time\ntime.sleep(1); print('done')\n'done'", 7)
	seq, chunks, result = r.instructionFrames(7)
	if seq != 1 {
		t.Fatalf("second seq %d", seq)
	}
	wantChunks(t, chunks, "stdout", "done") // seq restarts at 0
	wantValue(t, result, `"'done'"`)

	// HTTP shares the counter and the globals.
	if seq := e.exec(name, "time", 30); seq != 2 {
		t.Fatalf("HTTP seq after two WebSocket instructions: %d, want 2", seq)
	}
	// A second connection to the machine by name.
	r2 := e.dial(name)
	if got := r2.connected(); got != name {
		t.Fatalf("connected %q, want %q", got, name)
	}
	r2.exec("print(time.__name__)", 0)
	if seq, chunks, _ := r2.instructionFrames(0); seq != 3 || len(chunks) != 1 || chunks[0].Data != "time" {
		t.Fatalf("second connection: seq %d, chunks %+v", seq, chunks)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, e.wsURL("AAAAAAAAAAAAAAAA"), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + testToken}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown machine: %v %v, want 404", err, resp)
	}
}

// §7.1 #8: bad messages get error frames (and the connection stays usable).
func TestItem08_WebSocketErrors(t *testing.T) {
	e := newEmu(t, nil, Options{})
	r := e.dial("new")
	r.connected()
	for _, bad := range []string{"not json", `{"type":"ping"}`, `{"type":"exec","request_id":1}`,
		`{"type":"exec","instruction":{"code":"1"}}`, `{"type":"exec","instruction":{"code":"1","timeout_seconds":0},"request_id":2}`} {
		r.send(bad)
		if m := r.expect("error"); string(m["code"]) != `"BadRequest"` || string(m["id"]) != "null" || len(m) != 3 {
			t.Fatalf("%s gave %v, want {type:error, code:BadRequest, id:null}", bad, m)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.c.Write(ctx, websocket.MessageBinary, []byte(`{"type":"exec"}`)); err != nil {
		t.Fatal(err)
	}
	r.expect("error")
	r.exec("1+1", 3)
	if _, _, result := r.instructionFrames(3); string(result["value"]) != `"2"` {
		t.Fatalf("after errors: %v", result)
	}
}

// Spec §8 #5: a WebSocket exec while another runs is queued (FIFO); two
// connections on one machine each see only their own instructions.
func TestWebSocketQueueAndIsolation(t *testing.T) {
	e := newEmu(t, nil, Options{})
	a, name := e.replOnNew()
	b := e.dial(name)
	b.connected()

	a0 := a.execAcked("import time; time.sleep(1); print('a0')", 0)
	a1 := a.execAcked("print('a1')", 1) // acknowledged while a0 still runs
	b.exec("print('b0')", 0)
	bseq, bchunks, _ := b.instructionFrames(0)
	if string(a0["seq"]) != "0" || string(a1["seq"]) != "1" || bseq != 2 {
		t.Fatalf("seqs %s %s %d, want 0 1 2", a0["seq"], a1["seq"], bseq)
	}
	wantChunks(t, bchunks, "stdout", "b0")
	c0, _ := collectFrames(t, 0, a.recv)
	c1, _ := collectFrames(t, 1, a.recv)
	wantChunks(t, c0, "stdout", "a0")
	wantChunks(t, c1, "stdout", "a1")

	// Nothing of a's instructions reached b: its next frames are its own.
	b.exec("2", 9)
	if seq, chunks, result := b.instructionFrames(9); seq != 3 || len(chunks) != 0 || string(result["value"]) != `"2"` {
		t.Fatalf("b got seq %d chunks %v result %v", seq, chunks, result)
	}
}

// §7.1 #9: raw JSON keys of value and error results; None is null; a
// matplotlib figure gives data.png.
func TestItem09_ResultKeys(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	v := e.run(name, "print(123) or 567")
	wantValue(t, v, `"567"`)
	if string(v["data"]) != "null" || len(v) != 3 {
		t.Fatalf("value result %v, want exactly value, data null, runtime_ms", v)
	}
	wantValue(t, e.run(name, "'done'"), `"'done'"`)
	wantValue(t, e.run(name, "None"), "null")
	wantValue(t, e.run(name, "y = 1"), "null")

	er := e.run(name, "1 / 0")
	text := wantErrorResult(t, er)
	if len(er) != 2 || !strings.Contains(text, "Traceback") || !strings.HasSuffix(text, "ZeroDivisionError: division by zero") {
		t.Fatalf("error result %v, want {error, runtime_ms} with a traceback ending in the exception", er)
	}
	if !strings.HasSuffix(wantErrorResult(t, e.run(name, "def f(:\n  pass")), "SyntaxError: invalid syntax") {
		t.Fatal("a syntax error should end with SyntaxError: invalid syntax")
	}

	png := e.run(name, "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
	wantValue(t, png, "null")
	data := keys(t, png["data"])
	if len(data) != 1 || !strings.HasPrefix(str(t, data["png"]), "iVBORw0KGgo") {
		t.Fatalf("data %.100s, want only png, a base64 PNG", png["data"])
	}
}

// §7.1 #9: a timeout says exactly "Timed out" and keeps the state.
func TestItem09_TimeoutKeepsState(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	wantValue(t, e.run(name, "from time import sleep\nkept = 'yes'"), "null")
	seq := e.exec(name, "sleep(10)", 1)
	if got := wantErrorResult(t, e.result(name, seq)); got != "Timed out" {
		t.Fatalf("error %q, want exactly Timed out", got)
	}
	// The Python SDK's test: no re-import after the timeout.
	seq = e.exec(name, "sleep(1); print('done')\nkept", 15)
	wantValue(t, e.result(name, seq), `"'yes'"`)
	chunks, _, _ := readNDJSON(t, e, name, seq)
	wantChunks(t, chunks, "stdout", "done")
}

// §7.1 #10: one chunk per line, newline stripped, seq from 0 per
// instruction, stderr chunks, a partial line flushed at the end (spec §8 #9),
// no traceback chunks.
func TestItem10_OutputChunks(t *testing.T) {
	e := newEmu(t, nil, Options{})
	r := e.dial("new")
	r.connected()
	r.exec("for i in range(5):\n    print(i)", 0)
	_, chunks, result := r.instructionFrames(0)
	wantChunks(t, chunks, "stdout", "0", "1", "2", "3", "4")
	wantValue(t, result, "null")

	r.exec("import sys\nprint('a\\nb')\nsys.stderr.write('oops\\n')\nprint('tail', end='')\nraise ValueError('bad')", 1)
	_, chunks, result = r.instructionFrames(1)
	want := []chunk{{"stdout", "a", 0}, {"stdout", "b", 1}, {"stderr", "oops", 2}, {"stdout", "tail", 3}}
	if fmt.Sprint(chunks) != fmt.Sprint(want) {
		t.Fatalf("chunks %+v, want %+v (and no traceback chunk)", chunks, want)
	}
	if !strings.HasSuffix(wantErrorResult(t, result), "ValueError: bad") {
		t.Fatalf("result %v", result)
	}
}

// §7.1 #11: error bodies are exactly {"code","id":null} with a 4xx status.
func TestItem11_ErrorShapes(t *testing.T) {
	e := newEmu(t, nil, Options{MaxBodyBytes: 1024})
	name := e.newMachine("")
	e.do("GET", "/v1/machine/AAAAAAAAAAAAAAAA/exec/0/result", "").wantError(t, http.StatusNotFound, "MachineNotFound")
	e.do("GET", "/v1/machine/"+name+"/exec/0/result", "").wantError(t, http.StatusNotFound, "InstructionNotFound")
	e.do("GET", "/v1/machine/"+name+"/exec/zero/result", "").wantError(t, http.StatusBadRequest, "BadRequest")
	e.do("GET", "/v1/nothing", "").wantError(t, http.StatusNotFound, "NotFound")
	e.do("GET", "/whoami", "").wantError(t, http.StatusNotFound, "NotFound")
	e.do("DELETE", "/v1/machine/list", "").wantError(t, http.StatusMethodNotAllowed, "MethodNotAllowed")
	e.do("GET", "/v1/machine/new/repl", "").wantError(t, http.StatusBadRequest, "BadRequest")
	if n := len(listOf(t, e.do("GET", "/v1/machine/list", ""))); n != 1 {
		t.Fatalf("a plain GET of new/repl created a machine: %d machines", n)
	}
	big := `{"instruction":{"code":"` + strings.Repeat("x", 2000) + `"}}`
	r := e.do("POST", "/v1/machine/"+name+"/exec", big)
	r.wantError(t, http.StatusRequestEntityTooLarge, "PayloadTooLarge")
	if !strings.Contains(r.header.Get(detailHeader), "MaxBodyBytes") {
		t.Fatalf("the 413 does not say which limit: %q", r.header.Get(detailHeader))
	}
	if r := e.do("POST", "/v1/machine/"+name+"/exec", `{"instruction":{"code":"1","timeout_seconds":0}}`); !strings.Contains(r.header.Get(detailHeader), "timeout_seconds") {
		t.Fatalf("a bad timeout does not say what is wrong: %q", r.header.Get(detailHeader))
	}
}

// §7.1 #12: double slashes (no redirect), no Content-Type, no body.
func TestItem12_Tolerance(t *testing.T) {
	e := newEmu(t, nil, Options{})
	auth := map[string]string{"Authorization": "Bearer " + testToken}
	m := e.doWith("POST", "//v1//machine/new/", "", auth).ok(t) // no body, no Content-Type
	name := str(t, m["machine_name"])
	e.doWith("GET", "//v1/whoami", "", auth).ok(t)
	r := e.doWith("POST", "//v1/machine/"+name+"/exec", `{"instruction":{"code":"1+1"}}`, map[string]string{"Authorization": "Bearer " + testToken, "Content-Type": "text/plain"})
	if string(r.ok(t)["instruction_seq"]) != "0" {
		t.Fatalf("exec via //v1: %s", r.body)
	}
	wantValue(t, keys(t, e.doWith("GET", "//v1/machine/"+name+"/exec/0/result", "", auth).ok(t)["result"]), `"2"`)
	if got := names(t, listOf(t, e.doWith("POST", "//v1/machine/list", "", auth))); len(got) != 1 {
		t.Fatalf("list via //v1: %v", got)
	}
	// Host without a port, over a raw connection.
	resp := rawHTTP(t, e, "GET /v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nauthorization: Bearer "+testToken+"\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(resp, "HTTP/1.1 200") || !strings.Contains(resp, `{"account":"emulator"}`) {
		t.Fatalf("Host without port: %q", resp)
	}
}

// Interrupt: interrupt:true stops the running instruction, whose result is
// "Interrupted" (spec §8 #6); the state is kept; queued ones are interrupted too.
func TestInterrupt(t *testing.T) {
	e := newEmu(t, nil, Options{})
	r, name := e.replOnNew()
	r.execAcked("import time\nkept = 1\nprint('started', flush=True)\ntime.sleep(60)", 0)
	r.execAcked("print('never')", 1) // queued behind it
	if m := r.expect("output"); !strings.Contains(string(m["chunk"]), "started") {
		t.Fatalf("first output %v", m)
	}
	start := time.Now()
	m := e.do("POST", "/v1/machine/"+name+"/exec", `{"instruction":{"code":"kept + 1"},"interrupt":true}`).ok(t)
	if string(m["interrupted"]) != "true" || string(m["instruction_seq"]) != "2" {
		t.Fatalf("interrupting exec answered %v, want interrupted true, seq 2", m)
	}
	_, res := collectFrames(t, 0, r.recv)
	if got := wantErrorResult(t, res); got != "Interrupted" {
		t.Fatalf("interrupted result %q, want Interrupted", got)
	}
	chunks, res := collectFrames(t, 1, r.recv)
	if got := wantErrorResult(t, res); got != "Interrupted" || len(chunks) != 0 {
		t.Fatalf("queued instruction: %q with chunks %v, want Interrupted and no output", got, chunks)
	}
	wantValue(t, e.result(name, 2), `"2"`)
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the interrupt took %v", d)
	}
	// interrupt on an idle machine interrupts nothing.
	if m := e.do("POST", "/v1/machine/"+name+"/exec", `{"instruction":{"code":"kept"},"interrupt":true}`).ok(t); string(m["interrupted"]) != "false" {
		t.Fatalf("interrupt on an idle machine: %v", m)
	}
}

// Unknown seqs are 404; only the last 1000 results are kept (spec §8 #7).
func TestResultRetention(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 1001 instructions")
	}
	e := newEmu(t, nil, Options{})
	r, name := e.replOnNew()
	const n = resultRetention + 1
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < n; i++ {
			r.exec(fmt.Sprint(i), i)
		}
	}()
	for i := 0; i < n; i++ {
		for {
			if m := r.recv(); m.typ() == "result" {
				break
			}
		}
	}
	<-done
	e.do("GET", "/v1/machine/"+name+"/exec/0/result", "").wantError(t, http.StatusNotFound, "InstructionNotFound")
	wantValue(t, e.result(name, 1), `"1"`)
	wantValue(t, e.result(name, n-1), `"1000"`)
	e.do("GET", "/v1/machine/"+name+"/exec/"+itoa(n)+"/result", "").wantError(t, http.StatusNotFound, "InstructionNotFound")
}

// POST /internal/signup, without auth (spec §2.9, §8 #15).
func TestSignup(t *testing.T) {
	e := newEmu(t, nil, Options{})
	signup := func(body string) reply {
		return e.doWith("POST", "/internal/signup", body, map[string]string{"x-forevervm-runner": "cargo"})
	}
	if r := signup(`{"email":"a@example.com","account_name":"alice_1"}`); r.status != 200 || string(r.body) != "{}" {
		t.Fatalf("signup: %d %s, want 200 {}", r.status, r.body)
	}
	signup(`{"email":"b@example.com","account_name":"ALICE_1"}`).wantError(t, http.StatusConflict, "AccountNameAlreadyExists")
	signup(`{"email":"b@example.com","account_name":"emulator"}`).wantError(t, http.StatusConflict, "AccountNameAlreadyExists")
	signup(`{"email":"A@example.com","account_name":"bob"}`).wantError(t, http.StatusConflict, "EmailAlreadyExists")
	for _, bad := range []string{"", `{"email":"x","account_name":"bob"}`, `{"email":"b@example.com","account_name":"ab"}`, `{"email":"b@example.com","account_name":"bad name"}`} {
		signup(bad).wantError(t, http.StatusBadRequest, "BadRequest")
	}
	e.doWith("GET", "/internal/signup", "", nil).wantError(t, http.StatusMethodNotAllowed, "MethodNotAllowed")
}

// Machines, their tags and their files survive a restart of the emulator on
// the same state directory. The interpreter's memory does not: the real
// service preserves it (memory snapshots), the local engine cannot.
func TestRestartKeepsMachines(t *testing.T) {
	dir := t.TempDir()
	engine := newEngine(t, dir)
	e := newEmu(t, engine, Options{})
	name := e.newMachine(`{"tags":{"env":"prod"}}`)
	other := e.newMachine("")
	wantValue(t, e.run(name, "open('kept.py', 'w').write('ANSWER = 42\\n')\nx = 1"), "null")
	before := listOf(t, e.do("GET", "/v1/machine/list", ""))
	e.srv.Close()
	e.ts.Close()
	engine.Close()

	e2 := newEmu(t, newEngine(t, dir), Options{})
	after := listOf(t, e2.do("GET", "/v1/machine/list", ""))
	if fmt.Sprint(names(t, after)) != fmt.Sprint([]string{other, name}) {
		t.Fatalf("after restart %v, want %v", names(t, after), []string{other, name})
	}
	for i := range before {
		for _, k := range []string{"name", "created_at", "tags"} {
			if string(before[i][k]) != string(after[i][k]) {
				t.Fatalf("%s changed across the restart: %s → %s", k, before[i][k], after[i][k])
			}
		}
	}
	wantValue(t, e2.run(name, "import kept\nkept.ANSWER"), `"42"`)
	// The engine saved the interpreter's variables as it closed: the
	// machine's memory lives on, as ForeverVM's does.
	wantValue(t, e2.run(name, "x"), `"1"`)
	// Only machines the emulator created are listed.
	if _, err := e2.engine.Create(context.Background(), localSpecWithTags(map[string]string{"other": "tool"})); err != nil {
		t.Fatal(err)
	}
	e3 := newEmu(t, e2.engine, Options{})
	if got := names(t, listOf(t, e3.do("GET", "/v1/machine/list", ""))); len(got) != 2 {
		t.Fatalf("a machine the emulator did not create is listed: %v", got)
	}
}

// DropREPLConnections closes sockets abruptly; the instructions keep running.
func TestDropREPLConnections(t *testing.T) {
	e := newEmu(t, nil, Options{})
	r, name := e.replOnNew()
	r.execAcked("import time; time.sleep(2); 'finished'", 0)
	if n := e.srv.DropREPLConnections(); n != 1 {
		t.Fatalf("dropped %d connections, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := r.c.Read(ctx)
	if err == nil || websocket.CloseStatus(err) != -1 {
		t.Fatalf("after a drop, read gave %v; want a connection error without a close frame", err)
	}
	wantValue(t, e.result(name, 0), `"'finished'"`)
	// Reconnecting works, and sees none of the old instruction's frames
	// (spec §8 #13: no re-delivery).
	r2 := e.dial(name)
	r2.connected()
	r2.exec("1", 0)
	if seq, _, _ := r2.instructionFrames(0); seq != 1 {
		t.Fatalf("seq after reconnect %d, want 1", seq)
	}
	if n := e.srv.DropREPLConnections(); n != 1 {
		t.Fatalf("dropped %d, want 1 (the first is gone)", n)
	}
}

// Close ends long polls and WebSockets and returns.
func TestCloseEndsLongPollsAndSockets(t *testing.T) {
	e := newEmu(t, nil, Options{})
	name := e.newMachine("")
	seq := e.exec(name, "import time; time.sleep(60)", 120)
	r := e.dial(name)
	r.connected()
	var wg sync.WaitGroup
	wg.Add(1)
	var poll reply
	go func() {
		defer wg.Done()
		poll = e.do("GET", "/v1/machine/"+name+"/exec/"+itoa(seq)+"/result", "")
	}()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("Close took %v", d)
	}
	poll.wantError(t, http.StatusServiceUnavailable, "Unavailable")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := r.c.Read(ctx); err == nil {
		t.Fatal("the WebSocket is still open after Close")
	}
	e.do("GET", "/v1/whoami", "").wantError(t, http.StatusServiceUnavailable, "Unavailable")
	// Nothing of the emulator runs after Close (the HTTP server may take a
	// moment to finish the handlers that just answered).
	deadline := time.Now().Add(10 * time.Second)
	for g := emulatorGoroutines(); g != ""; g = emulatorGoroutines() {
		if time.Now().After(deadline) {
			t.Fatalf("goroutines left after Close:\n%s", g)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// emulatorGoroutines returns the stacks of goroutines running emulator code.
func emulatorGoroutines() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range []string{"forevervm.(*machine)", "forevervm.(*replConn)", "forevervm.(*Server)", "forevervm.(*instruction)"} {
			if strings.Contains(g, f) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// Options.MaxOutputBytes and MaxMachines bound what clients can make the
// emulator hold.
func TestLimits(t *testing.T) {
	e := newEmu(t, nil, Options{MaxOutputBytes: 100, MaxMachines: 1})
	name := e.newMachine("")
	e.do("POST", "/v1/machine/new", "").wantError(t, http.StatusForbidden, "MachineLimitReached")
	seq := e.exec(name, "for i in range(50): print('x' * 10)", 30)
	chunks, _, _ := readNDJSON(t, e, name, seq)
	// Ten 10-byte lines fit in 100 bytes; then one stderr line says why the
	// rest is missing.
	if len(chunks) != 11 || !strings.Contains(chunks[10].Data, "MaxOutputBytes") || chunks[10].Stream != "stderr" {
		t.Fatalf("capped output: %d chunks, last %+v", len(chunks), chunks[len(chunks)-1])
	}
	var total int
	for _, c := range chunks[:10] {
		total += len(c.Data)
	}
	if total > 100 {
		t.Fatalf("kept %d bytes of output, cap 100", total)
	}
	// A WebSocket message over MaxBodyBytes closes with "message too big".
	e2 := newEmu(t, e.engine, Options{MaxBodyBytes: 1000})
	r := e2.dial(name)
	r.connected()
	r.exec(strings.Repeat("#", 2000), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, _, err := r.c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Fatalf("oversized message: %v, want close 1009", err)
	}
}
