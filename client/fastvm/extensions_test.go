//go:build linux

package fastvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// Shapes of the TS SDK 0.5–0.6 extensions (spec §9): what the client sends
// and what it decodes, against fixed answers.

func TestExtensionRequestShapes(t *testing.T) {
	ctx := context.Background()
	rc, c := newRecorder(t, 200, `{"id":"v","status":"running"}`)
	cases := []struct {
		name   string
		do     func() error
		method string
		path   string
		query  string
		body   string
	}{
		{"launch with envVars and ttl", func() error {
			_, err := c.LaunchNoWait(ctx, LaunchRequest{MachineType: "c1m2", EnvVars: map[string]string{"A": "1"}, TTL: &TTL{Action: TTLPause, Seconds: 60}})
			return err
		}, "POST", "/v1/vms", "", `{"machineType":"c1m2","envVars":{"A":"1"},"ttl":{"action":"pause","seconds":60}}`},
		{"update leaves the ttl", func() error { _, err := c.UpdateVM(ctx, "v", VMUpdate{Name: "n"}); return err },
			"PATCH", "/v1/vms/v", "", `{"name":"n"}`},
		{"update sets the ttl", func() error {
			_, err := c.UpdateVM(ctx, "v", VMUpdate{TTL: &TTL{Action: TTLDelete, Seconds: 5}})
			return err
		}, "PATCH", "/v1/vms/v", "", `{"ttl":{"action":"delete","seconds":5}}`},
		{"update clears the ttl", func() error { _, err := c.UpdateVM(ctx, "v", VMUpdate{ClearTTL: true}); return err },
			"PATCH", "/v1/vms/v", "", `{"ttl":null}`},
		{"update replaces and clears envVars", func() error {
			_, err := c.UpdateVM(ctx, "v", VMUpdate{EnvVars: map[string]string{}, Metadata: map[string]string{"k": "v"}})
			return err
		}, "PATCH", "/v1/vms/v", "", `{"metadata":{"k":"v"},"envVars":{}}`},
		{"list by status", func() error {
			rc.setBody(`[]`)
			defer rc.setBody(`{"id":"v","status":"running"}`)
			_, err := c.ListVMsWith(ctx, ListOptions{Status: StatusPaused, Metadata: map[string]string{"env": "prod"}})
			return err
		}, "GET", "/v1/vms", "metadata.env=prod&status=paused", ""},
		{"pause", func() error { _, err := c.PauseVM(ctx, "v"); return err }, "POST", "/v1/vms/v/pause", "", ""},
		{"resume", func() error { _, err := c.ResumeVMNoWait(ctx, "v"); return err }, "POST", "/v1/vms/v/resume", "", ""},
		{"refresh ttl", func() error { _, err := c.RefreshTTL(ctx, "v"); return err }, "POST", "/v1/vms/v/ttl/refresh", "", ""},
		{"create service", func() error {
			_, err := c.CreateService(ctx, "v", Service{Name: "web", Port: 8080})
			return err
		}, "POST", "/v1/vms/v/services", "", `{"name":"web","port":8080,"h2c":false}`},
		{"list services", func() error {
			rc.setBody(`[]`)
			defer rc.setBody(`{"id":"v","status":"running"}`)
			_, err := c.ListServices(ctx, "v")
			return err
		}, "GET", "/v1/vms/v/services", "", ""},
		{"put service", func() error { _, err := c.PutService(ctx, "v", "grpc", 9000, true); return err },
			"PUT", "/v1/vms/v/services/grpc", "", `{"port":9000,"h2c":true}`},
		{"delete service", func() error { return c.DeleteService(ctx, "v", "a b") }, "DELETE", "/v1/vms/v/services/a%20b", "", ""},
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
		})
	}
	if _, err := c.UpdateVM(ctx, "v", VMUpdate{TTL: &TTL{Action: TTLPause, Seconds: 1}, ClearTTL: true}); err == nil || !strings.Contains(err.Error(), "ClearTTL") {
		t.Errorf("TTL and ClearTTL together: %v, want an error naming them", err)
	}
}

func TestExtensionFieldsDecode(t *testing.T) {
	_, c := newRecorder(t, 201, `{"id":"v","status":"paused","pausedAt":"2026-05-10T10:00:00.5Z","ttlRemainingMs":1500,
		"ttl":{"action":"pause","seconds":60},"envVars":{"A":"1"},
		"effectiveFirewall":{"mode":"restricted","ingress":[{"protocol":"tcp","portStart":8080,"sourceCidrs":["::/0"],"description":"auto: proxy service web"}]},
		"snapshotRestoreWarnings":{"servicesRegistrationFailed":true,"reason":"r","unregisteredServices":[{"name":"web","port":8080},{"name":"g","port":9000,"h2c":true}]},
		"futureField":{"x":1}}`)
	vm, err := c.LaunchNoWait(context.Background(), LaunchRequest{SnapshotID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if vm.PausedAt == nil || *vm.PausedAt != "2026-05-10T10:00:00.5Z" || vm.TTLRemainingMs == nil || *vm.TTLRemainingMs != 1500 || vm.ExpiresAtMs != nil ||
		vm.TTL == nil || *vm.TTL != (TTL{TTLPause, 60}) || vm.EnvVars["A"] != "1" ||
		vm.EffectiveFirewall == nil || vm.EffectiveFirewall.Ingress[0].Description != "auto: proxy service web" {
		t.Fatalf("decoded %+v", vm)
	}
	w := vm.SnapshotRestoreWarnings
	if w == nil || !w.ServicesRegistrationFailed || w.Reason != "r" || len(w.UnregisteredServices) != 2 || !w.UnregisteredServices[1].H2C {
		t.Fatalf("warnings %+v", w)
	}
	if got := ServiceURL("web", "0b3c-44", "proxy.fastvm.org."); got != "https://web--0b3c44.proxy.fastvm.org" {
		t.Errorf("ServiceURL = %s", got)
	}
}

// Retries (spec §1, §12.2): POST /services is a no-retry POST; pause,
// resume, TTL refresh and the other services calls are retried.
func TestExtensionRetryPolicy(t *testing.T) {
	ctx := context.Background()
	for key, fn := range map[string]func(*Client) error{
		"POST /v1/vms/v/pause":       func(c *Client) error { _, err := c.PauseVM(ctx, "v"); return err },
		"POST /v1/vms/v/resume":      func(c *Client) error { _, err := c.ResumeVMNoWait(ctx, "v"); return err },
		"POST /v1/vms/v/ttl/refresh": func(c *Client) error { _, err := c.RefreshTTL(ctx, "v"); return err },
		"PUT /v1/vms/v/services/web": func(c *Client) error { _, err := c.PutService(ctx, "v", "web", 8080, false); return err },
		"GET /v1/vms/v/services": func(c *Client) error {
			_, err := c.ListServices(ctx, "v")
			return err
		},
		"DELETE /v1/vms/v/services/web": func(c *Client) error { return c.DeleteService(ctx, "v", "web") },
	} {
		t.Run(key, func(t *testing.T) {
			ok := `{"id":"v","status":"running","name":"web","port":8080}`
			if strings.HasPrefix(key, "GET") {
				ok = `[]`
			}
			f, c := newFlaky(t, 2, 503, map[string]string{"Retry-After-Ms": "1"}, ok)
			if err := fn(c); err != nil {
				t.Fatal(err)
			}
			if got := f.count(key); got != 3 {
				t.Fatalf("%d requests, want 3 (two retries)", got)
			}
		})
	}
	for _, status := range []int{503, 0} {
		f, c := newFlaky(t, 5, status, map[string]string{"X-Should-Retry": "true"}, `{}`)
		_, err := c.CreateService(ctx, "v", Service{Name: "web", Port: 8080})
		if err == nil || f.count("POST /v1/vms/v/services") != 1 {
			t.Fatalf("create service (%d): %v after %d requests, want an error after 1", status, err, f.count("POST /v1/vms/v/services"))
		}
	}
}

// resumeServer answers POST resume with 202 resuming, then GETs with the
// given statuses in turn.
func resumeServer(t *testing.T, statuses ...string) (*Client, func() []string) {
	var mu sync.Mutex
	var seen []string
	gets := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, r.Method+" "+r.URL.Path)
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusAccepted)
			fmt.Fprint(w, `{"id":"v","status":"resuming"}`)
			return
		}
		st := statuses[min(gets, len(statuses)-1)]
		gets++
		fmt.Fprintf(w, `{"id":"v","status":%q}`, st)
	}))
	t.Cleanup(srv.Close)
	c := New("k", WithBaseURL(srv.URL), WithPollInterval(100*time.Millisecond), WithWaitTimeout(5*time.Second))
	return c, func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
}

func TestResumeVMWaitsAfterA202(t *testing.T) {
	ctx := context.Background()
	c, seen := resumeServer(t, "resuming", "warming-up", "running")
	vm, err := c.ResumeVM(ctx, "v")
	if err != nil || vm.Status != StatusRunning {
		t.Fatalf("ResumeVM: %+v, %v", vm, err)
	}
	if got := seen(); len(got) != 4 || got[0] != "POST /v1/vms/v/resume" || got[1] != "GET /v1/vms/v" {
		t.Fatalf("requests %v, want the POST then GETs until running (unknown statuses in transition)", got)
	}
	// No polling after a 200 running.
	_, c2 := newRecorder(t, 200, `{"id":"v","status":"running"}`)
	if vm, err := c2.ResumeVM(ctx, "v"); err != nil || vm.Status != StatusRunning {
		t.Fatalf("ResumeVM after a 200: %+v, %v", vm, err)
	}
	// A VM that goes back to paused did not resume.
	c, _ = resumeServer(t, "resuming", "paused")
	_, err = c.ResumeVM(ctx, "v")
	var le *LaunchError
	if !errors.As(err, &le) || le.Op != "resume" || le.Status != StatusPaused || !strings.Contains(err.Error(), "failed to resume") {
		t.Fatalf("resume that ends paused: %v", err)
	}
	// WaitReady (a launch) still treats paused as in transition.
	c, _ = resumeServer(t, "paused", "running")
	if vm, err := c.WaitReady(ctx, "v"); err != nil || vm.Status != StatusRunning {
		t.Fatalf("WaitReady through paused: %+v, %v", vm, err)
	}
}

func TestVMUpdateMarshalKeepsOtherFields(t *testing.T) {
	b, err := json.Marshal(VMUpdate{Name: "x", Metadata: map[string]string{}, EnvVars: nil})
	if err != nil || string(b) != `{"name":"x","metadata":{}}` {
		t.Fatalf("%s, %v", b, err)
	}
	b, err = json.Marshal(&VMUpdate{ClearTTL: true})
	if err != nil || string(b) != `{"ttl":null}` {
		t.Fatalf("pointer: %s, %v", b, err)
	}
}
