//go:build linux

package fastvm

// Issue 23, items 16-18: what a built image keeps of its Dockerfile, package
// managers in VMs, and the VMs' network.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/local"
)

// Item 16: a build's ENV is in the environment of every command (the shell
// and Python alike) of VMs launched from the image and from their
// snapshots, beneath the VM's own envVars, and in the image's
// /etc/environment; the FROM image that was not pulled is named, with the
// base actually used, in the build's result, log and error.
func TestIssue23_BuildKeepsEnvAndNamesItsBase(t *testing.T) {
	e := newEnv(t, Options{})
	dockerfile := `FROM python:3.12-slim
ENV FOO=bar GREETING="hello there"
ENV PATH=/opt/tools/bin:$PATH
RUN mkdir -p /opt/tools/bin && printf '#!/bin/sh\necho tool ran\n' > /opt/tools/bin/mytool && chmod +x /opt/tools/bin/mytool
CMD ["python3"]
`
	id := e.call("POST", "/v1/builds", mustJSON(t, map[string]any{"dockerfileContent": dockerfile}), http.StatusAccepted)["id"].(string)
	b := e.waitStatus("/v1/builds/"+id, "completed", "failed")
	base, _ := b["emulatorBase"].(string)
	warnings, _ := b["warnings"].([]any)
	log, _ := b["log"].(string)
	if !strings.HasPrefix(base, "the host's OS as the emulator's VMs see it: ") || !strings.Contains(base, "Python ") {
		t.Errorf("emulatorBase: %q", base)
	}
	if len(warnings) == 0 || !strings.Contains(warnings[0].(string), "python:3.12-slim was not used: the emulator cannot pull images") ||
		!strings.Contains(warnings[0].(string), strings.TrimPrefix(base, "the host's OS as the emulator's VMs see it: ")) {
		t.Errorf("warnings: %q", warnings)
	}
	if !strings.Contains(log, "Step 1/5: FROM python:3.12-slim\n ---> not pulled") || !strings.Contains(log, "Step 5/5: CMD") {
		t.Errorf("log:\n%s", log)
	}

	const probe = `echo "$FOO|$GREETING|$X"; mytool; python3 -c 'import os; print(os.environ["FOO"], os.environ["PATH"].split(":")[0])'; grep -E '^(FOO|GREETING)=' /etc/environment`
	want := func(foo, x string) string {
		return foo + "|hello there|" + x + "\ntool ran\n" + foo + " /opt/tools/bin\nFOO=\"bar\"\nGREETING=\"hello there\"\n"
	}
	vm := e.call("POST", "/v1/vms", `{"snapshotId":"`+b["snapshotId"].(string)+`"}`, http.StatusCreated)["id"].(string)
	if out := e.sh(vm, probe); out != want("bar", "") {
		t.Fatalf("a VM of the image:\n%s\nwant:\n%s", out, want("bar", ""))
	}
	// The VM's envVars win over the image's ENV, as docker run -e does.
	e.call("PATCH", "/v1/vms/"+vm, `{"envVars":{"FOO":"mine","X":"1"}}`, http.StatusOK)
	if out := e.sh(vm, probe); out != want("mine", "1") {
		t.Fatalf("with envVars:\n%s\nwant:\n%s", out, want("mine", "1"))
	}
	// A snapshot of that VM is still of the image.
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`, http.StatusCreated)["id"].(string)
	e.waitStatus("/v1/snapshots/"+sn, "ready", "error")
	again := e.call("POST", "/v1/vms", `{"snapshotId":"`+sn+`","envVars":{}}`, http.StatusCreated)["id"].(string)
	if out := e.sh(again, probe); out != want("bar", "") {
		t.Fatalf("a VM of a snapshot of the image's VM:\n%s\nwant:\n%s", out, want("bar", ""))
	}

	// A step that fails says which base it ran on.
	id = e.call("POST", "/v1/builds", mustJSON(t, map[string]any{"dockerfileContent": "FROM python:3.12-slim\nRUN exit 3\n"}), http.StatusAccepted)["id"].(string)
	failed := e.waitStatus("/v1/builds/"+id, "failed", "completed")
	if msg := failed["error"].(string); !strings.Contains(msg, "exit code 3") || !strings.Contains(msg, "not python:3.12-slim, which the emulator cannot pull") {
		t.Errorf("failed build's error: %q", msg)
	}
}

// Item 17: apt-get in a VM says why it cannot install packages, instead of
// "are you root?" to a root user; what only reads goes on working, in VMs
// of snapshots and builds too.
func TestIssue23_PackageManagersSayWhy(t *testing.T) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("the host has no apt-get, so its VMs have none")
	}
	e := newEnv(t, Options{})
	vm := e.launch(`{"machineType":"c1m2"}`)
	if out := e.sh(vm, "id -u"); out != "0\n" {
		t.Fatalf("id -u: %q", out)
	}
	refused := func(vm string, argv ...string) {
		t.Helper()
		res := e.execJSON(vm, argv...)
		if res.ExitCode == 0 || strings.Contains(res.Stderr, "are you root") ||
			!strings.Contains(res.Stderr, "cannot install, upgrade or remove packages in the FastVM emulator's VMs") {
			t.Errorf("%q: exit %d: %s", argv, res.ExitCode, res.Stderr)
		}
	}
	refused(vm, "apt-get", "install", "-y", "hello")
	refused(vm, "apt-get", "-qq", "update")
	refused(vm, "apt", "install", "hello")
	refused(vm, "dpkg", "-i", "/root/x.deb")
	if out := e.sh(vm, "dpkg -s dpkg | head -1; apt-get --version | head -c 3"); out != "Package: dpkg\napt" {
		t.Errorf("reading tools: %q", out)
	}
	sn := e.call("POST", "/v1/snapshots", `{"vmId":"`+vm+`"}`, http.StatusCreated)["id"].(string)
	e.waitStatus("/v1/snapshots/"+sn, "ready", "error")
	refused(e.call("POST", "/v1/vms", `{"snapshotId":"`+sn+`"}`, http.StatusCreated)["id"].(string), "apt-get", "install", "-y", "hello")

	id := e.call("POST", "/v1/builds", mustJSON(t, map[string]any{"dockerfileContent": "FROM debian\nRUN apt-get update && apt-get install -y gcc\n"}), http.StatusAccepted)["id"].(string)
	failed := e.waitStatus("/v1/builds/"+id, "failed", "completed")
	if msg := failed["error"].(string); !strings.Contains(msg, "exit code 100") || !strings.Contains(msg, "cannot install, upgrade or remove packages") {
		t.Errorf("a build's apt-get: %q", msg)
	}
}

// Item 18: a VM reaches neither a service on the host's loopback nor on its
// other addresses, nor the emulator's API (only its object URLs, on the
// VM's own loopback); files/fetch and the VM's uploads to presigned URLs
// still work, also after a restart of the emulator on another port. With
// an allow-list, a VM reaches the listed name and still nothing else.
func TestIssue23_VMsHaveANetworkOfTheirOwn(t *testing.T) {
	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "the host's service") }))
	defer host.Close()
	hostPort := host.Listener.Addr().(*net.TCPAddr).Port
	wide, err := net.Listen("tcp", ":0") // every address of the host
	if err != nil {
		t.Fatal(err)
	}
	wideSrv := &http.Server{Handler: host.Config.Handler}
	go wideSrv.Serve(wide)
	defer wideSrv.Close()
	widePort := wide.Addr().(*net.TCPAddr).Port
	var hostAddrs []string
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
				hostAddrs = append(hostAddrs, net.JoinHostPort(p.Addr().String(), fmt.Sprint(widePort)))
			}
		}
	}

	dir := t.TempDir()
	e := newEnvEngine(t, local.Options{StateDir: dir, Egress: local.EgressOptions{
		PrivateAllowed: []string{"mirror.test"},
		Resolve: func(_ context.Context, name string) ([]netip.Addr, error) {
			if name == "mirror.test" {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			}
			return nil, fmt.Errorf("no such host %s", name)
		},
	}}, Options{VMNetworkAllow: []string{"mirror.test"}})
	vm := e.launch(`{"machineType":"c1m2"}`)
	emuPort := e.srv.Listener.Addr().(*net.TCPAddr).Port

	unreachable := func(e *env, vm string) {
		t.Helper()
		targets := append([]string{fmt.Sprintf("127.0.0.1:%d", hostPort), fmt.Sprintf("127.0.0.1:%d", widePort)}, hostAddrs...)
		for _, target := range targets {
			// Around the proxy, and through it: an address is refused there.
			for _, via := range []string{"--noproxy '*'", ""} {
				res := e.execJSON(vm, "sh", "-c", "curl -sS --fail --max-time 5 "+via+" http://"+target+"/")
				if res.ExitCode == 0 || strings.Contains(res.Stdout, "the host's service") {
					t.Errorf("the VM reached %s (%s): exit %d: %s%s", target, via, res.ExitCode, res.Stdout, res.Stderr)
				}
			}
		}
		port := e.srv.Listener.Addr().(*net.TCPAddr).Port
		for _, p := range []string{"/healthz", "/v1/vms", "/v1/org/quotas"} {
			res := e.execJSON(vm, "sh", "-c", fmt.Sprintf("curl -sS --max-time 5 -H 'X-API-Key: %s' -w ' %%{http_code}' http://127.0.0.1:%d%s", testKey, port, p))
			if !strings.HasSuffix(res.Stdout, " 403") || !strings.Contains(res.Stdout, "a VM reaches only the emulator's presigned object URLs") {
				t.Errorf("the VM's GET %s of the emulator: %s%s", p, res.Stdout, res.Stderr)
			}
		}
	}
	unreachable(e, vm)
	// The operator's allow-list is the one way out, through the proxy.
	if out := e.sh(vm, fmt.Sprintf("curl -sS --max-time 10 http://mirror.test:%d/", hostPort)); out != "the host's service" {
		t.Errorf("the allow-listed name: %q", out)
	}

	files := func(e *env, vm, content string) {
		t.Helper()
		presign := func() (string, string) {
			r := e.call("POST", "/v1/vms/"+vm+"/files/presign", `{"path":"/root/f"}`, http.StatusOK)
			return r["uploadUrl"].(string), r["downloadUrl"].(string)
		}
		up, down := presign()
		if status, b := httpDo(t, "PUT", up, bytes.NewReader([]byte(content)), "Content-Type", "application/octet-stream"); status != http.StatusOK {
			t.Fatalf("upload: %d %s", status, b)
		}
		r := e.call("POST", "/v1/vms/"+vm+"/files/fetch", mustJSON(t, map[string]any{"url": down, "path": "/root/in/f.txt"}), http.StatusOK)
		if r["exitCode"] != 0.0 {
			t.Fatalf("fetch: %v", r)
		}
		// The SDKs' download: the VM uploads to the signed URL with curl.
		up, down = presign()
		e.sh(vm, "sed 's/^/echo: /' /root/in/f.txt > /root/out.txt && curl --fail --show-error -s -X PUT -H 'Content-Type: application/octet-stream' -T /root/out.txt '"+up+"'")
		if status, b := httpDo(t, "GET", down, nil); status != http.StatusOK || string(b) != "echo: "+content {
			t.Fatalf("download: %d %q", status, b)
		}
	}
	files(e, vm, "round trip\n")

	// After a restart on another port, the VM (stopped with the old
	// engine) starts again with the new port served.
	e.close()
	e2 := newEnvEngine(t, local.Options{StateDir: dir}, Options{})
	if port := e2.srv.Listener.Addr().(*net.TCPAddr).Port; port == emuPort {
		t.Logf("the restarted emulator happens to listen on the same port %d", port)
	}
	files(e2, vm, "after the restart\n")
	unreachable(e2, vm)
}
