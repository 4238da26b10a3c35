//go:build linux

package e2e

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// liveVMs lists the emulator's VMs that are not being deleted.
func liveVMs(t *testing.T, c *fastvmclient.Client) map[string]bool {
	t.Helper()
	vms, err := c.ListVMs(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, v := range vms {
		if v.Status != fastvmclient.StatusDeleting {
			live[v.ID] = true
		}
	}
	return live
}

// fastvmEmulatorWith is fastvmEmulator with options: NoExtensions stands
// for a FastVM service that cannot pause.
func fastvmEmulatorWith(t *testing.T, opts fastvmemu.Options) (c *fastvmclient.Client, url, key string) {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	key = "e2e-fastvm-key"
	opts.Engine, opts.APIKey = engine, key
	emu, err := fastvmemu.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	emu.SetBaseURL(srv.URL)
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
		engine.Close()
	})
	return fastvmclient.New(key, fastvmclient.WithBaseURL(srv.URL)), srv.URL, key
}

// TestIdleFastVMIsParkedAndRestored: with a 2 s idle limit, an unused
// FastVM VM is paused where the service can pause (its files and its
// processes' memory kept, the next command resumes it), and elsewhere
// snapshotted and deleted (the next command relaunches it from the
// snapshot with its files, and says so).
func TestIdleFastVMIsParkedAndRestored(t *testing.T) {
	t.Parallel()
	start := func(t *testing.T, opts fastvmemu.Options) (*harness, *fastvmclient.Client) {
		client, url, key := fastvmEmulatorWith(t, opts)
		h := startWith(t, t.TempDir(), t.TempDir(), clientOptions{
			serverArgs: []string{"--fastvm-url", url, "--idle-fastvm", "2s", "--idle-local", "0"},
			serverEnv:  []string{"FASTVM_API_KEY=" + key},
		})
		return h, client
	}

	t.Run("pause", func(t *testing.T) {
		t.Parallel()
		h, client := start(t, fastvmemu.Options{})
		var cmd tools.ExecCommandOutput
		// A process that keeps a secret in its memory only, and tells it
		// when asked.
		h.ok(t, "exec_command", map[string]any{"command": `echo kept > f; nohup python3 -c '
import os, secrets, time
s = secrets.token_hex(8)
print(s, flush=True)
while True:
    if os.path.exists("/root/ask"):
        os.remove("/root/ask")
        open("/root/answer", "w").write(s)
    time.sleep(0.05)
' > /root/secret 2>&1 &
while [ ! -s /root/secret ]; do sleep 0.05; done; cat /root/secret`}, &cmd)
		first, secret := cmd.Machine, strings.TrimSpace(cmd.Stdout)

		deadline := time.Now().Add(60 * time.Second)
		for {
			vm, err := client.GetVM(context.Background(), first)
			if err != nil {
				t.Fatal(err)
			}
			if vm.Status == fastvmclient.StatusPaused {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("VM %s is %s a minute after its 2 s idle limit, want paused", first, vm.Status)
			}
			time.Sleep(200 * time.Millisecond)
		}
		var info tools.SessionInfoOutput
		h.ok(t, "session_info", nil, &info)
		if len(info.Machines) != 1 || info.Machines[0].Parked || info.Machines[0].ID != first {
			t.Fatalf("session_info while paused: %+v", info)
		}
		if snaps, err := client.ListSnapshots(context.Background()); err != nil || len(snaps) != 0 {
			t.Fatalf("a paused machine left snapshots: %+v, %v", snaps, err)
		}
		var list tools.ListMachinesOutput
		h.ok(t, "list_machines", nil, &list)
		if len(list.Machines) != 1 || list.Machines[0].Status != "stopped" {
			t.Fatalf("list_machines while paused: %+v, want it stopped (it starts on next use)", list.Machines)
		}

		// The next command resumes the same VM: its files, and the process
		// with its memory.
		h.ok(t, "exec_command", map[string]any{"command": `cat f; rm -f /root/answer; touch /root/ask
while [ ! -s /root/answer ]; do sleep 0.05; done; cat /root/answer`, "timeout_seconds": 60}, &cmd)
		if cmd.Machine != first || cmd.Stdout != "kept\n"+secret {
			t.Fatalf("after the pause: machine %s (was %s), stdout %q; want the file and the secret %q", cmd.Machine, first, cmd.Stdout, secret)
		}
		if vm, err := client.GetVM(context.Background(), first); err != nil || vm.Status != fastvmclient.StatusRunning {
			t.Fatalf("after the next command: %+v, %v", vm, err)
		}
		if live := liveVMs(t, client); len(live) != 1 || !live[first] {
			t.Errorf("live VMs %v, want only %s", live, first)
		}
	})

	t.Run("snapshot", func(t *testing.T) {
		t.Parallel()
		h, client := start(t, fastvmemu.Options{NoExtensions: true})
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
	})
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
	orphan, err := client.Launch(context.Background(), fastvmclient.LaunchRequest{MachineType: "c1m2", Metadata: map[string]string{
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
