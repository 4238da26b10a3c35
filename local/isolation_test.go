//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func itoa(i int) string { return strconv.Itoa(i) }

// Each test here tries something a sandbox must not allow, from inside a
// machine, and checks from the host that it did not happen.

func TestIsolationNoNetwork(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	code := "import socket\ndef probe():\n    try:\n        socket.create_connection(('127.0.0.1', " + itoa(port) + "), timeout=2)\n        return 'connected'\n    except OSError as e:\n        return 'refused: ' + str(e)\nprobe()"
	r := mustExec(t, m, code, PythonOptions{})
	if !strings.HasPrefix(value(r), "'refused") {
		t.Fatalf("connection from the machine: %s %s", value(r), r.Error)
	}
	select {
	case <-accepted:
		t.Fatal("the host listener accepted a connection from the machine")
	default:
	}
	// The same probe from a machine that may use the network connects: the
	// refusal above is the sandbox's doing.
	open := newTestMachine(t, m.e, MachineSpec{AllowNetwork: true})
	if r := mustExec(t, open, code, PythonOptions{}); value(r) != "'connected'" {
		t.Fatalf("machine with network: %s %s", value(r), r.Error)
	}
	<-accepted
	res := mustRun(t, m, Command{Shell: "ls /sys/class/net 2>/dev/null || ip -o link 2>/dev/null || cat /proc/net/dev"})
	if strings.Contains(res.Stdout, "eth") || strings.Contains(res.Stdout, "ens") {
		t.Fatalf("machine sees host interfaces: %q", res.Stdout)
	}
}

func TestIsolationNoHostWrites(t *testing.T) {
	state := t.TempDir()
	e := newTestEngine(t, Options{StateDir: state})
	m := newTestMachine(t, e, MachineSpec{})
	other := newTestMachine(t, e, MachineSpec{})
	targets := []string{"/etc", "/usr", "/usr/local/bin", "/var/tmp", "/opt", "/root", "/home", "/tmp", state, filepath.Join(state, "machines", other.ID(), "workspace"), os.TempDir()}
	probe := "vmcp-probe-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var script strings.Builder
	for _, d := range targets {
		script.WriteString("mkdir -p " + d + " 2>/dev/null; touch " + filepath.Join(d, probe) + " 2>/dev/null; ")
	}
	script.WriteString("echo 1 > /proc/sys/kernel/core_pattern 2>/dev/null; true")
	mustRun(t, m, Command{Shell: script.String()})
	for _, d := range targets {
		if _, err := os.Stat(filepath.Join(d, probe)); err == nil {
			os.Remove(filepath.Join(d, probe))
			t.Errorf("the machine wrote %s on the host", filepath.Join(d, probe))
		}
	}
	// Its own workspace is writable, and is where the host sees it.
	mustRun(t, m, Command{Shell: "touch /workspace/" + probe})
	if _, err := os.Stat(filepath.Join(state, "machines", m.ID(), "workspace", probe)); err != nil {
		t.Fatalf("the workspace write did not land: %v", err)
	}
}

func TestIsolationEnvironmentIsScrubbed(t *testing.T) {
	t.Setenv("VMCP_TEST_SECRET_TOKEN", "s3cr3t-value")
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	res := mustRun(t, m, Command{Shell: "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'"})
	if strings.Contains(res.Stdout, "s3cr3t") || strings.Contains(res.Stdout, "VMCP_TEST_SECRET") {
		t.Fatal("the engine's environment reached the machine")
	}
	r := mustExec(t, m, "import os; os.environ.get('VMCP_TEST_SECRET_TOKEN')", PythonOptions{})
	if r.Value != nil {
		t.Fatalf("Python sees the secret: %s", value(r))
	}
	if !strings.Contains(res.Stdout, "HOME=/workspace") {
		t.Fatalf("environment lacks HOME: %q", res.Stdout)
	}
}

func TestIsolationNoHostProcesses(t *testing.T) {
	marker := exec.Command("sleep", "299.123")
	if err := marker.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { marker.Process.Kill(); marker.Wait() }()
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	res := mustRun(t, m, Command{Shell: "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'"})
	if strings.Contains(res.Stdout, "299.123") {
		t.Fatal("the machine sees a host process")
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if n, _ := strconv.Atoi(lines[len(lines)-1]); n == 0 || n > 10 {
		t.Fatalf("the machine sees %d processes", n)
	}
	if r := mustRun(t, m, Command{Argv: []string{"id", "-u"}}); strings.TrimSpace(r.Stdout) == "0" {
		t.Fatal("workspace machines run as root")
	}
}

// limitModes runs a test with cgroup limits, when this host allows them,
// and with the rlimits the engine falls back to otherwise.
func limitModes(t *testing.T, test func(t *testing.T, e *Engine)) {
	t.Run("rlimits", func(t *testing.T) {
		e := newTestEngine(t, Options{})
		e.cgroups = &cgroupManager{mode: "none"}
		test(t, e)
	})
	t.Run("cgroups", func(t *testing.T) {
		e := newTestEngine(t, Options{})
		if !e.cgroups.enabled() {
			t.Skip("this host does not let the engine create cgroups (it needs root)")
		}
		test(t, e)
	})
}

// TestIsolationStopEndsEveryProcess: when Stop returns, no process of the machine
// runs any more, not even one in a session of its own that holds a lock on
// the machine's files: the next sandbox must not meet it.
func TestIsolationStopEndsEveryProcess(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		e := newTestEngine(t, Options{})
		flavours := []Flavour{Workspace}
		if os.Geteuid() == 0 {
			flavours = append(flavours, VM)
		}
		for _, f := range flavours {
			m := newTestMachine(t, e, MachineSpec{Flavour: f})
			for round := 0; round < 3; round++ {
				mustRun(t, m, Command{Shell: "setsid flock lock sleep 1000 >/dev/null 2>&1 < /dev/null & sleep 0.05; setsid sh -c 'sleep 1000 & sleep 1000' >/dev/null 2>&1 &"})
				// flock and its sleep, sh and its two sleeps.
				var pids []int
				for deadline := time.Now().Add(5 * time.Second); len(pids) < 5 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					_, pids = m.userProcesses(readProcesses())
				}
				var fds []unix.PollFd
				for _, pid := range pids {
					if fd, err := unix.PidfdOpen(pid, 0); err == nil {
						defer unix.Close(fd)
						fds = append(fds, unix.PollFd{Fd: int32(fd), Events: unix.POLLIN})
					}
				}
				if len(fds) < 5 {
					t.Fatalf("%s machine, round %d: found %d processes: %v", f, round, len(fds), pids)
				}
				m.Stop()
				if n, err := unix.Poll(fds, 0); err != nil || n != len(fds) {
					t.Fatalf("%s machine, round %d: %d of the machine's %d processes ended when Stop returned (%v)", f, round, n, len(fds), err)
				}
			}
		}
	})
}

func TestIsolationForkBombIsContained(t *testing.T) { limitModes(t, testForkBomb) }

func testForkBomb(t *testing.T, e *Engine) {
	m := newTestMachine(t, e, MachineSpec{Limits: Limits{Processes: 64}})
	bystander := newTestMachine(t, e, MachineSpec{})
	mustRun(t, bystander, Command{Argv: []string{"true"}})
	type outcome struct {
		res *CommandResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := m.Run(context.Background(), Command{Shell: "bomb() { bomb | bomb & }; bomb; sleep 5", Timeout: 4 * time.Second})
		done <- outcome{res, err}
	}()
	time.Sleep(1500 * time.Millisecond)
	if n := len(m.HostPIDs()); n > 64+agentReserve {
		t.Errorf("the bomb reached %d processes, limit 64", n)
	}
	// The host and other machines still work during the bomb.
	if out, err := exec.Command("sh", "-c", "echo host-ok").Output(); err != nil || string(out) != "host-ok\n" {
		t.Errorf("the host cannot start processes: %v", err)
	}
	if res := mustRun(t, bystander, Command{Shell: "echo fine"}); res.Stdout != "fine\n" {
		t.Errorf("another machine is affected: %+v", res)
	}
	o := <-done
	if o.err != nil || !o.res.TimedOut {
		t.Fatalf("the bomb: %+v, %v; want a timeout", o.res, o.err)
	}
	// The machine recovers once the bomb is killed.
	if res := mustRun(t, m, Command{Shell: "echo recovered"}); res.Stdout != "recovered\n" {
		t.Fatalf("after the bomb: %+v", res)
	}
}

func TestIsolationMemoryLimit(t *testing.T) { limitModes(t, testMemoryLimit) }

func testMemoryLimit(t *testing.T, e *Engine) {
	const limit = 256 << 20
	m := newTestMachine(t, e, MachineSpec{Limits: Limits{MemoryBytes: limit}})
	mustExec(t, m, "x = 1", PythonOptions{})
	r := mustExec(t, m, "data = b'\\x01' * (4 * "+itoa(limit)+")", PythonOptions{Timeout: time.Minute})
	if r.Error == "" || !(strings.Contains(r.Error, "MemoryError") || strings.Contains(r.Error, "memory")) {
		t.Fatalf("allocating 4x the limit: %+v", r)
	}
	t.Logf("error: %s", r.Error)
	// The engine and the machine go on.
	if r := mustExec(t, m, "1 + 1", PythonOptions{}); value(r) != "2" {
		t.Fatalf("after the memory error: %+v", r)
	}
	res := mustRun(t, m, Command{Shell: "python3 -c \"b = bytearray(" + itoa(4*limit) + "); b[::4096] = b'x' * len(b[::4096])\"; echo exit=$?"})
	if !strings.Contains(res.Stdout, "exit=") || strings.Contains(res.Stdout, "exit=0") {
		t.Fatalf("a command exceeded the memory limit: %+v", res)
	}
}

func TestIsolationDiskQuota(t *testing.T) {
	const quota = 64 << 20
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{Limits: Limits{DiskBytes: quota}})
	ctx := context.Background()
	// One file past the quota stops at it.
	res := mustRun(t, m, Command{Shell: "head -c 100M /dev/zero > big; echo exit=$?; stat -c %s big"})
	if !strings.Contains(res.Stderr, "File too large") || strings.Contains(res.Stdout, "exit=0") {
		t.Fatalf("one big file: %+v", res)
	}
	mustRun(t, m, Command{Shell: "rm big"})
	// Many files that add up are stopped too.
	res = mustRun(t, m, Command{Shell: "for i in $(seq 1 200); do head -c 1M /dev/zero > f$i; done; sleep 3", Timeout: 30 * time.Second})
	if !res.QuotaExceeded || !strings.Contains(res.Stderr, "disk quota") {
		t.Fatalf("many files: %+v", res)
	}
	used, _ := m.DiskUsage()
	t.Logf("usage when stopped: %d MiB of %d", used>>20, quota>>20)
	if used > 2*quota {
		t.Fatalf("usage ran to %d MiB", used>>20)
	}
	// Uploads are refused while full, and work again after a cleanup.
	if _, err := m.WriteFile(ctx, "more.txt", strings.NewReader("x"), 0); err == nil || !strings.Contains(err.Error(), "quota") {
		t.Fatalf("upload while full: %v", err)
	}
	mustRun(t, m, Command{Shell: "rm -f f*"})
	if _, err := m.WriteFile(ctx, "more.txt", strings.NewReader("x"), 0); err != nil {
		t.Fatalf("upload after cleanup: %v", err)
	}
	// Python is held to it as well.
	r := mustExec(t, m, "for i in range(200):\n    open('p%d' % i, 'wb').write(b'\\0' * (1 << 20))\nimport time; time.sleep(3)", PythonOptions{Timeout: 30 * time.Second})
	if !strings.Contains(r.Error, "disk quota") {
		t.Fatalf("python past the quota: %+v", r)
	}
}
