//go:build linux

package e2e

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/tools"
)

// demoWheel builds a pure-Python wheel of package vmcpdemo 1.0.
func demoWheel(t *testing.T) []byte {
	t.Helper()
	files := map[string]string{
		"vmcpdemo/__init__.py":                 "VALUE = 'installed through the proxy'\n",
		"vmcpdemo-1.0.dist-info/METADATA":      "Metadata-Version: 2.1\nName: vmcpdemo\nVersion: 1.0\n",
		"vmcpdemo-1.0.dist-info/WHEEL":         "Wheel-Version: 1.0\nGenerator: vmcp-e2e\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
		"vmcpdemo-1.0.dist-info/top_level.txt": "vmcpdemo\n",
	}
	var buf bytes.Buffer
	z := zip.NewWriter(&buf)
	var record strings.Builder
	for _, name := range []string{"vmcpdemo/__init__.py", "vmcpdemo-1.0.dist-info/METADATA", "vmcpdemo-1.0.dist-info/WHEEL", "vmcpdemo-1.0.dist-info/top_level.txt"} {
		w, err := z.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(files[name]))
		sum := sha256.Sum256([]byte(files[name]))
		fmt.Fprintf(&record, "%s,sha256=%s,%d\n", name, base64.RawURLEncoding.EncodeToString(sum[:]), len(files[name]))
	}
	record.WriteString("vmcpdemo-1.0.dist-info/RECORD,,\n")
	w, _ := z.Create("vmcpdemo-1.0.dist-info/RECORD")
	w.Write([]byte(record.String()))
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// packageIndex serves a PEP 503 simple index holding the demo wheel, on a
// loopback port.
func packageIndex(t *testing.T) (port string) {
	t.Helper()
	wheel := demoWheel(t)
	const file = "vmcpdemo-1.0-py3-none-any.whl"
	mux := http.NewServeMux()
	mux.HandleFunc("/simple/vmcpdemo/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<html><body><a href="/files/%s">%s</a></body></html>`, file, file)
	})
	mux.HandleFunc("/files/"+file, func(w http.ResponseWriter, r *http.Request) { w.Write(wheel) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "index at %s", r.Host) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
}

// TestNetworkPolicy: machines have no network unless launched with an
// allow-list within the operator's; through it pip installs into the
// machine from a (loopback) package index and the package imports in
// run_python; a machine without network says why pip failed; bad policies
// create no machine; the host's Python is untouched.
func TestNetworkPolicy(t *testing.T) {
	// Not parallel: its servers would load the machine under the tests
	// that time their calls.
	port := packageIndex(t)
	web := startHTTPServer(t, t.TempDir(), []string{"--insecure-no-auth", "--enable-local-backend"})
	webPort := web.base[strings.LastIndexByte(web.base, ':')+1:]
	h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{
		serverArgs: []string{"--network-allow", "pypi.test,*.mirror.test,other.test", "--network-allow-private", "pypi.test"},
		serverEnv:  []string{"VMCP_TEST_RESOLVE_LOOPBACK=pypi.test,other.test"},
	})
	var info tools.SessionInfoOutput
	h.ok(t, "session_info", nil, &info)
	if info.Network.Default != "none" || strings.Join(info.Network.Allowed, ",") != "pypi.test,*.mirror.test,other.test" || info.Network.Open {
		t.Errorf("session_info network: %+v", info.Network)
	}

	// A machine without network: pip fails at once, and the result says why.
	pip := fmt.Sprintf("pip install --index-url http://pypi.test:%s/simple --trusted-host pypi.test vmcpdemo", port)
	var none tools.ExecCommandOutput
	res := h.call(t, "exec_command", map[string]any{"command": pip, "timeout_seconds": 60})
	decode(t, res, &none)
	if none.ExitCode == 0 || !strings.Contains(text(res), "this machine has no network (policy none)") {
		t.Errorf("pip in a machine without network: %s", text(res))
	}

	// Bad policies: clear errors, no machine.
	var before tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &before)
	for _, bad := range []struct {
		network any
		want    string
	}{
		{"open", "not enabled on this server"},
		{[]string{"evil.test"}, "not among the domains this server allows"},
		{[]string{"a.*.mirror.test"}, "a wildcard may only begin a domain"},
		{[]string{"127.0.0.1"}, "is an address"},
		{[]string{""}, "empty domain"},
		{[]string{"*.test"}, "not among the domains this server allows"},
		{"everything", "value must be one of 'none', 'open'"},
	} {
		h.fails(t, "launch_vm", map[string]any{"network": bad.network}, bad.want)
	}
	var after tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &after)
	if len(after.Machines) != len(before.Machines) {
		t.Errorf("a bad policy created a machine: %d machines, before %d", len(after.Machines), len(before.Machines))
	}

	var launched tools.LaunchVMOutput
	h.ok(t, "launch_vm", map[string]any{"network": []string{"pypi.test", "x.mirror.test", "other.test"}}, &launched)
	if launched.Network != "allowlist: pypi.test, x.mirror.test, other.test" {
		t.Errorf("launch_vm network: %+v", launched)
	}
	curl := func(url string, args ...string) string {
		var out tools.ExecCommandOutput
		h.ok(t, "exec_command", map[string]any{"argv": append(append([]string{"curl", "-sS", "--max-time", "10"}, args...), url)}, &out)
		return out.Stdout + out.Stderr
	}
	if got := curl("http://pypi.test:" + port + "/"); got != "index at pypi.test:"+port {
		t.Errorf("a listed name: %q", got)
	}
	if got := curl("http://unlisted.test:" + port + "/"); !strings.Contains(got, "vmcp: unlisted.test is not in this machine's allow-list (allowed: pypi.test, x.mirror.test, other.test)") {
		t.Errorf("an unlisted name: %q", got)
	}
	if got := curl("http://other.test:" + port + "/"); !strings.Contains(got, "resolves to 127.0.0.1") {
		t.Errorf("a listed name on loopback the operator did not allow: %q", got)
	}
	// The server's own http endpoint (and anything else on the host's
	// loopback) is out of reach: by address, by localhost, by a name.
	proxied := []string{"--proxy", "http://127.0.0.1:3128", "--noproxy", ""}
	for _, url := range []string{"http://127.0.0.1:" + webPort + "/healthz", "http://localhost:" + webPort + "/healthz", "http://other.test:" + webPort + "/healthz"} {
		if got := curl(url, proxied...); !strings.Contains(got, "vmcp: ") || strings.Contains(got, "ok") {
			t.Errorf("%s from the machine: %q", url, got)
		}
	}
	var raw tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"argv": []string{"python3", "-c",
		"import socket\ntry:\n    socket.create_connection(('127.0.0.1', " + webPort + "), timeout=3); print('connected')\nexcept OSError as e:\n    print('refused', e)"}}, &raw)
	if !strings.HasPrefix(raw.Stdout, "refused") {
		t.Errorf("a raw connection to the host: %s", raw.Stdout)
	}

	var installed tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": pip, "timeout_seconds": 120}, &installed)
	if installed.ExitCode != 0 || !strings.Contains(installed.Stdout, "Successfully installed vmcpdemo-1.0") {
		t.Fatalf("pip through the proxy: %+v", installed)
	}
	var py tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "import vmcpdemo\nvmcpdemo.VALUE"}, &py)
	if py.Value == nil || *py.Value != "'installed through the proxy'" {
		t.Errorf("import in run_python: %+v", py)
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import vmcpdemo").CombinedOutput(); err == nil {
		t.Errorf("the host's Python imports the machine's package: %s", out)
	}
}

// TestPytestInAMachine: the agent's everyday task: a project with a
// failing test, the fix, the test passes.
func TestPytestInAMachine(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.ok(t, "upload_file", map[string]any{"path": "proj/calc.py", "content": "def add(a, b):\n    return a - b\n"}, nil)
	h.ok(t, "upload_file", map[string]any{"path": "proj/test_calc.py", "content": "from calc import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"}, nil)
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "cd proj && python3 -m pytest -q", "timeout_seconds": 120}, &out)
	if out.ExitCode != 1 || !strings.Contains(out.Stdout, "1 failed") {
		t.Fatalf("pytest before the fix: %+v", out)
	}
	h.ok(t, "upload_file", map[string]any{"path": "proj/calc.py", "content": "def add(a, b):\n    return a + b\n"}, nil)
	h.ok(t, "exec_command", map[string]any{"command": "cd proj && python3 -m pytest -q", "timeout_seconds": 120}, &out)
	if out.ExitCode != 0 || !strings.Contains(out.Stdout, "1 passed") {
		t.Fatalf("pytest after the fix: %+v", out)
	}
}
