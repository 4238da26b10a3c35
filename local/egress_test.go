//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"fmt"
	"github.com/vmcp-dev/vmcp/internal/handoff"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local/wire"
)

// loopbackNames resolves the given test names to 127.0.0.1, others not.
func loopbackNames(names ...string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		for _, n := range names {
			if host == n {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			}
		}
		return nil, errors.New("no such host")
	}
}

// TestEgressAllowList: a machine with an allow-list reaches a listed name
// over HTTP through the proxy, and nothing else: an unlisted name gets the
// 403 that says so, an address is refused, a listed name resolving to
// loopback that the operator did not allow is refused, a connection that
// skips the proxy reaches nothing; the operator's log has each verdict.
func TestEgressAllowList(t *testing.T) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Host)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)

	e := newTestEngine(t, Options{Egress: EgressOptions{
		PrivateAllowed: []string{"pypi.test", "*.mirror.test"},
		Resolve:        loopbackNames("pypi.test", "a.mirror.test", "sneaky.test", "other.test"),
	}})
	m := newTestMachine(t, e, MachineSpec{NetworkAllow: []string{"pypi.test", "*.mirror.test", "sneaky.test"}})
	get := func(url string, extra ...string) string {
		t.Helper()
		res := mustRun(t, m, Command{Argv: append(append([]string{"curl", "-sS", "--max-time", "10"}, extra...), url)})
		return res.Stdout + res.Stderr
	}
	for _, host := range []string{"pypi.test", "a.mirror.test"} {
		if got := get("http://" + host + ":" + port + "/"); got != "hello from "+host+":"+port {
			t.Errorf("%s: %q", host, got)
		}
	}
	want403 := map[string]string{
		"http://other.test:" + port + "/":     "vmcp: other.test is not in this machine's allow-list (allowed: pypi.test, *.mirror.test, sneaky.test)",
		"http://127.0.0.1:" + port + "/":      "vmcp: 127.0.0.1 is an address",
		"http://sneaky.test:" + port + "/":    "vmcp: sneaky.test resolves to 127.0.0.1, a loopback, link-local or private address, which the operator did not allow",
		"http://mirror.test:" + port + "/":    "not in this machine's allow-list",
		"https://other.test:" + port + "/":    "", // CONNECT refused: curl reports the proxy's 403
		"https://127.0.0.1:" + port + "/":     "",
		"http://localhost:" + port + "/":      "is not in this machine's allow-list",
		"http://pypi.test.evil:" + port + "/": "is not in this machine's allow-list",
	}
	for url, want := range want403 {
		// Forced through the proxy: NO_PROXY sends loopback names to the
		// machine's own loopback, where nothing listens.
		got := get(url, "--proxy", "http://127.0.0.1:3128", "--noproxy", "")
		if strings.Contains(got, "hello from") {
			t.Errorf("%s reached the server: %q", url, got)
		}
		if want != "" && !strings.Contains(got, want) {
			t.Errorf("%s: %q, want %q", url, got, want)
		}
		if want == "" && !strings.Contains(got, "403") {
			t.Errorf("%s: %q, want the proxy's 403", url, got)
		}
	}
	// Around the proxy: no name resolves, no address is reachable.
	if got := get("http://pypi.test:"+port+"/", "--noproxy", "*"); strings.Contains(got, "hello") {
		t.Errorf("without the proxy: %q", got)
	}
	code := "import socket\ntry:\n    socket.create_connection(('127.0.0.1', " + port + "), timeout=3)\n    print('connected')\nexcept OSError as e:\n    print('refused', e)\n"
	if res := mustRun(t, m, Command{Argv: []string{"python3", "-c", code}}); !strings.HasPrefix(res.Stdout, "refused") {
		t.Errorf("a raw connection from the machine: %s", res.Stdout)
	}
	b, err := os.ReadFile(filepath.Join(m.dir, "network.log"))
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	for _, want := range []string{"allowed pypi.test:" + port, "refused other.test:" + port, "refused sneaky.test:" + port} {
		if !strings.Contains(log, want) {
			t.Errorf("the network log lacks %q:\n%s", want, log)
		}
	}
}

// TestValidateDomains refuses what is not a domain or a leading wildcard.
func TestValidateDomains(t *testing.T) {
	if err := backend.ValidateDomains([]string{"pypi.org", "*.pythonhosted.org", "files-1.example.com"}); err != nil {
		t.Error(err)
	}
	for _, bad := range [][]string{{""}, {"a.*.com"}, {"*"}, {"*.*.com"}, {"10.0.0.1"}, {"[::1]"}, {"exa mple.com"}, {".com"}, {"pypi.org/simple"}} {
		if err := backend.ValidateDomains(bad); err == nil {
			t.Errorf("backend.ValidateDomains(%q) accepted it", bad)
		}
	}
	if _, err := newTestEngine(t, Options{}).Create(context.Background(), MachineSpec{NetworkAllow: []string{"10.0.0.1"}}); err == nil {
		t.Error("a machine with an address in its allow-list was created")
	}
}

// TestServeLoopback: a machine without a network reaches a loopback service
// the engine serves on its own loopback (also beside an allow-list's proxy),
// and through it only that service: the same port of the host's loopback,
// where another server listens, stays out of reach, as does every other
// port. A service removed is refused from the next connection on.
func TestServeLoopback(t *testing.T) {
	hostSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "the host's own server")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hostSrv.Serve(ln)
	defer hostSrv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	svcLn := handoff.New("loopback-service")
	svc := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "served by the engine's process: %s %s", r.Method, r.URL.Path)
	})}
	go svc.Serve(svcLn)
	defer svc.Close()

	e := newTestEngine(t, Options{})
	if err := newTestMachine(t, e, MachineSpec{AllowNetwork: true}).ServeLoopback(port, svcLn.Serve); err == nil {
		t.Error("a machine with the host's network took a loopback service")
	}
	for _, spec := range []MachineSpec{{}, {NetworkAllow: []string{"pypi.test"}}} {
		m := newTestMachine(t, e, spec)
		if err := m.ServeLoopback(wire.EgressPort, svcLn.Serve); err == nil {
			t.Error("a loopback service took the proxy's port")
		}
		if err := m.ServeLoopback(port, svcLn.Serve); err != nil {
			t.Fatal(err)
		}
		get := func(p int, host ...string) string {
			t.Helper()
			h := append(host, "127.0.0.1")[0]
			res := mustRun(t, m, Command{Argv: []string{"curl", "-sS", "--noproxy", "*", "--max-time", "10", fmt.Sprintf("http://%s:%d/x", h, p)}})
			return res.Stdout + res.Stderr
		}
		for _, h := range []string{"127.0.0.1", "localhost", "[::1]"} {
			if got := get(port, h); got != "served by the engine's process: GET /x" {
				t.Errorf("%v: the loopback service at %s: %q", spec.NetworkAllow, h, got)
			}
		}
		if got := get(port + 1); !strings.Contains(got, "Failed to connect") {
			t.Errorf("%v: another port: %q", spec.NetworkAllow, got)
		}
		// Only an allow-list's machine has a proxy to be told of.
		res := mustRun(t, m, Command{Shell: "echo ${HTTP_PROXY:-none}"})
		if proxy := strings.TrimSpace(res.Stdout); (proxy == "none") != (len(spec.NetworkAllow) == 0) {
			t.Errorf("%v: HTTP_PROXY=%s", spec.NetworkAllow, proxy)
		}
		if err := m.ServeLoopback(port, nil); err != nil {
			t.Fatal(err)
		}
		if got := get(port); strings.Contains(got, "served") || strings.Contains(got, "host's own") {
			t.Errorf("%v: a removed loopback service answered: %q", spec.NetworkAllow, got)
		}
	}
}
