package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The attacks of an adversarial review of the sandbox boundary, each
// performed for real from inside a machine against the engine as root and
// as an unprivileged user (engineModes). Each test fails if the attack
// works.

func randomWord(t testing.TB) string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// hostSecret writes a file outside any machine, readable by the engine's
// user only, and returns its directory and content.
func hostSecret(t *testing.T) (dir, content string) {
	dir = t.TempDir()
	content = "host-secret-" + randomWord(t)
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, content
}

// treeHolds reports the first regular file under dir whose content is want.
func treeHolds(dir, want string) string {
	var found string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && found == "" {
			if b, _ := os.ReadFile(p); strings.Contains(string(b), want) {
				found = p
			}
		}
		return nil
	})
	return found
}

// exchangeLoop is Python that swaps the directory d with the link l (to
// target) with renameat2(RENAME_EXCHANGE) as fast as it can.
func exchangeLoop(target string) string {
	return `
import ctypes, os
os.makedirs('d', exist_ok=True)
for i in range(40):
    open('d/f%d' % i, 'w').write('inside')
if not os.path.islink('l'):
    os.symlink(` + pyQuote(target) + `, 'l')
libc = ctypes.CDLL(None, use_errno=True)
print('swapping', flush=True)
while True:
    libc.renameat2(-100, b'd', -100, b'l', 2)
`
}

func pyQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `\'`) + "'" }

// TestAttackSnapshotFollowsSwappedInLink: while snapshot_vm copies the
// machine's files, code in the machine exchanges a directory with a link to
// a host directory. No snapshot may hold the host's file, nor may a machine
// launched from one read it.
func TestAttackSnapshotFollowsSwappedInLink(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		secretDir, secret := hostSecret(t)
		e := newTestEngine(t, Options{})
		m := newTestMachine(t, e, MachineSpec{})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		swapping := make(chan struct{})
		go m.Run(ctx, Command{Argv: []string{"python3", "-c", exchangeLoop(secretDir)}, Timeout: 2 * time.Minute,
			OnOutput: func(_, line string) {
				if line == "swapping" {
					close(swapping)
				}
			}})
		select {
		case <-swapping:
		case <-time.After(30 * time.Second):
			t.Fatal("the swapping loop did not start")
		}
		var last SnapshotInfo
		for i := 0; i < 100; i++ {
			s, err := m.Snapshot(context.Background(), "")
			if err != nil {
				if strings.Contains(err.Error(), secretDir) || strings.Contains(err.Error(), e.StateDir()) {
					t.Fatalf("the error names a host path: %v", err)
				}
				t.Fatalf("snapshot %d: %v", i, err)
			}
			if p := treeHolds(filepath.Join(e.StateDir(), "snapshots", s.ID), secret); p != "" {
				t.Fatalf("snapshot %d holds the host's secret file (%s)", i, p)
			}
			if i > 0 {
				e.DeleteSnapshot(last.ID)
			}
			last = s
		}
		cancel()
		info, err := e.Create(context.Background(), MachineSpec{FromSnapshot: last.ID})
		if err != nil {
			t.Fatal(err)
		}
		clone, _ := e.Machine(info.ID)
		res := mustRun(t, clone, Command{Shell: "cat d/secret.txt l/secret.txt 2>/dev/null; grep -rs " + secret + " /workspace; true"})
		if strings.Contains(res.Stdout, secret) {
			t.Fatalf("a machine launched from the snapshot reads the host's secret: %q", res.Stdout)
		}
	})
}

// osThreads is how many OS threads this process has.
func osThreads(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads line")
	return 0
}

// TestAttackSpecialFilesHoldNoThread: a machine makes a FIFO (and a link to
// one) where a file is expected. Reading it must fail at once with a clear
// error, a directory holding it must still copy out, and a thousand such
// reads must leave no thread behind.
func TestAttackSpecialFilesHoldNoThread(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
		mustRun(t, m, Command{Shell: "mkfifo fifo && ln -s fifo link && mkdir d && mkfifo d/pipe && echo data > d/f"})
		ctx := context.Background()
		before := osThreads(t)
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, 1000)
		for i := 0; i < 1000; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				name := []string{"fifo", "link", "d/pipe"}[i%3]
				_, err := m.ReadFile(ctx, name, io.Discard)
				errs <- err
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Fatalf("reading a FIFO: %v", err)
			}
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("1000 refused reads took %v", d)
		}
		var out strings.Builder
		if err := m.CopyOut(ctx, "d", &out); err != nil {
			t.Fatalf("copy out a directory holding a FIFO: %v", err)
		}
		if after := osThreads(t); after > before+20 {
			t.Fatalf("threads: %d before, %d after the reads", before, after)
		}
	})
}

// TestAttackResultForgery: user code writes results of its own to the
// driver's result descriptor: without a token, with the token of the
// instruction it runs in, and from a thread that keeps writing lines with
// that (by then stale) token during later instructions; from a child
// process; from a command through /proc. Code running in the interpreter
// may make up its own instruction's result (it could as well return any
// value), but no result may ever land on another instruction, and no other
// process may write one.
func TestAttackResultForgery(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
		expect := func(code, want string) {
			t.Helper()
			if r := mustExec(t, m, code, ExecOptions{}); value(r) != want {
				t.Fatalf("%q gave %s (error %q), want %s", code, value(r), r.Error, want)
			}
		}
		expect("import os\nos.write(4, b'{\"value\": \"\\'FORGED\\'\"}\\n')\n7", "7")
		expect("8", "8")
		// A marker of its own: the output and the result stay in place.
		if r := mustExec(t, m, "print('\\x00vmcp-end-0123\\nafter')\n9", ExecOptions{}); value(r) != "9" || !strings.Contains(r.Stdout, "after") {
			t.Fatalf("forged marker: %+v", r)
		}
		// Its own instruction's token: only that instruction's result is the
		// forged one, and a thread goes on writing it.
		expect(`import threading, sys, os, time
token = sys.modules['__main__'].request['call']
line = ('{"call": "%s", "value": "\'FORGED\'"}\n' % token).encode()
os.write(4, line)
def forge():
    while True:
        os.write(4, line)
        time.sleep(0.001)
threading.Thread(target=forge, daemon=True).start()
10`, "'FORGED'")
		for i := 11; i < 40; i++ {
			expect(strconv.Itoa(i), strconv.Itoa(i))
		}
		// Child processes and other commands cannot reach the descriptor.
		expect(`import subprocess
subprocess.run("echo '{\"value\": \"1\"}' >&4", shell=True, close_fds=False).returncode`, "2")
		res := mustRun(t, m, Command{Shell: `n=0; for p in /proc/[0-9]*; do echo '{"value": "666"}' > $p/fd/4 2>/dev/null && n=$((n+1)); done; echo $n`})
		if strings.TrimSpace(res.Stdout) != "0" {
			t.Fatalf("a command wrote to %s interpreters' result descriptors", strings.TrimSpace(res.Stdout))
		}
		expect("41", "41")
	})
}

// machineProcesses lists the command lines of the machine's processes.
func machineProcesses(m *Machine) []string {
	var out []string
	for _, pid := range m.HostPIDs() {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		out = append(out, strings.ReplaceAll(string(b), "\x00", " "))
	}
	return out
}

// TestAttackTimeoutLeavesEscapedProcesses: a command whose processes leave
// its tree, its process group and its session, drop its environment, and
// hide from /proc, then runs past its timeout. The timeout must end them
// all; a background process of a command that ended by itself stays.
func TestAttackTimeoutLeavesEscapedProcesses(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
		res, err := m.Run(context.Background(), Command{Shell: `( setsid env -i sleep 4242 & ); ` +
			`( setsid env -i python3 -c 'import ctypes, os, time; ctypes.CDLL(None).prctl(4, 0); os.setsid(); time.sleep(4343)' & ); ` +
			`nohup bash -c 'exec -a hidden-4444 sleep 4444' >/dev/null 2>&1 & disown; sleep 30`, Timeout: 2 * time.Second})
		if err != nil || !res.TimedOut {
			t.Fatalf("%+v %v", res, err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			var left []string
			for _, p := range machineProcesses(m) {
				if strings.Contains(p, "4242") || strings.Contains(p, "4343") || strings.Contains(p, "4444") {
					left = append(left, p)
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the timeout these still run: %q", left)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// Nested user namespaces, the way out of the tracking namespace,
		// are refused.
		if r := mustRun(t, m, Command{Shell: "unshare -Ur true 2>&1; echo $?"}); strings.HasSuffix(r.Stdout, "\n0\n") || r.Stdout == "0\n" {
			t.Fatalf("a machine created a user namespace: %q", r.Stdout)
		}
		// A command that ends by itself leaves its background processes be.
		mustRun(t, m, Command{Shell: "setsid sleep 4545 >/dev/null 2>&1 &"})
		time.Sleep(300 * time.Millisecond)
		if !strings.Contains(strings.Join(machineProcesses(m), "\n"), "sleep 4545") {
			t.Fatal("the background process of a finished command was killed")
		}
	})
}
