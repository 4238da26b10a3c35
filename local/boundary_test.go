//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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
func osThreads(t *testing.T) int { return procStatus(t, "self", "Threads") }

// procStatus reads a number of /proc/<pid>/status.
func procStatus(t *testing.T, pid, field string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatalf("no %s line in /proc/%s/status", field, pid)
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
			if r := mustExec(t, m, code, PythonOptions{}); value(r) != want {
				t.Fatalf("%q gave %s (error %q), want %s", code, value(r), r.Error, want)
			}
		}
		expect("import os\nos.write(4, b'{\"value\": \"\\'FORGED\\'\"}\\n')\n7", "7")
		expect("8", "8")
		// A marker of its own: the output and the result stay in place.
		if r := mustExec(t, m, "print('\\x00vmcp-end-0123\\nafter')\n9", PythonOptions{}); value(r) != "9" || !strings.Contains(r.Stdout, "after") {
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
		// Nothing a machine runs has a capability (the agent's are its
		// own), and nested user namespaces, the way out of the tracking
		// namespace, are refused.
		if r := mustRun(t, m, Command{Shell: "grep -E '^Cap(Eff|Prm|Amb)' /proc/self/status"}); strings.Count(r.Stdout, "0000000000000000") != 3 {
			t.Fatalf("a command has capabilities:\n%s", r.Stdout)
		}
		if r := mustExec(t, m, "[l for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm', 'CapAmb'))]", PythonOptions{}); strings.Count(value(r), "0000000000000000") != 3 {
			t.Fatalf("the REPL has capabilities: %s", value(r))
		}
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

// TestAttackVMRootIsHostRoot: root in a VM machine tries what only the
// host's root may do: set the kernel's core pattern (which ran a payload as
// host root when a process crashed), trigger sysrq, leave a setuid-root
// file on the host's disk. Its root must be root of its own user namespace
// only, its files owned on the host by an unprivileged id range.
func TestAttackVMRootIsHostRoot(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		e := newTestEngine(t, Options{})
		if os.Geteuid() != 0 {
			if _, err := e.Create(context.Background(), MachineSpec{Flavour: VM}); err == nil || !strings.Contains(err.Error(), "need the engine to run as root") {
				t.Fatalf("a VM on an unprivileged engine: %v", err)
			}
			return
		}
		pattern, _ := os.ReadFile("/proc/sys/kernel/core_pattern")
		vm := newTestMachine(t, e, MachineSpec{Flavour: VM})
		payload := "/tmp/vmcp-payload-" + randomWord(t)
		res := mustRun(t, vm, Command{Shell: `id -u
printf '#!/bin/sh\ntouch ` + payload + `\n' > /root/payload; chmod +x /root/payload
echo "|/root/payload" > /proc/sys/kernel/core_pattern && echo wrote-core-pattern
echo h > /proc/sysrq-trigger && echo wrote-sysrq
echo 1 > /proc/sys/kernel/sysrq && echo wrote-sysctl
mount -o remount,rw /proc/sys 2>/dev/null && echo > /proc/sys/kernel/core_pattern && echo remounted
cp /bin/sh /root/suid && chmod 4755 /root/suid && mkdir -p /usr/local/vmcp && cp /bin/sh /usr/local/vmcp/suid && chmod 4755 /usr/local/vmcp/suid && echo setuid-made
sh -c 'kill -SEGV $$'; true`})
		if !strings.HasPrefix(res.Stdout, "0\n") {
			t.Fatalf("the VM's user is not root: %q", res.Stdout)
		}
		for _, bad := range []string{"wrote-core-pattern", "wrote-sysrq", "wrote-sysctl", "remounted"} {
			if strings.Contains(res.Stdout, bad) {
				t.Errorf("the VM's root could do it: %s", bad)
			}
		}
		if now, _ := os.ReadFile("/proc/sys/kernel/core_pattern"); string(now) != string(pattern) {
			os.WriteFile("/proc/sys/kernel/core_pattern", pattern, 0)
			t.Fatalf("the host's core pattern changed to %q", now)
		}
		time.Sleep(200 * time.Millisecond)
		if _, err := os.Stat(payload); err == nil {
			os.Remove(payload)
			t.Fatal("the payload ran on the host")
		}
		if !strings.Contains(res.Stdout, "setuid-made") {
			t.Fatalf("setuid files could not be made inside: %q %q", res.Stdout, res.Stderr)
		}
		// Everything the VM's root made is owned on the host by its range,
		// never by the host's root.
		base := e.opts.VMHostIDBase
		filepath.WalkDir(filepath.Join(vm.dir, "root", "upper"), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			fi, _ := os.Lstat(p)
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) < base || int(st.Uid) >= base+vmIDs || int(st.Gid) < base || int(st.Gid) >= base+vmIDs {
				t.Errorf("%s is owned by %d:%d on the host, outside the VM's range", p, st.Uid, st.Gid)
			}
			return nil
		})
		for _, p := range []string{"root/upper/root/suid", "root/upper/usr/local/vmcp/suid"} {
			fi, err := os.Stat(filepath.Join(vm.dir, p))
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); st.Uid != uint32(base) || fi.Mode()&fs.ModeSetuid == 0 {
				t.Errorf("%s: mode %v, owner %d; want setuid to %d", p, fi.Mode(), st.Uid, base)
			}
		}
		// No mount of the VM names a host path.
		res = mustRun(t, vm, Command{Shell: "cat /proc/self/mountinfo"})
		if strings.Contains(res.Stdout, e.StateDir()) {
			t.Errorf("the VM's mountinfo names the state directory:\n%s", res.Stdout)
		}
	})
}

// waitStill waits until f stops changing (the same value twice, 500 ms
// apart) and returns it; it fails the test after limit.
func waitStill(t *testing.T, limit time.Duration, f func() int64) int64 {
	t.Helper()
	deadline := time.Now().Add(limit)
	prev := f()
	for time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		now := f()
		if now == prev {
			return now
		}
		prev = now
	}
	t.Fatalf("still changing after %v (now %d)", limit, prev)
	return 0
}

// TestAttackDiskQuotaAfterIdling: a writer that waits until its machine
// has been idle long enough that the monitor walks its files seldom (see
// idleMeasureEvery), then writes at a pace below the monitor's burst
// detection, is stopped at the quota all the same: its writing is CPU
// time of the machine.
func TestAttackDiskQuotaAfterIdling(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		const quota = 32 << 20
		// 1 MiB every 20 ms or more (30-50 MiB/s here), far below burstBytes
		// per tick: a look every measureEvery stops it within about 13 MiB,
		// one every idleMeasureEvery would let it write 100 MiB or more.
		const slack = 32 << 20
		e := newTestEngine(t, Options{})
		m := newTestMachine(t, e, MachineSpec{Limits: Limits{DiskBytes: quota}})
		usage := func() int64 { u, _ := m.measure(); return u.Bytes }
		mustRun(t, m, Command{Shell: `nohup sh -c 'sleep 1; i=0; while [ $i -lt 500 ]; do head -c 1M /dev/zero > late$i 2>/dev/null; sleep 0.02; i=$((i+1)); done' >/dev/null 2>&1 &`})
		for deadline := time.Now().Add(20 * time.Second); usage() < 8<<20; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the writer did not start: %d bytes", usage())
			}
		}
		used := waitStill(t, 30*time.Second, usage)
		t.Logf("the late writer stopped at %d MiB of %d", used>>20, quota>>20)
		if used > quota+slack {
			t.Fatalf("a writer that began after its machine idled reached %d MiB under a %d MiB quota", used>>20, quota>>20)
		}
		if ps := strings.Join(machineProcesses(m), "\n"); strings.Contains(ps, "head -c") || strings.Contains(ps, "late") {
			t.Fatalf("the writer still runs:\n%s", ps)
		}
	})
}

// TestAttackDiskQuotaOnPooledMachine: the monitor does not measure the
// warm pool's machines (only the engine's code runs there), so a machine
// handed out from the pool must be measured from then on: a writer left
// by its first command is stopped at the quota.
func TestAttackDiskQuotaOnPooledMachine(t *testing.T) {
	const quota = 64 << 20
	const slack = 96 << 20 // as in TestAttackDiskQuotaOutsideCalls
	e := newTestEngine(t, Options{Limits: Limits{DiskBytes: quota}, Warm: WarmOptions{Machines: 1}})
	waitWarm(t, e, 1, time.Minute)
	pooled := e.warm.machines()[0].ID()
	m := newTestMachine(t, e, MachineSpec{})
	if m.ID() != pooled {
		t.Fatal("the machine did not come from the pool")
	}
	mustRun(t, m, Command{Shell: `nohup sh -c 'i=0; while :; do head -c 1M /dev/zero > bg$i 2>/dev/null; i=$((i+1)); done' >/dev/null 2>&1 &`})
	used := waitStill(t, 20*time.Second, func() int64 { u, _ := m.measure(); return u.Bytes })
	t.Logf("the writer stopped at %d MiB of %d", used>>20, quota>>20)
	if used > quota+slack {
		t.Fatalf("a writer on a pooled machine reached %d MiB under a %d MiB quota", used>>20, quota>>20)
	}
	if ps := strings.Join(machineProcesses(m), "\n"); strings.Contains(ps, "head -c") || strings.Contains(ps, "while") {
		t.Fatalf("the writer still runs:\n%s", ps)
	}
}

// TestAttackDiskQuotaOutsideCalls: a background process left by a finished
// command, and a thread left running in the REPL, keep writing after their
// call ended; another floods the machine with links (entries cost almost no
// blocks). The quota must hold at all times, for blocks and entries.
func TestAttackDiskQuotaOutsideCalls(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		const quota = 64 << 20
		const files = 5000
		// The monitor stops writers within about one of its looks (10 ms):
		// a writer to the page cache at 1.3 GB/s was stopped 2-40 MiB past
		// the quota here, once 90 MiB on a machine busy with writeback. A
		// writer that is never stopped goes on forever.
		const slack = 96 << 20
		e := newTestEngine(t, Options{})
		m := newTestMachine(t, e, MachineSpec{Limits: Limits{DiskBytes: quota, Files: files}})
		usage := func() int64 { u, _ := m.measure(); return u.Bytes }
		entries := func() int64 { u, _ := m.measure(); return u.Entries }

		// A command that leaves a writer behind.
		mustRun(t, m, Command{Shell: `nohup sh -c 'i=0; while :; do head -c 1M /dev/zero > bg$i 2>/dev/null; i=$((i+1)); done' >/dev/null 2>&1 &`})
		used := waitStill(t, 20*time.Second, usage)
		t.Logf("background writer stopped at %d MiB of %d", used>>20, quota>>20)
		if used > quota+slack {
			t.Fatalf("the background writer reached %d MiB under a %d MiB quota", used>>20, quota>>20)
		}
		if ps := strings.Join(machineProcesses(m), "\n"); strings.Contains(ps, "head -c") || strings.Contains(ps, "while") {
			t.Fatalf("the writer still runs:\n%s", ps)
		}
		mustRun(t, m, Command{Shell: "rm -f bg*"})

		// A thread left in the REPL.
		mustExec(t, m, "x = 41", PythonOptions{})
		mustExec(t, m, `import threading
def fill():
    i = 0
    while True:
        try:
            with open('py%d' % i, 'wb') as f:
                f.write(b'\0' * (1 << 20))
        except OSError:
            pass
        i += 1
threading.Thread(target=fill, daemon=True).start()`, PythonOptions{})
		used = waitStill(t, 20*time.Second, usage)
		t.Logf("REPL thread stopped at %d MiB of %d", used>>20, quota>>20)
		if used > quota+slack {
			t.Fatalf("the REPL's thread reached %d MiB under a %d MiB quota", used>>20, quota>>20)
		}
		mustRun(t, m, Command{Shell: "rm -f py*"})
		r := mustExec(t, m, "x", PythonOptions{})
		if !strings.Contains(r.StateReset, "disk quota") {
			t.Fatalf("the next call does not say why the state was lost: %+v", r)
		}

		// Entries.
		mustRun(t, m, Command{Shell: `nohup python3 -c "
import os, itertools
for i in itertools.count():
    try:
        os.symlink('x', 'l%d' % i)
    except OSError:
        pass
" >/dev/null 2>&1 &`})
		n := waitStill(t, 20*time.Second, entries)
		t.Logf("link flood stopped at %d entries of %d", n, files)
		if n > 10*files {
			t.Fatalf("the link flood reached %d entries under a limit of %d", n, files)
		}
		mustRun(t, m, Command{Shell: "find . -name 'l*' -type l -delete"})
		if _, err := m.WriteFile(context.Background(), "ok.txt", strings.NewReader("ok"), 0); err != nil {
			t.Fatalf("after the cleanup: %v", err)
		}
	})
}

// TestAttackStateFilesystemReserve: on a small state filesystem, a machine
// whose own limits are larger than the filesystem fills it with data, then
// with entries. The engine must keep its reserve: the server can still
// write its own files.
func TestAttackStateFilesystemReserve(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to mount a small filesystem for the state directory")
	}
	for _, flood := range []string{
		`i=0; while :; do head -c 1M /dev/zero > f$i 2>/dev/null; i=$((i+1)); done`,
		`python3 -c "
import os, itertools
for i in itertools.count():
    try:
        os.mkdir('d%d' % i)
    except OSError:
        pass
"`,
	} {
		state := t.TempDir()
		if err := unix.Mount("tmpfs", state, "tmpfs", 0, "size=96m,nr_inodes=6000,mode=0700"); err != nil {
			t.Skip("cannot mount a tmpfs:", err)
		}
		t.Cleanup(func() { unix.Unmount(state, unix.MNT_DETACH) })
		// The reserve must be more than a machine can write between two
		// looks of the monitor: a tenth of a reserve, about, when close.
		e := newTestEngine(t, Options{StateDir: state, ReserveBytes: 16 << 20, ReserveInodes: 2000})
		m := newTestMachine(t, e, MachineSpec{Limits: Limits{DiskBytes: 1 << 30, Files: 1 << 20}})
		mustRun(t, m, Command{Shell: "nohup sh -c '" + strings.ReplaceAll(flood, "'", `'\''`) + "' >/dev/null 2>&1 &"})
		waitStill(t, 30*time.Second, func() int64 { u, _ := m.measure(); return u.Bytes + u.Entries })
		space, _ := e.stateSpace()
		t.Logf("free: %d MiB, %d inodes (reserve %d MiB, %d inodes)", space.freeBytes>>20, space.freeInodes, space.reserveBytes>>20, space.reserveInodes)
		// The server's own writes still work.
		for i := 0; i < 20; i++ {
			if err := writeFileAtomic(filepath.Join(state, "server-"+strconv.Itoa(i)), make([]byte, 64<<10)); err != nil {
				t.Fatalf("the server cannot write to its state directory: %v", err)
			}
		}
		_, err := m.WriteFile(context.Background(), "more", strings.NewReader("x"), 0)
		if space.low() && (err == nil || !strings.Contains(err.Error(), "nearly full")) {
			t.Fatalf("an upload while the reserve is reached: %v", err)
		}
	}
	// Within the reserve, uploads and new machines are refused, saying why.
	e := newTestEngine(t, Options{ReserveBytes: 1 << 62})
	if _, err := e.Create(context.Background(), MachineSpec{}); err == nil || !strings.Contains(err.Error(), "nearly full") {
		t.Fatalf("a machine created within the reserve: %v", err)
	}
}

// TestAttackMemoryOutsideTheLimit: without memory cgroups (rlimits bound
// each process alone), six processes each hold a third of the limit; and a
// machine writes more than its memory limit into /dev/shm and every other
// tmpfs it can find. The machine's total must stay within its limit.
func TestAttackMemoryOutsideTheLimit(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		const limit = 512 << 20
		e := newTestEngine(t, Options{})
		e.cgroups = &cgroupManager{mode: "none"}
		m := newTestMachine(t, e, MachineSpec{Limits: Limits{MemoryBytes: limit}})
		res := mustRun(t, m, Command{Shell: `for d in / /dev /var /run /etc /usr /proc/sys; do touch $d/probe 2>/dev/null && echo "writable $d"; done
stat -f -c '%T' /tmp /var/tmp /dev/shm
head -c 600M /dev/zero > /dev/shm/big && echo shm-ok`, Timeout: time.Minute})
		if strings.Contains(res.Stdout, "writable") {
			t.Fatalf("the machine writes to a memory filesystem: %q", res.Stdout)
		}
		if strings.Contains(res.Stdout, "tmpfs") || !strings.Contains(res.Stdout, "shm-ok") {
			t.Fatalf("scratch space: %q %q", res.Stdout, res.Stderr)
		}
		if fi, err := os.Stat(filepath.Join(m.dir, "scratch", "shm", "big")); err != nil || fi.Size() != 600<<20 {
			t.Fatalf("/dev/shm is not on the machine's disk: %v", err)
		}
		mustRun(t, m, Command{Shell: "rm /dev/shm/big"})

		for i := 0; i < 6; i++ {
			mustRun(t, m, Command{Shell: `nohup python3 -c "
import time
b = bytearray(170 << 20)
b[::4096] = b'x' * len(b[::4096])
time.sleep(600)
" >/dev/null 2>&1 &`})
		}
		held := func() int64 {
			var total int64
			_, pids := m.userProcesses(readProcesses())
			for _, p := range pids {
				total += heldMemory(p)
			}
			return total
		}
		total := waitStill(t, time.Minute, held)
		t.Logf("six processes of 170 MiB hold %d MiB under a %d MiB limit", total>>20, limit>>20)
		if total > limit {
			t.Fatalf("the machine holds %d MiB under a %d MiB limit", total>>20, limit>>20)
		}
	})
}

// crashEngineEnv makes this test binary run an engine with one running
// machine on the state directory it names, until it is killed.
const crashEngineEnv = "VMCP_TEST_CRASH_ENGINE"

func runEngineUntilKilled(dir string) {
	e, err := New(Options{StateDir: dir})
	if err == nil {
		var info MachineInfo
		if info, err = e.Create(context.Background(), MachineSpec{}); err == nil {
			m, _ := e.Machine(info.ID)
			_, err = m.Run(context.Background(), Command{Shell: "sleep 1000 & true"})
		}
	}
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

// TestAttackCgroupsOutliveTheServer: the server is killed with kill -9
// while its machines run. The next engine on the state directory removes
// the cgroups they were in, and nothing of theirs still runs.
func TestAttackCgroupsOutliveTheServer(t *testing.T) {
	probe := newTestEngine(t, Options{})
	if !probe.cgroups.enabled() {
		t.Skip("this host does not let the engine create cgroups (it needs root)")
	}
	state := t.TempDir()
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run", "^$")
	cmd.Env = append(os.Environ(), crashEngineEnv+"="+state)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 6)
	if _, err := io.ReadFull(out, line); err != nil || string(line) != "ready\n" {
		cmd.Process.Kill()
		t.Fatalf("the engine did not start: %q %v", line, err)
	}
	cmd.Process.Kill()
	cmd.Wait()
	left := newCgroupManager(true, state)
	var dirs []string
	for _, parent := range append(left.v1, left.v2) {
		if parent == "" {
			continue
		}
		entries, _ := os.ReadDir(parent)
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(parent, e.Name()))
			}
		}
	}
	if len(dirs) == 0 {
		t.Fatal("the killed engine left no cgroup: the test tests nothing")
	}
	newTestEngine(t, Options{StateDir: state})
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s is still there after the next start", d)
		}
	}
}

// TestCloseLeavesNoCgroups: an engine that closes removes its own cgroup
// directories from the host's hierarchies, so that many engines (a test
// suite's) leave nothing behind there.
func TestCloseLeavesNoCgroups(t *testing.T) {
	e, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dirs := append(append([]string{}, e.cgroups.v1...), e.cgroups.v2)
	if !e.cgroups.enabled() {
		e.Close()
		t.Skip("this host does not let the engine create cgroups (it needs root)")
	}
	m := newTestMachine(t, e, MachineSpec{})
	mustRun(t, m, Command{Shell: "true"})
	e.Close()
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup directory %s is still there after Close", d)
		}
	}
}

// TestAttackMountinfoShowsHostPaths: a machine reads its mount table, its
// processes' maps and links, looking for host paths (the state directory,
// this binary), and tries to create a user namespace of its own.
func TestAttackMountinfoShowsHostPaths(t *testing.T) {
	engineModes(t, func(t *testing.T) {
		e := newTestEngine(t, Options{})
		self, _ := os.Executable()
		flavours := []Flavour{Workspace}
		if os.Geteuid() == 0 {
			flavours = append(flavours, VM)
		}
		for _, f := range flavours {
			m := newTestMachine(t, e, MachineSpec{Flavour: f})
			mustExec(t, m, "1", PythonOptions{})
			look := "cat /proc/self/mountinfo /proc/*/mountinfo /proc/*/maps 2>/dev/null; ls -l /proc/*/exe /proc/*/cwd /proc/*/root /proc/*/fd/ 2>/dev/null; cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '"
			if f == VM {
				// Root of a VM may look into every process of it, the agent's
				// binary included; its mounts name no host path.
				look = "cat /proc/*/mountinfo"
			}
			res := mustRun(t, m, Command{Shell: look})
			for _, host := range []string{e.StateDir(), self, filepath.Dir(self)} {
				if strings.Contains(res.Stdout, host) {
					t.Errorf("a %s machine sees the host path %s:\n%s", f, host, res.Stdout)
				}
			}
			if f == Workspace {
				if r := mustRun(t, m, Command{Shell: "unshare -Urm true && echo created"}); strings.Contains(r.Stdout, "created") {
					t.Errorf("a workspace machine created a user namespace")
				}
			}
		}
	})
}

// TestDeepPathsAreLinearAndBounded: an upload to a path far too deep is
// refused at once; one just within the bound is made in linear time; a
// cancel stops it.
func TestDeepPathsAreLinearAndBounded(t *testing.T) {
	m := newTestMachine(t, newTestEngine(t, Options{}), MachineSpec{})
	ctx := context.Background()
	start := time.Now()
	_, err := m.WriteFile(ctx, strings.Repeat("d/", 2000)+"f", strings.NewReader("x"), 0)
	if err == nil || !strings.Contains(err.Error(), "directories deep") {
		t.Fatalf("a path 2000 deep: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusing a deep path took %v", d)
	}
	start = time.Now()
	if _, err := m.WriteFile(ctx, strings.Repeat("d/", MaxPathDepth-1)+"f", strings.NewReader("x"), 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("a file %d directories deep written in %v", MaxPathDepth-1, time.Since(start))
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("writing %d deep took %v", MaxPathDepth-1, d)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.WriteFile(cancelled, strings.Repeat("e/", 100)+"f", strings.NewReader("x"), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled write: %v", err)
	}
}
