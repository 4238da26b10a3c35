//go:build linux

package forevervm_test

// Wire-level tests against hand-written HTTP responses: exact request shapes,
// and parsing of every response variant the spec allows (§2, §4, §7.2).

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/client/forevervm"
)

// recorded is one request a fake server saw.
type recorded struct {
	method, path string
	header       http.Header
	body         string
}

// fakeServer answers each path with a fixed body and records the requests.
func fakeServer(t *testing.T, responses map[string]string) (*forevervm.Client, func() []recorded) {
	t.Helper()
	var mu sync.Mutex
	var seen []recorded
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, recorded{r.Method, r.URL.Path, r.Header.Clone(), string(b)})
		mu.Unlock()
		body, ok := responses[r.Method+" "+r.URL.Path]
		if !ok {
			http.Error(w, `{"code":"NoSuchRoute","id":null}`, http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return forevervm.New(testToken, forevervm.WithBaseURL(srv.URL+"/")), func() []recorded {
		mu.Lock()
		defer mu.Unlock()
		return append([]recorded(nil), seen...)
	}
}

func TestRequestsHaveTheSpecifiedShape(t *testing.T) {
	c, seen := fakeServer(t, map[string]string{
		"GET /v1/whoami":                                 `{"account":"acme","extra":1}`,
		"POST /v1/machine/new":                           `{"machine_name":"AbCdEfGhIjKlMnOp"}`,
		"POST /v1/machine/list":                          `{"machines":[]}`,
		"POST /v1/machine/AbCdEfGhIjKlMnOp/exec":         `{"instruction_seq":3,"machine":"AbCdEfGhIjKlMnOp","interrupted":false}`,
		"GET /v1/machine/AbCdEfGhIjKlMnOp/exec/3/result": `{"instruction_id":3,"result":{"value":"2","data":null,"runtime_ms":1}}`,
	})
	ctx := testCtx(t, 30*time.Second)
	if acct, err := c.Whoami(ctx); err != nil || acct != "acme" {
		t.Fatalf("whoami = %q, %v", acct, err)
	}
	name, err := c.CreateMachine(ctx, forevervm.CreateMachineOptions{})
	if err != nil || name != "AbCdEfGhIjKlMnOp" {
		t.Fatalf("create = %q, %v", name, err)
	}
	if _, err := c.CreateMachine(ctx, forevervm.CreateMachineOptions{Tags: map[string]string{"env": "prod"}, MemoryMB: 512}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListMachines(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ListMachines(ctx, map[string]string{"env": "prod"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, name, "1 + 1", forevervm.ExecOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, name, "x", forevervm.ExecOptions{Timeout: 1500 * time.Millisecond, Interrupt: true}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.ExecResult(ctx, name, 3); err != nil || val(r) != "2" {
		t.Fatalf("result = %s, %v", val(r), err)
	}

	reqs := seen()
	wantBodies := []string{
		"",
		`{}`,
		`{"tags":{"env":"prod"},"memory_mb":512}`,
		`{}`,
		`{"tags":{"env":"prod"}}`,
		`{"instruction":{"code":"1 + 1","timeout_seconds":15},"interrupt":false}`,
		`{"instruction":{"code":"x","timeout_seconds":2},"interrupt":true}`,
		"",
	}
	if len(reqs) != len(wantBodies) {
		t.Fatalf("server saw %d requests, want %d", len(reqs), len(wantBodies))
	}
	for i, r := range reqs {
		if got := r.header.Get("Authorization"); got != "Bearer "+testToken {
			t.Errorf("%s %s: Authorization %q", r.method, r.path, got)
		}
		if got := r.header.Get("x-forevervm-sdk"); got != "go" {
			t.Errorf("%s %s: x-forevervm-sdk %q, want go", r.method, r.path, got)
		}
		ct := r.header.Get("Content-Type")
		if r.method == http.MethodPost && ct != "application/json" || r.method == http.MethodGet && ct != "" {
			t.Errorf("%s %s: Content-Type %q", r.method, r.path, ct)
		}
		if r.body != wantBodies[i] {
			t.Errorf("%s %s: body %s, want %s", r.method, r.path, r.body, wantBodies[i])
		}
	}
	if reqs[3].method != http.MethodPost {
		t.Errorf("list used %s, want POST (spec §7.2)", reqs[3].method)
	}
}

func TestExecResponseVariants(t *testing.T) {
	for _, tc := range []struct {
		body        string
		seq         string
		interrupted bool
	}{
		{`{"instruction_seq":0,"machine":"m"}`, "0", false}, // Rust omits interrupted when false
		{`{"instruction_seq":null,"machine":"m","interrupted":false}`, "nil", false},
		{`{"machine":"m"}`, "nil", false}, // the original CLI's "not submitted"
		{`{"instruction_seq":7,"machine":"m","interrupted":true,"future":[1]}`, "7", true},
	} {
		c, _ := fakeServer(t, map[string]string{"POST /v1/machine/m/exec": tc.body})
		resp, err := c.Exec(testCtx(t, 10*time.Second), "m", "1", forevervm.ExecOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		seq := "nil"
		if resp.InstructionSeq != nil {
			seq = fmt.Sprint(*resp.InstructionSeq)
		}
		if seq != tc.seq || resp.Interrupted != tc.interrupted || resp.Machine != "m" {
			t.Errorf("%s: got seq %s interrupted %v machine %q", tc.body, seq, resp.Interrupted, resp.Machine)
		}
	}
}

func TestMachineFieldVariants(t *testing.T) {
	c, _ := fakeServer(t, map[string]string{"POST /v1/machine/list": `{"machines":[
		{"name":"a","created_at":"2025-02-13T21:48:24.740618Z","running":true,"has_pending_instruction":true,"expires_at":null,"tags":{"k":"v"}},
		{"name":"b","created_at":"2025-02-13T21:44:18.329670Z","running":false,"has_pending_instructions":true,"expires_at":"2026-01-01T00:00:00Z"},
		{"name":"c","created_at":"2025-02-13T21:44:18Z","running":false,"has_pending_instruction":false,"has_pending_instructions":false,"unknown":{}}]}`})
	ms, err := c.ListMachines(testCtx(t, 10*time.Second), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("%d machines, want 3", len(ms))
	}
	a, b, cm := ms[0], ms[1], ms[2]
	if !a.Running || !a.HasPendingInstruction || a.ExpiresAt != nil || a.Tags["k"] != "v" ||
		a.CreatedAt.Format(time.RFC3339Nano) != "2025-02-13T21:48:24.740618Z" {
		t.Errorf("a = %+v", a)
	}
	if !b.HasPendingInstruction {
		t.Error("has_pending_instructions (plural, JS/Python spelling) was not read")
	}
	if b.ExpiresAt == nil || b.ExpiresAt.Year() != 2026 || b.Tags == nil {
		t.Errorf("b = %+v; want expires_at 2026 and non-nil tags", b)
	}
	if cm.HasPendingInstruction || cm.Running {
		t.Errorf("c = %+v", cm)
	}
}

func TestResultVariants(t *testing.T) {
	png := []byte("\x89PNG\r\n\x1a\nfake image bytes")
	pngB64 := base64.StdEncoding.EncodeToString(png)
	for _, tc := range []struct {
		body            string
		value, errText  string // "<nil>" for a nil value
		isError         bool
		runtime         int64
		wantPNG         []byte
		wantDecodeError bool
	}{
		{body: `{"value":"2","data":null,"runtime_ms":8}`, value: "2", runtime: 8},
		{body: `{"value":null,"runtime_ms":3}`, value: "<nil>", runtime: 3},
		{body: `{"value":null,"data":{"png":"` + pngB64 + `","svg":"x"},"runtime_ms":40}`, value: "<nil>", runtime: 40, wantPNG: png},
		{body: `{"error":"Traceback...\nZeroDivisionError: division by zero","runtime_ms":2}`, value: "<nil>", isError: true, errText: "Traceback...\nZeroDivisionError: division by zero", runtime: 2},
		// An error key wins, as in the Rust SDK's untagged enum.
		{body: `{"error":"Timed out","value":null,"runtime_ms":1000}`, value: "<nil>", isError: true, errText: "Timed out", runtime: 1000},
		// error: null is not an error result.
		{body: `{"value":"1","error":null,"runtime_ms":1}`, value: "1", runtime: 1},
		{body: `{"value":"1"}`, wantDecodeError: true},
	} {
		var r forevervm.Result
		err := json.Unmarshal([]byte(tc.body), &r)
		if tc.wantDecodeError {
			if err == nil {
				t.Errorf("%s: decoded without runtime_ms", tc.body)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		value := "<nil>"
		if r.Value != nil {
			value = *r.Value
		}
		if value != tc.value || r.IsError != tc.isError || r.Error != tc.errText || r.RuntimeMS != tc.runtime {
			t.Errorf("%s: got %+v (value %s)", tc.body, r, value)
		}
		img, err := r.PNG()
		if err != nil || string(img) != string(tc.wantPNG) {
			t.Errorf("%s: PNG() = %q, %v", tc.body, img, err)
		}
		// Written back, an error result has no value key and a value result no
		// error key (spec §4).
		out, _ := json.Marshal(r)
		var keys map[string]any
		json.Unmarshal(out, &keys)
		_, hasValue := keys["value"]
		_, hasError := keys["error"]
		if hasValue == tc.isError || hasError != tc.isError {
			t.Errorf("%s: marshalled as %s", tc.body, out)
		}
	}
}

func TestErrorBodies(t *testing.T) {
	for _, tc := range []struct {
		status         int
		body           string
		code, id, text string
		notFound, auth bool
	}{
		{404, `{"code":"MachineNotFound","id":null}`, "MachineNotFound", "", "", true, false},
		{404, `{"code":"InstructionNotFound","id":"req-9"}`, "InstructionNotFound", "req-9", "", true, false},
		{401, `{"code":"Unauthorized","id":null}`, "Unauthorized", "", "", false, true},
		{502, "upstream connect error", "", "", "upstream connect error", false, false},
		{500, "", "", "", "", false, false},
		{400, `{"message":"no code"}`, "", "", `{"message":"no code"}`, false, false},
		{503, "<html><body>" + strings.Repeat("busy ", 300) + "</body></html>", "", "", "<html><body>busy", false, false},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(tc.status)
			io.WriteString(w, tc.body)
		}))
		c := forevervm.New(testToken, forevervm.WithBaseURL(srv.URL))
		_, err := c.Whoami(testCtx(t, 10*time.Second))
		srv.Close()
		var ae *forevervm.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%d %s: error %v is not an *APIError", tc.status, tc.body, err)
		}
		if ae.StatusCode != tc.status || ae.Code != tc.code || ae.ID != tc.id || !strings.HasPrefix(ae.Body, tc.text) {
			t.Errorf("%d %s: got %+v", tc.status, tc.body, ae)
		}
		if len(ae.Body) > 600 {
			t.Errorf("%d: body kept whole (%d bytes), want a snippet", tc.status, len(ae.Body))
		}
		if forevervm.IsNotFound(err) != tc.notFound || forevervm.IsUnauthorized(err) != tc.auth {
			t.Errorf("%d %s: IsNotFound %v IsUnauthorized %v", tc.status, tc.body, forevervm.IsNotFound(err), forevervm.IsUnauthorized(err))
		}
		msg := err.Error()
		if !strings.Contains(msg, fmt.Sprint(tc.status)) || !strings.Contains(msg, "/v1/whoami") || strings.Contains(msg, testSecret) {
			t.Errorf("%d: message %q", tc.status, msg)
		}
		if tc.code != "" && !forevervm.IsCode(err, tc.code) {
			t.Errorf("IsCode(%q) false", tc.code)
		}
	}
}

// TestNDJSONSplitAcrossChunks sends a stream-result whose lines are cut at
// arbitrary places, flushed separately, with a 300 KB result line and a type
// the client does not know (spec §2.7, PR #132).
func TestNDJSONSplitAcrossChunks(t *testing.T) {
	png := strings.Repeat("A", 300_000)
	stream := `{"type":"output","chunk":{"stream":"stdout","data":"0","seq":0},"instruction_id":4}` + "\n" +
		`{"type":"message","message":"future type","level":"info"}` + "\n" +
		"\n" +
		`{"type":"output","chunk":{"stream":"stderr","data":"héllo ✓","seq":1},"instruction_id":4}` + "\n" +
		`{"type":"result","instruction_id":4,"result":{"value":null,"data":{"png":"` + png + `"},"runtime_ms":12}}` + "\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/machine/m/exec/4/stream-result" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		f := w.(http.Flusher)
		for i, step := 0, 1; i < len(stream); step = step*3 + 1 {
			end := min(i+step, len(stream))
			io.WriteString(w, stream[i:end])
			f.Flush()
			i = end
			time.Sleep(time.Millisecond)
		}
	}))
	defer srv.Close()
	c := forevervm.New(testToken, forevervm.WithBaseURL(srv.URL))
	var got []string
	for ev, err := range c.StreamResult(testCtx(t, 30*time.Second), "m", 4) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.InstructionID != 4 {
			t.Errorf("instruction id %d", ev.InstructionID)
		}
		switch {
		case ev.Output != nil:
			got = append(got, fmt.Sprintf("%s:%d:%s", ev.Output.Stream, ev.Output.Seq, ev.Output.Data))
		case ev.Result != nil:
			var p string
			json.Unmarshal(ev.Result.Data["png"], &p)
			got = append(got, fmt.Sprintf("result:%d:%d", ev.Result.RuntimeMS, len(p)))
		}
	}
	want := []string{"stdout:0:0", "stderr:1:héllo ✓", "result:12:300000"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
}

func TestStreamResultFailures(t *testing.T) {
	for name, tc := range map[string]struct {
		body, want string
	}{
		"no result":            {`{"type":"output","chunk":{"stream":"stdout","data":"0","seq":0},"instruction_id":0}` + "\n", "ended before"},
		"cut mid-line":         {`{"type":"result","instruction_id":0,"res`, "not a JSON message"},
		"result not an object": {`{"type":"result","instruction_id":0,"result":"nope"}` + "\n", "malformed result"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, tc.body) }))
		c := forevervm.New(testToken, forevervm.WithBaseURL(srv.URL))
		var lastErr error
		for _, err := range c.StreamResult(testCtx(t, 10*time.Second), "m", 0) {
			lastErr = err
		}
		srv.Close()
		if lastErr == nil || !strings.Contains(lastErr.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", name, lastErr, tc.want)
		}
	}
	// A final line without its newline is still read.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"type":"result","instruction_id":0,"result":{"value":"1","data":null,"runtime_ms":0}}`)
	}))
	defer srv.Close()
	c := forevervm.New(testToken, forevervm.WithBaseURL(srv.URL))
	n := 0
	for ev, err := range c.StreamResult(testCtx(t, 10*time.Second), "m", 0) {
		if err != nil || ev.Result == nil || val(ev.Result) != "1" {
			t.Fatalf("unterminated last line: %+v, %v", ev, err)
		}
		n++
	}
	if n != 1 {
		t.Fatalf("%d events", n)
	}
}

func TestTokenNeverPrinted(t *testing.T) {
	c := forevervm.New(testToken, forevervm.WithBaseURL("http://127.0.0.1:1"))
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{c, *c} {
			if s := fmt.Sprintf(f, v); strings.Contains(s, testSecret) {
				t.Errorf("Sprintf(%q) shows the token: %s", f, s)
			}
		}
	}
	// Transport failures (nothing listens on port 1) name the request only.
	ctx := testCtx(t, 10*time.Second)
	_, err := c.Whoami(ctx)
	if err == nil || strings.Contains(err.Error(), testSecret) {
		t.Errorf("transport error %v", err)
	}
	_, err = c.REPL(ctx, "m")
	if err == nil || strings.Contains(err.Error(), testSecret) {
		t.Errorf("REPL dial error %v", err)
	}
}

func TestNewFromEnv(t *testing.T) {
	t.Setenv("FOREVERVM_TOKEN", "")
	if _, err := forevervm.NewFromEnv(); err == nil || !strings.Contains(err.Error(), "FOREVERVM_TOKEN") {
		t.Fatalf("without a token: %v", err)
	}
	t.Setenv("FOREVERVM_TOKEN", testToken)
	t.Setenv("FOREVERVM_BASE_URL", "")
	c, err := forevervm.NewFromEnv()
	if err != nil || c.BaseURL() != forevervm.DefaultBaseURL {
		t.Fatalf("default base: %v %v", c, err)
	}
	t.Setenv("FOREVERVM_BASE_URL", "http://localhost:8080/")
	if c, _ = forevervm.NewFromEnv(); c.BaseURL() != "http://localhost:8080" {
		t.Fatalf("base %q, want the trailing slash stripped", c.BaseURL())
	}
	bad := forevervm.New(testToken, forevervm.WithBaseURL("ftp://example.com"))
	if _, err := bad.Whoami(testCtx(t, 5*time.Second)); err == nil || !strings.Contains(err.Error(), "http") {
		t.Fatalf("ftp base URL: %v", err)
	}
	if _, err := c.Exec(testCtx(t, 5*time.Second), "", "1", forevervm.ExecOptions{}); err == nil || !strings.Contains(err.Error(), "CreateMachine") {
		t.Fatalf("empty machine: %v", err)
	}
}

// TestRequestTimeout: a server that never answers does not hang the client.
func TestRequestTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := forevervm.New(testToken, forevervm.WithBaseURL(srv.URL), forevervm.WithRequestTimeout(200*time.Millisecond))
	start := time.Now()
	_, err := c.Whoami(testCtx(t, 30*time.Second))
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("whoami against a silent server: %v after %v", err, time.Since(start))
	}
}
