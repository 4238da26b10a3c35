//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newVM(t *testing.T, e *Engine, spec MachineSpec) *Machine {
	t.Helper()
	if os.Geteuid() != 0 {
		// Without root, the VM's root is the engine's user: files the host's
		// root owns under /usr or /etc cannot be changed even in the overlay.
		t.Skip("VM machines with a writable root filesystem need the engine to run as root")
	}
	spec.Flavour = VM
	return newTestMachine(t, e, spec)
}

func TestVMLooksLikeAVirtualMachine(t *testing.T) {
	e := newTestEngine(t, Options{})
	vm := newVM(t, e, MachineSpec{})
	ctx := context.Background()
	probe := "vmcp-vm-probe-" + vm.ID()
	res := mustRun(t, vm, Command{Shell: "id -u; pwd; echo hi > /usr/local/bin/" + probe + " && chmod +x /usr/local/bin/" + probe + " && echo 'nameserver 10.9.9.9' >> /etc/resolv.conf && mkdir -p /var/tmp/x /tmp/y && command -v tar curl sh | wc -l"})
	if res.ExitCode != 0 {
		t.Fatalf("root filesystem is not writable: %+v", res)
	}
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	if lines[0] != "0" || lines[1] != "/root" {
		t.Fatalf("user and home: %q", lines)
	}
	// None of it reached the host.
	if _, err := os.Stat("/usr/local/bin/" + probe); err == nil {
		os.Remove("/usr/local/bin/" + probe)
		t.Fatal("the VM wrote to the host's /usr")
	}
	if b, _ := os.ReadFile("/etc/resolv.conf"); bytes.Contains(b, []byte("10.9.9.9")) {
		t.Fatal("the VM changed the host's /etc")
	}
	// The host's secrets are masked.
	if res := mustRun(t, vm, Command{Shell: "cat /etc/shadow | wc -c"}); strings.TrimSpace(res.Stdout) != "0" {
		t.Fatalf("the VM reads the host's /etc/shadow: %q", res.Stdout)
	}
	// No network unless allowed, and the engine's environment stays out.
	if res := mustRun(t, vm, Command{Shell: "cat /proc/net/dev | grep -c : ; env | grep -c VMCP_TEST_VM_SECRET"}); !strings.HasPrefix(res.Stdout, "1\n") {
		t.Fatalf("interfaces: %q", res.Stdout)
	}
	// Files move in and out anywhere in the VM, and Python works.
	if _, err := vm.WriteFile(ctx, "/opt/app/config.json", strings.NewReader(`{"a":1}`), 0); err != nil {
		t.Fatal(err)
	}
	if got := readString(t, vm, "/opt/app/config.json"); got != `{"a":1}` {
		t.Fatalf("read back %q", got)
	}
	if r := mustExec(t, vm, "import json; json.load(open('/opt/app/config.json'))['a'] + 1", PythonOptions{}); value(r) != "2" {
		t.Fatalf("python: %+v", r)
	}
	if fi, err := vm.Stat(ctx, "/opt/app/config.json"); err != nil || fi.Size != 7 || fi.IsDir {
		t.Fatalf("stat: %+v %v", fi, err)
	}
	var tarball bytes.Buffer
	if err := vm.CopyOut(ctx, "/opt/app", &tarball); err != nil {
		t.Fatal(err)
	}
	host := t.TempDir()
	if err := extractHostTar(&tarball, host); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(host, "app", "config.json")); string(b) != `{"a":1}` {
		t.Fatalf("copied out %q", b)
	}

	// New top-level directories are the VM's own: they survive a restart of
	// its processes and go into snapshots.
	mustRun(t, vm, Command{Shell: "mkdir -p /app && echo top > /app/f"})
	vm.Stop()
	if res := mustRun(t, vm, Command{Shell: "cat /app/f"}); res.Stdout != "top\n" {
		t.Fatalf("/app after a restart: %+v", res)
	}
	if _, err := os.Stat("/app/f"); err == nil {
		t.Fatal("the VM wrote to the host's /")
	}

	// A snapshot holds exactly the VM's changes and restores them.
	snap, err := vm.Snapshot(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, vm, Command{Shell: "rm /usr/local/bin/" + probe})
	info, err := e.Create(ctx, MachineSpec{Flavour: VM, FromSnapshot: snap.ID})
	if err != nil {
		t.Fatal(err)
	}
	clone, _ := e.Machine(info.ID)
	if res := mustRun(t, clone, Command{Shell: probe + "; cat /opt/app/config.json /app/f"}); res.ExitCode != 0 {
		t.Fatalf("restored VM: %+v", res)
	}
	if res := mustRun(t, vm, Command{Shell: "test -e /usr/local/bin/" + probe}); res.ExitCode == 0 {
		t.Fatal("the original VM's delete was undone")
	}
	if _, err := e.Create(ctx, MachineSpec{Flavour: Workspace, FromSnapshot: snap.ID}); err == nil {
		t.Fatal("a VM snapshot was launched as a workspace machine")
	}
	// Delete removes its files, overlay work directories included.
	if err := e.Delete(ctx, vm.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(vm.dir); !os.IsNotExist(err) {
		t.Fatalf("VM directory left behind: %v", err)
	}
}

func TestVMNetworkWhenAllowed(t *testing.T) {
	vm := newVM(t, newTestEngine(t, Options{}), MachineSpec{AllowNetwork: true})
	res := mustRun(t, vm, Command{Shell: "grep -c : /proc/net/dev"})
	if strings.TrimSpace(res.Stdout) == "1" {
		t.Fatalf("a VM with network sees only loopback: %q", res.Stdout)
	}
}
