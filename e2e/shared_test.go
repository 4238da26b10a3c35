//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/tools"
)

// launchTogether starts n stdio servers on one state directory, each in a
// project directory of its own, 25 ms apart (all within 100 ms).
func launchTogether(t *testing.T, state string, n int) []*harness {
	t.Helper()
	roots := make([]string, n)
	for i := range roots {
		roots[i] = t.TempDir()
	}
	hs := make([]*harness, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hs[i], errs[i] = launch(state, roots[i], clientOptions{})
		}()
		time.Sleep(25 * time.Millisecond)
	}
	wg.Wait()
	for i, h := range hs {
		if errs[i] != nil {
			t.Fatalf("server %d: %v", i, errs[i])
		}
		h.cleanup(t)
	}
	return hs
}

// ownerOf picks the server that owns the state directory: the one that
// serves nobody's client through another. (A server's log reaches the test
// through a pipe, possibly after its client's first answer: it waits.)
func ownerOf(t *testing.T, hs []*harness) (owner *harness, others []*harness) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		owner, others = nil, nil
		for _, h := range hs {
			if strings.Contains(h.stderr(), "serving through the vmcp server") {
				others = append(others, h)
			} else if owner == nil {
				owner = h
			}
		}
		if owner != nil && len(others) == len(hs)-1 {
			return owner, others
		}
		if time.Now().After(deadline) {
			for _, h := range hs {
				t.Logf("server log:\n%s", h.stderr())
			}
			t.Fatalf("%d servers serve through another, want %d", len(others), len(hs)-1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServersShareAStateDirectory: four stdio servers started together on
// one state directory from four project directories all serve, through
// 200 mixed calls each at once; each has its own default machine; a
// conversation started through one continues through another with its
// Python variables.
func TestServersShareAStateDirectory(t *testing.T) {
	// Not parallel: its servers would load the machine under the tests
	// that time their calls.
	hs := launchTogether(t, t.TempDir(), 4)
	ownerOf(t, hs)

	const calls = 200
	machines := make([]string, len(hs))
	sessions := make([]string, len(hs))
	failures := make([][]string, len(hs))
	var wg sync.WaitGroup
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(format string, a ...any) { failures[i] = append(failures[i], fmt.Sprintf(format, a...)) }
			var last string // the text of the last result
			call := func(name string, args map[string]any, out any) bool {
				res, err := h.callErr(name, args, nil)
				if err != nil || res.IsError {
					fail("%s %v: %v %s", name, args, err, textOf(res))
					return false
				}
				last = text(res)
				if out != nil {
					if err := decodeInto(res, out); err != nil {
						fail("%s: %v", name, err)
						return false
					}
				}
				return true
			}
			for k := 0; k < calls; {
				switch {
				case k%50 == 49:
					var l tools.LaunchVMOutput
					var s tools.SnapshotVMOutput
					if call("launch_vm", map[string]any{"name": fmt.Sprintf("s%d-%d", i, k)}, &l) &&
						call("snapshot_vm", map[string]any{"machine": l.Machine}, &s) {
						call("delete_vm", map[string]any{"machine": l.Machine}, nil)
					}
					k += 3
					continue
				case k%4 == 0:
					var py tools.RunPythonOutput
					if call("run_python", map[string]any{"code": fmt.Sprintf("v = %d\nv * 2", k)}, &py) {
						if py.Value == nil || *py.Value != strconv.Itoa(2*k) {
							fail("run_python %d: %+v", k, py)
						}
						machines[i], sessions[i] = py.Machine, py.Session
					}
				case k%4 == 1:
					var c tools.ExecCommandOutput
					if call("exec_command", map[string]any{"command": fmt.Sprintf("echo %d-%d", i, k)}, &c) && c.Stdout != fmt.Sprintf("%d-%d\n", i, k) {
						fail("exec_command %d: %+v", k, c)
					}
				case k%4 == 2:
					call("upload_file", map[string]any{"path": "f.txt", "content": fmt.Sprintf("server %d call %d", i, k)}, nil)
				default:
					if call("download_file", map[string]any{"path": "f.txt"}, nil) && !strings.Contains(last, fmt.Sprintf("server %d call %d", i, k-1)) {
						fail("download_file %d: %s", k, last)
					}
				}
				k++
			}
		}()
	}
	wg.Wait()
	for i, f := range failures {
		if len(f) > 0 {
			t.Errorf("server %d: %d failed calls, first: %s", i, len(f), f[0])
		}
	}
	seen := map[string]int{}
	for i := range hs {
		if j, ok := seen[machines[i]]; ok {
			t.Errorf("servers %d and %d share default machine %s", j, i, machines[i])
		}
		seen[machines[i]] = i
		if sessions[i] == "" {
			t.Errorf("server %d: no session", i)
		}
	}

	var a tools.RunPythonOutput
	hs[0].ok(t, "run_python", map[string]any{"session": "new", "code": "shared = 'set through server 0'"}, &a)
	var b tools.RunPythonOutput
	hs[3].ok(t, "run_python", map[string]any{"session": a.Session, "code": "shared"}, &b)
	if b.Value == nil || *b.Value != "'set through server 0'" || b.Machine != a.Machine {
		t.Errorf("conversation %s through another server: %+v", a.Session, b)
	}
}

// descendants are the processes under pid.
func descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for _, c := range children[p] {
			out = append(out, c)
			walk(c)
		}
	}
	walk(pid)
	return out
}

// alive reports which of pids still exist (zombies excluded).
func alive(pids []int) []int {
	var out []int
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && f[0] == "Z" {
			continue
		}
		out = append(out, p)
	}
	return out
}

// TestOwnerKilledMidCall: kill -9 of the server that owns the state
// directory, with a call of another server's client in flight. That call
// fails with an error that says what happened; the next calls of every
// other server succeed, through whichever took the directory over; files
// written before are there; no process of the dead owner is left.
func TestOwnerKilledMidCall(t *testing.T) {
	// Not parallel: its servers would load the machine under the tests
	// that time their calls.
	hs := launchTogether(t, t.TempDir(), 3)
	owner, others := ownerOf(t, hs)
	b, c := others[0], others[1]
	b.ok(t, "upload_file", map[string]any{"path": "note.txt", "content": "written before"}, nil)
	c.ok(t, "run_python", map[string]any{"code": "1"}, nil)

	inFlight := make(chan error, 1)
	go func() {
		res, err := b.callErr("exec_command", map[string]any{"command": "sleep 60", "timeout_seconds": 120}, nil)
		if err == nil && (!res.IsError || !strings.Contains(textOf(res), "stopped before it ended")) {
			err = fmt.Errorf("want an error saying the server stopped, got %s", textOf(res))
		}
		inFlight <- err
	}()
	time.Sleep(time.Second)
	procs := descendants(owner.cmd.Process.Pid)
	if len(procs) == 0 {
		t.Fatal("the owner runs no machine processes")
	}
	killedAt := time.Now()
	if err := owner.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-inFlight:
		if err != nil {
			t.Errorf("the call in flight: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the call in flight did not end within 15 s of its server's death")
	}
	t.Logf("the call in flight ended %v after the kill", time.Since(killedAt).Round(time.Millisecond))

	if res := b.ok(t, "download_file", map[string]any{"path": "note.txt"}, nil); !strings.Contains(text(res), "written before") {
		t.Errorf("after the takeover: %s", text(res))
	}
	var py tools.RunPythonOutput
	c.ok(t, "run_python", map[string]any{"code": "1 + 1"}, &py)
	if py.Value == nil || *py.Value != "2" {
		t.Errorf("the other server after the takeover: %+v", py)
	}
	logSays(func() string { return b.stderr() + c.stderr() }, "took over the state directory")
	took := 0
	for _, h := range others {
		if strings.Contains(h.stderr(), "took over the state directory") {
			took++
		}
	}
	if took != 1 {
		t.Errorf("%d servers took the state directory over, want 1", took)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(alive(procs)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := alive(procs); len(left) > 0 {
		t.Errorf("processes of the killed owner left: %v", left)
	}
}

// TestFrontEndKilledMidCall: kill -9 of a front end during its call ends
// what the call started in the machine, and the others carry on.
func TestFrontEndKilledMidCall(t *testing.T) {
	// Not parallel: its servers would load the machine under the tests
	// that time their calls.
	hs := launchTogether(t, t.TempDir(), 3)
	owner, others := ownerOf(t, hs)
	victim, other := others[0], others[1]
	marker := fmt.Sprintf("vmcp-frontend-kill-%d", time.Now().UnixNano())
	go victim.callErr("exec_command", map[string]any{"command": "sleep 300 && echo " + marker, "timeout_seconds": 600}, nil)
	running := func() []int {
		var out []int
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			if err == nil && strings.Contains(string(b), marker) && !strings.Contains(string(b), "exec_command") {
				p, _ := strconv.Atoi(e.Name())
				out = append(out, p)
			}
		}
		return alive(out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(running()) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(running()) == 0 {
		t.Fatal("the command did not start")
	}
	victim.cmd.Process.Signal(syscall.SIGKILL)
	deadline = time.Now().Add(15 * time.Second)
	for len(running()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if p := running(); len(p) > 0 {
		t.Errorf("the killed front end's command still runs: %v", p)
	}
	owner.ok(t, "exec_command", map[string]any{"command": "true"}, nil)
	other.ok(t, "run_python", map[string]any{"code": "1"}, nil)
}

// TestProjectClientRestartsBesideOthers: a client of a project, restarted
// while another server owns the state directory, finds its conversation,
// its machine, its files and its Python variables.
func TestProjectClientRestartsBesideOthers(t *testing.T) {
	t.Parallel()
	state, project := t.TempDir(), t.TempDir()
	startIn(t, state, t.TempDir()).ok(t, "exec_command", map[string]any{"command": "true"}, nil)
	first := startIn(t, state, project)
	var before tools.RunPythonOutput
	first.ok(t, "run_python", map[string]any{"code": "kept = 7"}, &before)
	first.ok(t, "upload_file", map[string]any{"path": "p.txt", "content": "project file"}, nil)
	first.cs.Close()
	first.cmd.Wait()

	again := startIn(t, state, project)
	var after tools.RunPythonOutput
	again.ok(t, "run_python", map[string]any{"code": "kept"}, &after)
	if after.Session != before.Session || after.Machine != before.Machine || after.Value == nil || *after.Value != "7" {
		t.Errorf("after the restart: %+v, before %+v", after, before)
	}
	if res := again.ok(t, "download_file", map[string]any{"path": "p.txt"}, nil); !strings.Contains(text(res), "project file") {
		t.Errorf("the project's file: %s", text(res))
	}
}

// TestHTTPAndStdioShareAStateDirectory: an http server and a stdio server
// on one state directory both serve, at once.
func TestHTTPAndStdioShareAStateDirectory(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	s := startHTTPServer(t, state, []string{"--insecure-no-auth", "--enable-local-backend"})
	web := s.connect(t, false, "")
	stdio := startIn(t, state, t.TempDir())
	pythonTogether(t, 20, web, stdio)
	if !logSays(stdio.stderr, "serving through the vmcp server") {
		t.Errorf("the stdio server did not go through the http server:\n%s", stdio.stderr())
	}
}

// textOf is text, for a result that may be missing.
func textOf(res *mcp.CallToolResult) string {
	if res == nil {
		return "(no result)"
	}
	return text(res)
}

// decodeInto is decode for any goroutine.
func decodeInto(res *mcp.CallToolResult, out any) error {
	if res.StructuredContent == nil {
		return fmt.Errorf("no structured content; content: %s", text(res))
	}
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// TestSharedSocketServesOnlyItsUser: the socket through which servers
// share a state directory lets no other user in: its directory is the
// user's alone, and when it is not (as the fallback under /tmp could be),
// the owner still refuses a peer of another uid before serving anything.
func TestSharedSocketServesOnlyItsUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root to act as another user")
	}
	state := t.TempDir()
	os.Chmod(filepath.Dir(state), 0o755) // t.TempDir's own directory is 0700
	os.Chmod(state, 0o755)
	h := startIn(t, state, t.TempDir())
	h.ok(t, "exec_command", map[string]any{"command": "true"}, nil)
	sock := filepath.Join(state, "run", "server.sock")
	for path, want := range map[string]os.FileMode{filepath.Dir(sock): 0o700, sock: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want mode %v", path, fi.Mode(), err, want)
		}
	}
	asNobody := func() string {
		script := `import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit()
s.settimeout(10)
try:
    s.sendall(b'{"project": "/", "allowed_roots": ["/"]}\n')
    print(repr(s.recv(4096)))
except (ConnectionResetError, BrokenPipeError):
    print("b''")`
		cmd := exec.Command("/usr/bin/python3", "-c", script, sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("python3 as nobody: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := asNobody(); got != "EACCES" {
		t.Errorf("another user connecting through the socket's directory: %s", got)
	}
	os.Chmod(filepath.Dir(sock), 0o755)
	os.Chmod(sock, 0o666)
	if got := asNobody(); got != "b''" {
		t.Errorf("another user connecting to an open socket got %s; want the connection closed unanswered", got)
	}
	if !logSays(h.stderr, "refused a connection to the state directory's socket") {
		t.Errorf("the owner's log does not say it refused the connection:\n%s", h.stderr())
	}
	h.ok(t, "exec_command", map[string]any{"command": "true"}, nil)
}

// TestHTTPBesideAStdioOwner: an http server started on a state directory
// that a stdio server owns has the owner serve its endpoint, with its own
// authentication and backends, both serving at once; when the owner dies,
// the http server takes the directory over and serves on; when the http
// server stops, the owner stops serving its endpoint.
func TestHTTPBesideAStdioOwner(t *testing.T) {
	// Not parallel: its servers would load the machine under the tests
	// that time their calls.
	state := t.TempDir()
	stdio := startIn(t, state, t.TempDir())
	stdio.ok(t, "run_python", map[string]any{"code": "mine = 'stdio'"}, nil)
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-token-for-tests"})
	s := startHTTPServer(t, state, []string{"--tokens-file", tokens, "--enable-local-backend"})
	if !logSays(s.log.String, "the vmcp server that owns the state directory serves this endpoint") {
		t.Fatalf("the http server did not go through the owner:\n%s", s.log)
	}
	web := s.connect(t, false, "vmcp_alice-token-for-tests")
	pythonTogether(t, 20, web, stdio)
	// The endpoint keeps its authentication, and alice is not the local user.
	resp, err := http.Post(s.base+"/mcp", "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a request without a token: %v %v", resp.Status, err)
	}
	res := web.call(t, "run_python", map[string]any{"code": "mine"})
	if !res.IsError || !strings.Contains(text(res), "NameError") {
		t.Errorf("alice sees the local user's Python globals: %s", text(res))
	}

	stdio.cmd.Process.Signal(syscall.SIGKILL)
	if !logSays(s.log.String, "took over the state directory") {
		t.Fatalf("the http server did not take the state directory over:\n%s", s.log)
	}
	again := s.connect(t, false, "vmcp_alice-token-for-tests")
	var py tools.RunPythonOutput
	again.ok(t, "run_python", map[string]any{"code": "6 * 7"}, &py)
	if py.Value == nil || *py.Value != "42" {
		t.Errorf("after the owner died: %+v", py)
	}
}

// TestHTTPBesideStopsWithItsServer: when the http server beside an owner
// stops, its endpoint stops: nothing answers on its port.
func TestHTTPBesideStopsWithItsServer(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	stdio := startIn(t, state, t.TempDir())
	stdio.ok(t, "exec_command", map[string]any{"command": "true"}, nil)
	cmdArgs := []string{"--transport", "http", "--state-dir", state, "--insecure-no-auth", "--enable-local-backend"}
	port := freePort(t)
	cmd := exec.Command(serverBin, append(cmdArgs, "--listen", fmt.Sprintf("127.0.0.1:%d", port))...)
	log := &syncBuffer{}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the http server does not answer: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Errorf("the http server's exit: %v\n%s", err, log)
	}
	deadline = time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatalf("the owner still serves the stopped http server's endpoint")
		}
		time.Sleep(50 * time.Millisecond)
	}
	stdio.ok(t, "exec_command", map[string]any{"command": "true"}, nil)
}

// pythonTogether makes n run_python calls through each of hs at once.
func pythonTogether(t *testing.T, n int, hs ...*harness) {
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				res, err := h.callErr("run_python", map[string]any{"code": fmt.Sprintf("%d * 3", i)}, nil)
				if err != nil || res.IsError || !strings.Contains(textOf(res), strconv.Itoa(i*3)) {
					t.Errorf("call %d: %v %s", i, err, textOf(res))
					return
				}
			}
		}()
	}
	wg.Wait()
}

// logSays waits up to 20 s for a server's log to contain want (it comes
// through a pipe).
func logSays(log func() string, want string) bool {
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log(), want) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
