//go:build linux

package fastvm

import (
	"context"
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
)

const testKey = "fvm_test_SECRET_0123456789"

// recorder is a handler that keeps the last request and answers with a
// fixed status and body.
type recorder struct {
	mu     sync.Mutex
	reqs   []*http.Request
	bodies []string
	status int
	body   string
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, r)
	rc.bodies = append(rc.bodies, string(b))
	status, body := rc.status, rc.body
	rc.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if status != 0 {
		w.WriteHeader(status)
	}
	fmt.Fprint(w, body)
}

func (rc *recorder) setBody(body string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.body = body
}

func (rc *recorder) last() (*http.Request, string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.reqs[len(rc.reqs)-1], rc.bodies[len(rc.bodies)-1]
}

func newRecorder(t *testing.T, status int, body string, opts ...Option) (*recorder, *Client) {
	rc := &recorder{status: status, body: body}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return rc, New(testKey, append([]Option{WithBaseURL(srv.URL + "/")}, opts...)...)
}

func TestRequestsCarryTheSpecHeaders(t *testing.T) {
	rc, c := newRecorder(t, 200, `{"id":"v","status":"running"}`, WithHeader("X-Trace", "abc"), WithHeader("X-API-Key", "other"))
	ctx := context.Background()

	if _, err := c.UpdateVM(ctx, "v", VMUpdate{Name: "n"}); err != nil {
		t.Fatal(err)
	}
	r, body := rc.last()
	if r.Method != "PATCH" || r.URL.Path != "/v1/vms/v" || body != `{"name":"n"}` {
		t.Fatalf("sent %s %s %s", r.Method, r.URL.Path, body)
	}
	for k, want := range map[string]string{
		"X-Api-Key": testKey, "Accept": "application/json", "Content-Type": "application/json", "X-Trace": "abc",
	} {
		if got := r.Header.Values(k); len(got) != 1 || got[0] != want {
			t.Errorf("header %s = %q, want exactly %q", k, got, want)
		}
	}
	if ua := r.Header.Get("User-Agent"); !strings.HasPrefix(ua, "fastvm-go/") {
		t.Errorf("User-Agent %q does not name the Go client", ua)
	}
	if r.Header.Get("Authorization") != "" {
		t.Error("sent an Authorization header; the API authenticates with X-API-Key")
	}

	if _, err := c.GetVM(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if r, body := rc.last(); r.Header.Get("Content-Type") != "" || body != "" || r.ContentLength > 0 {
		t.Errorf("a GET sent Content-Type %q and body %q", r.Header.Get("Content-Type"), body)
	}
	if _, err := c.ConsoleToken(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if r, body := rc.last(); r.Method != "POST" || r.URL.Path != "/v1/vms/v/console-token" || body != "" {
		t.Errorf("console token sent %s %s %q, want a body-less POST", r.Method, r.URL.Path, body)
	}
}

func TestRequestShapes(t *testing.T) {
	ctx := context.Background()
	rc, c := newRecorder(t, 200, `{"id":"v","status":"running"}`)
	cases := []struct {
		name       string
		do         func() error
		method     string
		path       string
		query      string
		body       string
		wantAccept string
	}{
		{"launch", func() error {
			_, err := c.LaunchNoWait(ctx, LaunchRequest{MachineType: "c1m2", Name: "a", DiskGiB: 12, Metadata: map[string]string{"k": "v"},
				Firewall: &FirewallPolicy{Mode: FirewallRestricted, Ingress: []FirewallRule{{Protocol: "tcp", PortStart: 80}}}})
			return err
		}, "POST", "/v1/vms", "", `{"machineType":"c1m2","name":"a","diskGiB":12,"firewall":{"mode":"restricted","ingress":[{"protocol":"tcp","portStart":80}]},"metadata":{"k":"v"}}`, ""},
		{"restore", func() error { _, err := c.LaunchNoWait(ctx, LaunchRequest{SnapshotID: "s"}); return err },
			"POST", "/v1/vms", "", `{"snapshotId":"s"}`, ""},
		{"list filter", func() error {
			rc.setBody(`[]`)
			defer rc.setBody(`{"id":"v","status":"running"}`)
			_, err := c.ListVMs(ctx, map[string]string{"env": "prod", "role": "api"})
			return err
		}, "GET", "/v1/vms", "metadata.env=prod&metadata.role=api", "", ""},
		{"update clears metadata", func() error { _, err := c.UpdateVM(ctx, "v", VMUpdate{Metadata: map[string]string{}}); return err },
			"PATCH", "/v1/vms/v", "", `{"metadata":{}}`, ""},
		{"delete", func() error { _, err := c.DeleteVM(ctx, "v"); return err }, "DELETE", "/v1/vms/v", "", "", ""},
		{"set firewall", func() error { _, err := c.SetFirewall(ctx, "v", FirewallPolicy{Mode: FirewallOpen}); return err },
			"PUT", "/v1/vms/v/firewall", "", `{"mode":"open"}`, ""},
		{"patch firewall clears rules", func() error {
			_, err := c.PatchFirewall(ctx, "v", FirewallPatch{Ingress: []FirewallRule{}})
			return err
		},
			"PATCH", "/v1/vms/v/firewall", "", `{"ingress":[]}`, ""},
		{"patch firewall mode only", func() error { _, err := c.PatchFirewall(ctx, "v", FirewallPatch{Mode: FirewallOpen}); return err },
			"PATCH", "/v1/vms/v/firewall", "", `{"mode":"open"}`, ""},
		{"exec", func() error {
			_, err := c.Exec(ctx, "v", ExecRequest{Command: []string{"cat"}, TimeoutSec: 5, Stdin: []byte("hi\n")})
			return err
		}, "POST", "/v1/vms/v/exec", "", `{"command":["cat"],"timeoutSec":5,"stdin":"aGkK"}`, "application/json"},
		{"presign", func() error { _, err := c.PresignFile(ctx, "v", "/root/f"); return err },
			"POST", "/v1/vms/v/files/presign", "", `{"path":"/root/f"}`, ""},
		{"fetch", func() error {
			_, err := c.FetchFile(ctx, "v", FetchRequest{URL: "http://s/o", Path: "/root/f", TimeoutSec: 600})
			return err
		}, "POST", "/v1/vms/v/files/fetch", "", `{"url":"http://s/o","path":"/root/f","timeoutSec":600}`, ""},
		{"snapshot", func() error { _, err := c.CreateSnapshot(ctx, "v", "snap"); return err },
			"POST", "/v1/snapshots", "", `{"name":"snap","vmId":"v"}`, ""},
		{"rename snapshot", func() error { _, err := c.RenameSnapshot(ctx, "s", "new"); return err },
			"PATCH", "/v1/snapshots/s", "", `{"name":"new"}`, ""},
		{"build", func() error {
			_, err := c.CreateBuild(ctx, BuildRequest{ImageRef: "python:3.13-slim", DiskGiB: 20})
			return err
		}, "POST", "/v1/builds", "", `{"imageRef":"python:3.13-slim","diskGiB":20}`, ""},
		{"id escaping", func() error { _, err := c.GetVM(ctx, "a/b c"); return err }, "GET", "/v1/vms/a%2Fb%20c", "", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err != nil {
				t.Fatal(err)
			}
			r, body := rc.last()
			if r.Method != tc.method || r.URL.EscapedPath() != tc.path || r.URL.RawQuery != tc.query {
				t.Errorf("sent %s %s?%s, want %s %s?%s", r.Method, r.URL.EscapedPath(), r.URL.RawQuery, tc.method, tc.path, tc.query)
			}
			if body != tc.body {
				t.Errorf("body %s, want %s", body, tc.body)
			}
			if tc.wantAccept != "" && r.Header.Get("Accept") != tc.wantAccept {
				t.Errorf("Accept %q, want %q", r.Header.Get("Accept"), tc.wantAccept)
			}
		})
	}
}

func TestErrorBodies(t *testing.T) {
	long := strings.Repeat("x", 3000)
	cases := []struct {
		name, body, want string
	}{
		{"error", `{"error":"vm not found"}`, "vm not found"},
		{"error wins", `{"message":"m","error":"e","detail":"d"}`, "e"},
		{"message", `{"message":"bad machine type"}`, "bad machine type"},
		{"detail", `{"detail":"quota exceeded"}`, "quota exceeded"},
		{"nested", `{"error":{"type":"x","message":"nested message"}}`, "nested message"},
		{"empty error falls through", `{"error":"","detail":"d"}`, "d"},
		{"non-string", `{"detail":[{"loc":"x"}]}`, `{"detail":[{"loc":"x"}]}`},
		{"plain text", "upstream exploded\n", "upstream exploded"},
		{"empty", "", "Not Found"},
		{"long raw body is cut", long, long[:2000] + "…"},
		{"echoed key is redacted", `{"error":"bad key ` + testKey + `"}`, "bad key [redacted]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, c := newRecorder(t, 404, tc.body)
			_, err := c.GetVM(context.Background(), "v")
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want *APIError", err)
			}
			if apiErr.StatusCode != 404 || apiErr.Message != tc.want || apiErr.Method != "GET" || apiErr.Path != "/v1/vms/v" {
				t.Fatalf("got %+v, want message %q", apiErr, tc.want)
			}
			if strings.Contains(err.Error(), testKey) || strings.Contains(apiErr.Body, testKey) {
				t.Fatal("the API key leaked into the error")
			}
			if !IsNotFound(err) || !strings.Contains(err.Error(), "check the id") {
				t.Errorf("error %q: IsNotFound false or no hint", err)
			}
		})
	}
}

func TestErrorHints(t *testing.T) {
	for status, hint := range map[int]string{401: "API key", 409: "state", 429: "quota", 502: "try again"} {
		_, c := newRecorder(t, status, `{"error":"e"}`, WithMaxRetries(0))
		_, err := c.DeleteSnapshot(context.Background(), "s")
		if err == nil || !strings.Contains(err.Error(), hint) {
			t.Errorf("%d: error %v does not mention %q", status, err, hint)
		}
	}
}

func TestSecretsStayOutOfFmt(t *testing.T) {
	c := New(testKey, WithBaseURL("http://127.0.0.1:1"), WithMaxRetries(0))
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		for _, v := range []any{c, *c} {
			if s := fmt.Sprintf(verb, v); strings.Contains(s, testKey) || strings.Contains(s, fmt.Sprintf("%x", testKey)) {
				t.Fatalf("%s of the client shows the key: %s", verb, s)
			}
		}
	}
	if s := fmt.Sprint(c); !strings.Contains(s, "redacted") || !strings.Contains(s, "127.0.0.1:1") {
		t.Errorf("client prints as %q, want the base URL and a redacted key", s)
	}
	tok := ConsoleToken{Token: "tok-SECRET", ExpiresInSec: 60, WebsocketPath: "/v1/vms/v/console/ws"}
	p := PresignedURLs{UploadURL: "http://s/o?sig=SECRET", DownloadURL: "http://s/o?sig=SECRET", ExpiresInSec: 3600}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		for _, v := range []any{tok, &tok, p, &p} {
			if s := fmt.Sprintf(verb, v); strings.Contains(s, "SECRET") {
				t.Fatalf("%s shows a credential: %s", verb, s)
			}
		}
	}
	// An unreachable API: the error names the URL but never the key.
	_, err := c.GetVM(context.Background(), "v")
	if err == nil || strings.Contains(err.Error(), testKey) {
		t.Fatalf("err = %v", err)
	}
}

func TestRedirectToAnotherHostDropsTheKey(t *testing.T) {
	var got sync.Map
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.URL.Path, r.Header.Get("X-API-Key"))
		fmt.Fprint(w, `{"status":"ok"}`)
	}))
	t.Cleanup(other.Close)
	var api *httptest.Server
	api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.URL.Path, r.Header.Get("X-API-Key"))
		switch r.URL.Path {
		case "/healthz":
			http.Redirect(w, r, other.URL+"/elsewhere", http.StatusFound)
		case "/v1/org/quotas":
			http.Redirect(w, r, api.URL+"/same-host", http.StatusFound)
		default:
			fmt.Fprint(w, `{}`)
		}
	}))
	t.Cleanup(api.Close)
	c := New(testKey, WithBaseURL(api.URL))
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Quotas(context.Background()); err != nil {
		t.Fatal(err)
	}
	if k, _ := got.Load("/elsewhere"); k != "" {
		t.Errorf("the key followed a redirect to another host: %q", k)
	}
	if k, _ := got.Load("/same-host"); k != testKey {
		t.Errorf("a same-host redirect lost the key: %q", k)
	}
}

func TestNewFromEnv(t *testing.T) {
	t.Setenv("FASTVM_API_KEY", "")
	if _, err := NewFromEnv(); err == nil || !strings.Contains(err.Error(), "FASTVM_API_KEY") {
		t.Fatalf("err = %v, want one naming FASTVM_API_KEY", err)
	}
	rc := &recorder{body: `{"status":"ok"}`}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	t.Setenv("FASTVM_API_KEY", testKey)
	t.Setenv("FASTVM_BASE_URL", "")
	c, err := NewFromEnv()
	if err != nil || c.BaseURL() != DefaultBaseURL {
		t.Fatalf("empty FASTVM_BASE_URL: %v, %v; want the default", c, err)
	}
	t.Setenv("FASTVM_BASE_URL", srv.URL)
	t.Setenv("FASTVM_CUSTOM_HEADERS", "X-One: 1\nbad line\nX-Two:  two words \n")
	if c, err = NewFromEnv(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	r, _ := rc.last()
	if r.Header.Get("X-One") != "1" || r.Header.Get("X-Two") != "two words" || r.Header.Get("X-API-Key") != testKey {
		t.Fatalf("headers %v", r.Header)
	}
	if c, _ = NewFromEnv(WithBaseURL("http://override")); c.BaseURL() != "http://override" {
		t.Errorf("an explicit option lost to the environment: %s", c.BaseURL())
	}
}

func TestExecHTTPTimeout(t *testing.T) {
	c := New("k")
	for sec, want := range map[int]time.Duration{0: 330 * time.Second, 10: 300 * time.Second, 600: 630 * time.Second} {
		if got := c.execTimeout(sec); got != want {
			t.Errorf("execTimeout(%d) = %v, want %v", sec, got, want)
		}
	}
	if got := New("k", WithTimeout(time.Hour)).execTimeout(10); got != time.Hour {
		t.Errorf("a longer client timeout was not kept: %v", got)
	}
}

func TestConsoleURL(t *testing.T) {
	cases := []struct{ base, path, want string }{
		{"https://api.fastvm.org", "/v1/vms/v/console/ws", "wss://api.fastvm.org/v1/vms/v/console/ws?session=t+1"},
		{"http://127.0.0.1:9", "/v1/vms/v/console/ws?x=1", "ws://127.0.0.1:9/v1/vms/v/console/ws?session=t+1&x=1"},
		{"https://api.fastvm.org", "wss://console.example/ws", "wss://console.example/ws?session=t+1"},
	}
	for _, tc := range cases {
		got, err := New("k", WithBaseURL(tc.base)).ConsoleURL(&ConsoleToken{Token: "t 1", WebsocketPath: tc.path})
		if err != nil || got != tc.want {
			t.Errorf("ConsoleURL(%s, %s) = %q, %v; want %q", tc.base, tc.path, got, err, tc.want)
		}
	}
}

func TestDecodingToleratesUnknownFieldsAndStatuses(t *testing.T) {
	_, c := newRecorder(t, 200, `{"id":"v","status":"hibernating","cpu":2,"memoryMiB":4096,"diskGiB":10,"newField":{"a":1},
		"portMappings":{"web":8080},"deletedAt":null,"firewall":{"mode":"filtered","ingress":[{"protocol":"sctp","portStart":1,"extra":true}]}}`)
	vm, err := c.GetVM(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Status != "hibernating" || vm.PortMappings["web"] != 8080 || vm.Firewall.Mode != "filtered" || vm.DeletedAt != nil {
		t.Fatalf("decoded %+v", vm)
	}
}

func TestMarshalOmitsNilButKeepsEmpty(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{VMUpdate{}, `{}`},
		{VMUpdate{Name: "x", Metadata: map[string]string{"a": "b"}}, `{"name":"x","metadata":{"a":"b"}}`},
		{FirewallPatch{}, `{}`},
		{FirewallPatch{Mode: "open", Ingress: []FirewallRule{{Protocol: "udp", PortStart: 5000, PortEnd: 5010, SourceCIDRs: []string{"2001:db8::/32"}}}},
			`{"mode":"open","ingress":[{"protocol":"udp","portStart":5000,"portEnd":5010,"sourceCidrs":["2001:db8::/32"]}]}`},
		{LaunchRequest{}, `{}`},
		{ExecRequest{Command: []string{"true"}}, `{"command":["true"]}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("%#v marshals to %s (%v), want %s", tc.v, b, err, tc.want)
		}
	}
}
