//go:build linux

package fastvm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// ndjsonServer answers every exec with body as application/x-ndjson,
// flushing after each line like a live stream.
func ndjsonServer(t *testing.T, contentType, body string) *Client {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept") != "application/x-ndjson" {
			t.Errorf("Accept = %q", r.Header.Get("Accept"))
		}
		w.Header().Set("Content-Type", contentType)
		for line := range strings.Lines(body) {
			fmt.Fprint(w, line)
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(srv.Close)
	return New("k", WithBaseURL(srv.URL))
}

func collect(c *Client) ([]ExecEvent, error) {
	var evs []ExecEvent
	for ev, err := range c.ExecStream(context.Background(), "v", ExecRequest{Command: []string{"x"}}) {
		if err != nil {
			return evs, err
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

func TestExecStreamParsesEvents(t *testing.T) {
	body := "{\"t\":\"o\",\"d\":\"aGkK\"}\n" +
		"\n   \n" + // blank lines are skipped
		"{\"t\":\"e\",\"d\":\"d2Fybgo=\"}\r\n" +
		"  {\"t\":\"o\",\"d\":\"AP8=\",\"future\":1}  \n" + // binary bytes, unknown field, padding
		"{\"t\":\"progress\"}\n" + // unknown type: passed through
		"{\"t\":\"x\",\"ms\":12}" // exit 0: no c, no to; no final newline
	evs, err := collect(ndjsonServer(t, "application/x-ndjson", body))
	if err != nil {
		t.Fatal(err)
	}
	want := []ExecEvent{
		{Type: EventStdout, Data: []byte("hi\n")},
		{Type: EventStderr, Data: []byte("warn\n")},
		{Type: EventStdout, Data: []byte{0, 0xff}},
		{Type: "progress"},
		{Type: EventExit, DurationMs: 12},
	}
	if fmt.Sprint(evs) != fmt.Sprint(want) {
		t.Fatalf("events\n%v\nwant\n%v", evs, want)
	}
}

func TestExecStreamExitFields(t *testing.T) {
	evs, err := collect(ndjsonServer(t, "application/x-ndjson; charset=utf-8", `{"t":"x","c":124,"to":true,"ms":5003}`+"\n"))
	if err != nil || len(evs) != 1 || fmt.Sprint(evs[0]) != fmt.Sprint(ExecEvent{Type: EventExit, ExitCode: 124, TimedOut: true, DurationMs: 5003}) {
		t.Fatalf("got %v, %v", evs, err)
	}
}

func TestExecStreamStopsAtTheExitEvent(t *testing.T) {
	// Anything after the exit event is not read.
	evs, err := collect(ndjsonServer(t, "application/x-ndjson", "{\"t\":\"x\",\"c\":3}\nnot json\n"))
	if err != nil || len(evs) != 1 || evs[0].ExitCode != 3 {
		t.Fatalf("got %v, %v", evs, err)
	}
}

func TestExecStreamErrors(t *testing.T) {
	cases := map[string]string{
		"cut before exit":  "{\"t\":\"o\",\"d\":\"aGkK\"}\n",
		"empty":            "",
		"not json":         "{\"t\":\"o\",\"d\":\"aGkK\"}\n<html>\n",
		"invalid base64":   "{\"t\":\"o\",\"d\":\"%%%\"}\n",
		"truncated object": "{\"t\":\"x\",\"c\":",
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			evs, err := collect(ndjsonServer(t, "application/x-ndjson", body))
			if err == nil {
				t.Fatalf("no error; events %v", evs)
			}
			if strings.HasPrefix(name, "cut") && (len(evs) != 1 || !strings.Contains(err.Error(), "before the exit event")) {
				t.Fatalf("got %v, %v; want the output then an error about the missing exit", evs, err)
			}
		})
	}
}

func TestExecStreamAcceptsAnAggregateAnswer(t *testing.T) {
	body := `{"exitCode":1,"stdout":"a","stderr":"b","durationMs":7,"timedOut":false,"stdoutTruncated":false,"stderrTruncated":false}`
	evs, err := collect(ndjsonServer(t, "application/json", body))
	want := []ExecEvent{{Type: EventStdout, Data: []byte("a")}, {Type: EventStderr, Data: []byte("b")}, {Type: EventExit, ExitCode: 1, DurationMs: 7}}
	if err != nil || fmt.Sprint(evs) != fmt.Sprint(want) {
		t.Fatalf("got %v, %v; want %v", evs, err, want)
	}
}

func TestExecStreamErrorStatus(t *testing.T) {
	_, c := newRecorder(t, 409, `{"error":"VM is not running"}`)
	_, err := collect(c)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 409 || apiErr.Message != "VM is not running" {
		t.Fatalf("err = %v", err)
	}
}

func TestExecStreamFuncAndEarlyStop(t *testing.T) {
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer wg.Done()
		w.Header().Set("Content-Type", "application/x-ndjson")
		fmt.Fprintln(w, `{"t":"o","d":"MQo="}`)
		w.(http.Flusher).Flush()
		select { // a long-running command
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	c := New("k", WithBaseURL(srv.URL))
	stop := errors.New("enough")
	var got []string
	_, err := c.ExecStreamFunc(context.Background(), "v", ExecRequest{Command: []string{"x"}}, func(ev ExecEvent) error {
		got = append(got, string(ev.Data))
		return stop
	})
	if !errors.Is(err, stop) || len(got) != 1 || got[0] != "1\n" {
		t.Fatalf("got %q, %v", got, err)
	}
	// Stopping closed the connection: the handler sees its request end.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream's connection stayed open after the consumer stopped")
	}
}

func TestNextLineLimits(t *testing.T) {
	long := strings.Repeat("a", 100_000) // longer than the reader's buffer
	r := bufio.NewReaderSize(strings.NewReader("\n"+long+"\n  tail  "), 16)
	if l, err := nextLine(r); err != nil || string(l) != long {
		t.Fatalf("long line: %d bytes, %v", len(l), err)
	}
	if l, err := nextLine(r); err != nil || string(l) != "tail" {
		t.Fatalf("unterminated line: %q, %v", l, err)
	}
	if _, err := nextLine(r); err == nil {
		t.Fatal("no EOF")
	}
	huge := bufio.NewReader(strings.NewReader(strings.Repeat("b", maxEventLine+10)))
	if _, err := nextLine(huge); err == nil || !strings.Contains(err.Error(), "over") {
		t.Fatalf("an oversized line gave %v", err)
	}
}

// statusServer answers GET /v1/vms/v with the given statuses in turn (the
// last one repeats) and counts the GETs.
func statusServer(t *testing.T, statuses ...string) (*Client, func() []time.Time) {
	var mu sync.Mutex
	var times []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		i := min(len(times), len(statuses)-1)
		times = append(times, time.Now())
		mu.Unlock()
		if statuses[i] == "404" {
			w.WriteHeader(404)
			fmt.Fprint(w, `{"error":"vm not found"}`)
			return
		}
		fmt.Fprintf(w, `{"id":"v","status":%q}`, statuses[i])
	}))
	t.Cleanup(srv.Close)
	c := New("k", WithBaseURL(srv.URL), WithPollInterval(100*time.Millisecond), WithWaitTimeout(3*time.Second))
	return c, func() []time.Time { mu.Lock(); defer mu.Unlock(); return append([]time.Time(nil), times...) }
}

func TestWaitReadyOutcomes(t *testing.T) {
	ctx := context.Background()
	t.Run("unknown statuses are in transition", func(t *testing.T) {
		c, times := statusServer(t, "provisioning", "queued", "running")
		start := time.Now()
		vm, err := c.WaitReady(ctx, "v")
		if err != nil || vm.Status != "running" {
			t.Fatalf("got %+v, %v", vm, err)
		}
		ts := times()
		if len(ts) != 3 || ts[0].Sub(start) > time.Second {
			t.Fatalf("%d GETs, first after %v; want 3, the first at once", len(ts), ts[0].Sub(start))
		}
		for i := 1; i < len(ts); i++ { // a 100 ms interval is raised to the 0.5 s floor
			if gap := ts[i].Sub(ts[i-1]); gap < minPollDelay {
				t.Errorf("poll gap %v under %v", gap, minPollDelay)
			}
		}
	})
	for _, status := range []string{"error", "stopped", "deleting"} {
		t.Run(status, func(t *testing.T) {
			c, _ := statusServer(t, "provisioning", status)
			_, err := c.WaitReady(ctx, "v")
			var le *LaunchError
			if !errors.As(err, &le) || le.VMID != "v" || le.Status != status {
				t.Fatalf("err = %v, want *LaunchError{v, %s}", err, status)
			}
		})
	}
	t.Run("deadline", func(t *testing.T) {
		c, times := statusServer(t, "provisioning")
		c = New("k", WithBaseURL(c.BaseURL()), WithWaitTimeout(1200*time.Millisecond))
		start := time.Now()
		_, err := c.WaitReady(ctx, "v")
		var nr *NotReadyError
		if !errors.As(err, &nr) || nr.LastStatus != "provisioning" || nr.Timeout != 1200*time.Millisecond || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want *NotReadyError", err)
		}
		// With a 2 s interval, the second GET waits only for the remaining
		// 1.2 s: it happens at the deadline, then the error.
		if el := time.Since(start); el < 1200*time.Millisecond || el > 3*time.Second || len(times()) != 2 {
			t.Fatalf("gave up after %v and %d GETs, want ~1.2 s and 2", el, len(times()))
		}
	})
	t.Run("http errors propagate", func(t *testing.T) {
		c, _ := statusServer(t, "provisioning", "404")
		if _, err := c.WaitReady(ctx, "v"); !IsNotFound(err) {
			t.Fatalf("err = %v, want the 404", err)
		}
	})
	t.Run("context", func(t *testing.T) {
		c, _ := statusServer(t, "provisioning")
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := c.WaitReady(cctx, "v"); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "provisioning") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestPollDelay(t *testing.T) {
	seen := map[bool]bool{}
	for range 200 {
		d := pollDelay(2*time.Second, time.Hour)
		if d < 1800*time.Millisecond || d > 2200*time.Millisecond {
			t.Fatalf("pollDelay(2s) = %v, want 2 s ± 10 %%", d)
		}
		seen[d > 2*time.Second] = true
	}
	if !seen[true] || !seen[false] {
		t.Error("the jitter does not go both ways")
	}
	if d := pollDelay(100*time.Millisecond, time.Hour); d != minPollDelay {
		t.Errorf("pollDelay(100ms) = %v, want the %v floor", d, minPollDelay)
	}
	if d := pollDelay(2*time.Second, 300*time.Millisecond); d != 300*time.Millisecond {
		t.Errorf("pollDelay capped at 300 ms = %v", d)
	}
}
