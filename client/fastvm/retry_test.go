//go:build linux

package fastvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRetryDelayHonoursServerHeaders(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		headers  map[string]string
		min, max time.Duration
	}{
		{"retry-after-ms", map[string]string{"Retry-After-Ms": "250"}, 250 * time.Millisecond, 250 * time.Millisecond},
		{"fractional ms", map[string]string{"Retry-After-Ms": "12.5"}, 12500 * time.Microsecond, 12500 * time.Microsecond},
		{"retry-after seconds", map[string]string{"Retry-After": "2"}, 2 * time.Second, 2 * time.Second},
		{"retry-after date", map[string]string{"Retry-After": now.Add(3 * time.Second).Format(http.TimeFormat)}, 3 * time.Second, 3 * time.Second},
		{"ms wins over seconds", map[string]string{"Retry-After-Ms": "100", "Retry-After": "5"}, 100 * time.Millisecond, 100 * time.Millisecond},
		{"bad ms falls back to seconds", map[string]string{"Retry-After-Ms": "soon", "Retry-After": "1"}, time.Second, time.Second},
		// Out of range or unparsable: the computed backoff (attempt 0: 375–500 ms).
		{"too long", map[string]string{"Retry-After": "120"}, 375 * time.Millisecond, 500 * time.Millisecond},
		{"zero", map[string]string{"Retry-After": "0"}, 375 * time.Millisecond, 500 * time.Millisecond},
		{"negative", map[string]string{"Retry-After-Ms": "-5"}, 375 * time.Millisecond, 500 * time.Millisecond},
		{"date in the past", map[string]string{"Retry-After": now.Add(-time.Minute).Format(http.TimeFormat)}, 375 * time.Millisecond, 500 * time.Millisecond},
		{"garbage", map[string]string{"Retry-After": "tomorrow"}, 375 * time.Millisecond, 500 * time.Millisecond},
		{"absurd", map[string]string{"Retry-After": "1e300"}, 375 * time.Millisecond, 500 * time.Millisecond},
		{"none", nil, 375 * time.Millisecond, 500 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			for range 20 { // the fallback is random
				if d := retryDelay(h, 0, now); d < tc.min || d > tc.max {
					t.Fatalf("retryDelay = %v, want within [%v, %v]", d, tc.min, tc.max)
				}
			}
		})
	}
}

func TestBackoffDoublesToEightSecondsWithJitter(t *testing.T) {
	for attempt, nominal := range []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second} {
		if attempt == 6 {
			attempt = 60 // no overflow for absurd counts
		}
		lo, hi := nominal*3/4, nominal
		var seen time.Duration
		for range 50 {
			d := backoff(attempt)
			if d < lo || d > hi {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, lo, hi)
			}
			seen = max(seen, d)
		}
		if seen == lo {
			t.Errorf("backoff(%d) never jittered", attempt)
		}
	}
}

func TestShouldRetryStatusesAndHeader(t *testing.T) {
	cases := []struct {
		status int
		header string
		want   bool
	}{
		{400, "", false}, {401, "", false}, {404, "", false}, {422, "", false},
		{408, "", true}, {409, "", true}, {429, "", true}, {500, "", true}, {502, "", true}, {503, "", true},
		{409, "false", false}, {429, "false", false}, {503, "FALSE", false},
		{400, "true", true}, {404, " true ", true},
		{429, "maybe", true},
	}
	for _, tc := range cases {
		resp := &http.Response{StatusCode: tc.status, Header: http.Header{}}
		if tc.header != "" {
			resp.Header.Set("X-Should-Retry", tc.header)
		}
		if got := shouldRetry(resp); got != tc.want {
			t.Errorf("shouldRetry(%d, x-should-retry=%q) = %v, want %v", tc.status, tc.header, got, tc.want)
		}
	}
}

// flaky is a handler that fails the first n requests with status (and
// headers), then answers with ok. It counts requests per method and path.
type flaky struct {
	mu      sync.Mutex
	n       int
	status  int
	headers map[string]string
	ok      string
	hits    map[string]int
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.hits[r.Method+" "+r.URL.Path]++
	fail := f.n > 0
	f.n--
	f.mu.Unlock()
	if fail {
		for k, v := range f.headers {
			w.Header().Set(k, v)
		}
		if f.status == 0 { // drop the connection: a transport error
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.status)
		fmt.Fprintf(w, `{"error":"transient %d"}`, f.status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, f.ok)
}

func (f *flaky) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hits[key]
}

func newFlaky(t *testing.T, n, status int, headers map[string]string, ok string) (*flaky, *Client) {
	f := &flaky{n: n, status: status, headers: headers, ok: ok, hits: map[string]int{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, New("k", WithBaseURL(srv.URL))
}

func TestIdempotentCallsRetryTransientStatuses(t *testing.T) {
	for _, status := range []int{408, 409, 429, 500, 503} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			f, c := newFlaky(t, 2, status, map[string]string{"Retry-After-Ms": "20"}, `{"id":"vm1","status":"running"}`)
			start := time.Now()
			vm, err := c.GetVM(context.Background(), "vm1")
			if err != nil {
				t.Fatal(err)
			}
			if vm.ID != "vm1" || f.count("GET /v1/vms/vm1") != 3 {
				t.Fatalf("vm %+v after %d requests, want vm1 after 3", vm, f.count("GET /v1/vms/vm1"))
			}
			if el := time.Since(start); el < 40*time.Millisecond {
				t.Errorf("two retries took %v, want at least the 2×20 ms the server asked for", el)
			}
		})
	}
}

func TestRetriesStopAfterMaxRetries(t *testing.T) {
	f, c := newFlaky(t, 10, 503, map[string]string{"Retry-After-Ms": "1"}, `[]`)
	_, err := c.ListVMs(context.Background(), nil)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 || apiErr.Attempts != 3 {
		t.Fatalf("err = %v, want a 503 *APIError after 3 attempts", err)
	}
	if got := f.count("GET /v1/vms"); got != 3 {
		t.Fatalf("%d requests, want 3 (1 + DefaultMaxRetries)", got)
	}
	if !strings.Contains(err.Error(), "after 3 attempts") {
		t.Errorf("error %q does not say it was retried", err)
	}

	f, c = newFlaky(t, 10, 503, map[string]string{"Retry-After-Ms": "1"}, `[]`)
	c = New("k", WithBaseURL(c.BaseURL()), WithMaxRetries(0))
	if _, err := c.ListVMs(context.Background(), nil); err == nil || f.count("GET /v1/vms") != 1 {
		t.Fatalf("WithMaxRetries(0): err %v after %d requests, want an error after 1", err, f.count("GET /v1/vms"))
	}
}

func TestNonIdempotentCallsAreNeverRetried(t *testing.T) {
	ctx := context.Background()
	calls := map[string]func(*Client) error{
		"POST /v1/vms": func(c *Client) error { _, err := c.LaunchNoWait(ctx, LaunchRequest{MachineType: "c1m2"}); return err },
		"POST /v1/vms/v/exec": func(c *Client) error {
			_, err := c.Exec(ctx, "v", ExecRequest{Command: []string{"true"}})
			return err
		},
		"POST /v1/vms/v/exec ": func(c *Client) error { // the stream variant
			for _, err := range c.ExecStream(ctx, "v", ExecRequest{Command: []string{"true"}}) {
				return err
			}
			return nil
		},
		"POST /v1/vms/v/files/presign": func(c *Client) error { _, err := c.PresignFile(ctx, "v", "/x"); return err },
		"POST /v1/vms/v/files/fetch": func(c *Client) error {
			_, err := c.FetchFile(ctx, "v", FetchRequest{URL: "u", Path: "/x"})
			return err
		},
		"POST /v1/snapshots":              func(c *Client) error { _, err := c.CreateSnapshot(ctx, "v", ""); return err },
		"POST /v1/builds":                 func(c *Client) error { _, err := c.CreateBuild(ctx, BuildRequest{ImageRef: "x"}); return err },
		"POST /v1/build-contexts/presign": func(c *Client) error { _, err := c.PresignBuildContext(ctx); return err },
	}
	for key, fn := range calls {
		for _, status := range []int{429, 503, 0} {
			t.Run(fmt.Sprintf("%s/%d", key, status), func(t *testing.T) {
				f, c := newFlaky(t, 5, status, map[string]string{"X-Should-Retry": "true"}, `{}`)
				err := fn(c)
				if err == nil {
					t.Fatal("no error")
				}
				if got := f.count(strings.TrimSpace(key)); got != 1 {
					t.Fatalf("%d requests, want 1: never retried", got)
				}
				var ce *ConnError
				if status == 0 && (!errors.As(err, &ce) || ce.Idempotent || !strings.Contains(err.Error(), "may have taken effect")) {
					t.Fatalf("a dropped connection gave %v, want a *ConnError saying the call may have taken effect", err)
				}
			})
		}
	}
}

func TestIdempotentCallsRetryConnectionErrors(t *testing.T) {
	f, c := newFlaky(t, 2, 0, nil, `{"id":"s1","status":"ready"}`)
	s, err := c.GetSnapshot(context.Background(), "s1")
	if err != nil || s.Status != "ready" || f.count("GET /v1/snapshots/s1") != 3 {
		t.Fatalf("got %+v, %v after %d requests, want the snapshot after 3", s, err, f.count("GET /v1/snapshots/s1"))
	}

	f, c = newFlaky(t, 5, 0, nil, `{}`)
	_, err = c.Quotas(context.Background())
	var ce *ConnError
	if !errors.As(err, &ce) || ce.Attempts != 3 || !ce.Idempotent || f.count("GET /v1/org/quotas") != 3 {
		t.Fatalf("err = %v, want a *ConnError after 3 attempts", err)
	}
}

func TestShouldRetryHeaderOverridesStatus(t *testing.T) {
	// x-should-retry: false on a 429 (quota exhausted) stops at once.
	f, c := newFlaky(t, 5, 429, map[string]string{"X-Should-Retry": "false"}, `{}`)
	_, err := c.Quotas(context.Background())
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 429 || apiErr.ShouldRetry != "false" || f.count("GET /v1/org/quotas") != 1 {
		t.Fatalf("err = %v after %d requests, want one 429", err, f.count("GET /v1/org/quotas"))
	}
	// x-should-retry: true on a 400 retries it.
	f, c = newFlaky(t, 1, 400, map[string]string{"X-Should-Retry": "true", "Retry-After-Ms": "1"}, `{"status":"ok"}`)
	if _, err := c.Health(context.Background()); err != nil || f.count("GET /healthz") != 2 {
		t.Fatalf("err = %v after %d requests, want success after 2", err, f.count("GET /healthz"))
	}
}

func TestRetryWaitEndsWithTheContext(t *testing.T) {
	_, c := newFlaky(t, 5, 503, map[string]string{"Retry-After": "30"}, `{}`)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Health(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("err = %v after %v, want the context's deadline promptly", err, time.Since(start))
	}
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 {
		t.Fatalf("err = %v, want it to carry the 503 that was being retried", err)
	}
}

func TestAttemptTimeoutIsRetried(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		first := hits == 1
		mu.Unlock()
		if first {
			select { // hang past the client's per-request timeout
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		fmt.Fprint(w, `{"status":"ok"}`)
	}))
	t.Cleanup(srv.Close)
	c := New("k", WithBaseURL(srv.URL), WithTimeout(300*time.Millisecond))
	h, err := c.Health(context.Background())
	if err != nil || h.Status != "ok" {
		t.Fatalf("got %+v, %v; want ok after a timed-out first attempt", h, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if hits != 2 {
		t.Fatalf("%d requests, want 2", hits)
	}
}

// Keep the net import honest: a refused connection is a *ConnError too.
func TestRefusedConnectionIsConnError(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := New("k", WithBaseURL("http://"+addr), WithMaxRetries(1))
	_, err = c.Health(context.Background())
	var ce *ConnError
	if !errors.As(err, &ce) || ce.Attempts != 2 || !strings.Contains(err.Error(), "check the network and the base URL") {
		t.Fatalf("err = %v, want a *ConnError after 2 attempts with a hint", err)
	}
}
