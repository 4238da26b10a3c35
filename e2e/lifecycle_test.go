package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fvc "github.com/vmcp-dev/vmcp/client/fastvm"
	"github.com/vmcp-dev/vmcp/tools"
)

// liveVMs lists the emulator's VMs that are not being deleted.
func liveVMs(t *testing.T, c *fvc.Client) map[string]bool {
	t.Helper()
	vms, err := c.ListVMs(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, v := range vms {
		if v.Status != fvc.StatusDeleting {
			live[v.ID] = true
		}
	}
	return live
}

// TestIdleFastVMIsParkedAndRestored: with a 2 s idle limit, an unused
// FastVM VM is snapshotted and deleted; the conversation's next command
// relaunches it from the snapshot with its files, and says so.
func TestIdleFastVMIsParkedAndRestored(t *testing.T) {
	t.Parallel()
	client, url, key := fastvmEmulator(t)
	h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{
		serverArgs: []string{"--fastvm-url", url, "--idle-fastvm", "2s", "--idle-local", "0"},
		serverEnv:  []string{"FASTVM_API_KEY=" + key},
	})
	var cmd tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "echo kept > f"}, &cmd)
	first := cmd.Machine

	deadline := time.Now().Add(60 * time.Second)
	for liveVMs(t, client)[first] {
		if time.Now().After(deadline) {
			t.Fatalf("VM %s still running a minute after its 2 s idle limit", first)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var info tools.SessionInfoOutput
	h.ok(t, "session_info", nil, &info)
	if len(info.Machines) != 1 || !info.Machines[0].Parked || info.IdleTimeouts["fastvm"] != "2s" {
		t.Fatalf("session_info after parking: %+v", info)
	}
	snaps, err := client.ListSnapshots(context.Background())
	if err != nil || len(snaps) != 1 || snaps[0].VMID != first {
		t.Fatalf("parked snapshot: %+v, %v", snaps, err)
	}

	res := h.ok(t, "exec_command", map[string]any{"command": "cat f"}, &cmd)
	if cmd.Stdout != "kept\n" || cmd.Machine == first || !strings.Contains(text(res), "restored from that snapshot") {
		t.Fatalf("after parking: %+v\n%s", cmd, text(res))
	}
	// The old id still reaches it; no VM runs that the conversation does
	// not own.
	h.ok(t, "exec_command", map[string]any{"command": "cat f", "machine": first}, &cmd)
	if cmd.Stdout != "kept\n" {
		t.Errorf("by the old id: %+v", cmd)
	}
	if live := liveVMs(t, client); len(live) != 1 || !live[cmd.Machine] {
		t.Errorf("live VMs %v, want only %s", live, cmd.Machine)
	}
	// The parking snapshot is gone once the machine is back.
	if snaps, err := client.ListSnapshots(context.Background()); err != nil || len(snaps) != 0 {
		t.Errorf("snapshots after the restore: %+v, %v", snaps, err)
	}
}

// TestReconcilerDeletesOrphans: VMs that a killed server created but never
// recorded are deleted at the next start; recorded ones stay.
func TestReconcilerDeletesOrphans(t *testing.T) {
	t.Parallel()
	client, url, key := fastvmEmulator(t)
	state, root := t.TempDir(), t.TempDir()
	opts := clientOptions{serverArgs: []string{"--fastvm-url", url}, serverEnv: []string{"FASTVM_API_KEY=" + key}}
	h := startWith(t, state, root, opts)
	var cmd tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "true"}, &cmd)
	kept := cmd.Machine

	// Kill the server while it launches machines, a few times.
	for range 3 {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, err := h.callErr("launch_vm", map[string]any{"backend": "fastvm"}, nil); err != nil {
					return
				}
			}
		}()
		time.Sleep(300 * time.Millisecond)
		kill(t, h)
		<-done
		h = startWith(t, state, root, opts)
	}
	// And one orphan made by hand, as a killed server leaves it: the
	// server's marks and a conversation that never recorded it.
	instance, err := os.ReadFile(filepath.Join(state, "instance"))
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := client.Launch(context.Background(), fvc.LaunchRequest{MachineType: "c1m2", Metadata: map[string]string{
		"created-by": "vmcp", "vmcp.server": strings.TrimSpace(string(instance)), "vmcp.conversation": "0123456789abcdef"}})
	if err != nil {
		t.Fatal(err)
	}
	h.cs.Close()
	h = startWith(t, state, root, opts)
	if !strings.Contains(h.stderr(), "reconciled machines") {
		t.Errorf("no reconciliation logged:\n%s", h.stderr())
	}

	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)
	owned := map[string]bool{}
	for _, m := range list.Machines {
		owned[m.ID] = true
	}
	live := liveVMs(t, client)
	if live[orphan.ID] {
		t.Errorf("the orphan %s is still running", orphan.ID)
	}
	if !live[kept] || !owned[kept] {
		t.Errorf("the conversation's VM %s: live %v, owned %v", kept, live[kept], owned[kept])
	}
	for id := range live {
		if !owned[id] {
			t.Errorf("VM %s runs and no conversation owns it", id)
		}
	}
	t.Logf("%d VMs live after 3 kills, all owned", len(live))
}
