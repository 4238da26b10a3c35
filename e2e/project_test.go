//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDefaultConversationPerProject: stdio servers started in two project
// directories on one state directory give their clients two conversations
// (two machines, two sets of Python globals); a restart in the first
// project finds its conversation again, with its machine and files.
func TestDefaultConversationPerProject(t *testing.T) {
	t.Parallel()
	state, projectA, projectB := t.TempDir(), t.TempDir(), t.TempDir()
	type result struct {
		Session string `json:"session"`
		Machine string `json:"machine"`
	}
	a := startWith(t, state, projectA, clientOptions{})
	var inA result
	a.ok(t, "run_python", map[string]any{"code": "x = 'A'"}, &inA)
	a.ok(t, "upload_file", map[string]any{"path": "a.txt", "content": "from A\n"}, nil)
	a.cs.Close()

	b := startWith(t, state, projectB, clientOptions{})
	var inB result
	res := b.call(t, "run_python", map[string]any{"code": "x"})
	decode(t, res, &inB)
	if !res.IsError || !strings.Contains(text(res), "NameError") {
		t.Errorf("project B sees project A's globals: %s", text(res))
	}
	if inB.Session == inA.Session || inB.Machine == inA.Machine {
		t.Errorf("project B joined project A's conversation %s, machine %s", inA.Session, inA.Machine)
	}
	b.cs.Close()

	again := startWith(t, state, projectA, clientOptions{})
	var back result
	res = again.ok(t, "download_file", map[string]any{"path": "a.txt"}, &back)
	if back.Session != inA.Session || back.Machine != inA.Machine || !strings.Contains(text(res), "from A") {
		t.Errorf("after a restart in project A: session %s machine %s (want %s, %s): %s", back.Session, back.Machine, inA.Session, inA.Machine, text(res))
	}
}

// TestStateDirectoryThatCannotBeUsed: a server that cannot use its state
// directory tells its client why, as a tool error, and its log says so in
// one line: a process that holds the directory and does not answer on its
// socket, or a read-only filesystem.
func TestStateDirectoryThatCannotBeUsed(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	lock, err := os.OpenFile(filepath.Join(state, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	second := startWith(t, state, t.TempDir(), clientOptions{})
	res := second.call(t, "exec_command", map[string]any{"command": "true"})
	if !res.IsError || !strings.Contains(text(res), "vmcp could not start") || !strings.Contains(text(res), "in use by another vmcp process") ||
		!strings.Contains(text(res), "has not answered") {
		t.Errorf("a state directory held by a process that does not answer: %s", text(res))
	}
	if !strings.Contains(second.stderr(), "in use by another vmcp process") {
		t.Errorf("its log: %s", second.stderr())
	}

	if os.Geteuid() != 0 {
		return
	}
	ro := t.TempDir()
	if err := unix.Mount("tmpfs", ro, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		t.Skip("cannot mount a read-only tmpfs:", err)
	}
	t.Cleanup(func() { unix.Unmount(ro, unix.MNT_DETACH) })
	h := startWith(t, ro+"/state", t.TempDir(), clientOptions{})
	res = h.call(t, "run_python", map[string]any{"code": "1"})
	if !res.IsError || !strings.Contains(text(res), "read-only filesystem: give --state-dir (VMCP_STATE_DIR) a writable directory") {
		t.Errorf("a read-only state directory: %s", text(res))
	}
}
