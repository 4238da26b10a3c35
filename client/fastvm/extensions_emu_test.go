//go:build linux

package fastvm_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// The extensions of spec §9 against the emulator: behaviour end to end.

func TestEmuPauseKeepsMemoryResumeContinues(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	// A process that holds a secret in memory only, and tells it when asked.
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell(`nohup python3 -c '
import os, secrets, time
secret = secrets.token_hex(8)
print(secret, flush=True)
while True:
    if os.path.exists("/root/ask"):
        os.remove("/root/ask")
        open("/root/answer", "w").write(secret)
    time.sleep(0.02)
' > /root/first 2>&1 &
while [ ! -s /root/first ]; do sleep 0.01; done; cat /root/first`)})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	secret := strings.TrimSpace(res.Stdout)

	p, err := env.c.PauseVM(ctx, vm.ID)
	if err != nil || p.Status != fastvm.StatusPaused || p.PausedAt == nil {
		t.Fatalf("pause: %+v, %v", p, err)
	}
	if again, err := env.c.PauseVM(ctx, vm.ID); err != nil || *again.PausedAt != *p.PausedAt {
		t.Fatalf("second pause: %+v, %v", again, err)
	}
	// Exec on a paused VM: one 409, not retried (x-should-retry: false).
	env.wire.reset()
	_, err = env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"true"}})
	var apiErr *fastvm.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict || apiErr.Attempts != 1 || !strings.Contains(apiErr.Message, "resume") {
		t.Fatalf("exec while paused: %v", err)
	}
	if paused, err := env.c.ListVMsWith(ctx, fastvm.ListOptions{Status: fastvm.StatusPaused}); err != nil || len(paused) != 1 || paused[0].ID != vm.ID {
		t.Fatalf("paused VMs: %+v, %v", paused, err)
	}
	if running, err := env.c.ListVMsWith(ctx, fastvm.ListOptions{Status: fastvm.StatusRunning}); err != nil || len(running) != 0 {
		t.Fatalf("running VMs while paused: %+v, %v", running, err)
	}

	r, err := env.c.ResumeVM(ctx, vm.ID)
	if err != nil || r.Status != fastvm.StatusRunning || r.PausedAt != nil {
		t.Fatalf("resume: %+v, %v", r, err)
	}
	res, err = env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell(`touch /root/ask; while [ ! -s /root/answer ]; do sleep 0.01; done; cat /root/answer`), TimeoutSec: 30})
	if err != nil || res.Stdout != secret {
		t.Fatalf("the process's secret after resume: %+v, %v; want %q (the same process, its memory kept)", res, err, secret)
	}
	if r, err := env.c.ResumeVM(ctx, vm.ID); err != nil || r.Status != fastvm.StatusRunning {
		t.Fatalf("resume of a running VM: %+v, %v", r, err)
	}
}

func TestEmuResumeQueuedPolls(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{ProvisioningDelay: time.Second}, fastvm.WithPollInterval(500*time.Millisecond))
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	if _, err := env.c.PauseVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	env.wire.reset()
	r, err := env.c.ResumeVM(ctx, vm.ID)
	if err != nil || r.Status != fastvm.StatusRunning {
		t.Fatalf("resume: %+v, %v", r, err)
	}
	posts := env.wire.find("POST", "/v1/vms/"+vm.ID+"/resume")
	if len(posts) != 1 || posts[0].Status != http.StatusAccepted || len(env.wire.find("GET", "/v1/vms/"+vm.ID)) < 2 {
		t.Fatalf("want one 202 POST then polling GETs: POSTs %+v, %d GETs", posts, len(env.wire.find("GET", "/v1/vms/"+vm.ID)))
	}
}

func TestEmuEnvVarsAndTTL(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{EnvVars: map[string]string{"GREETING": "hi there"}, TTL: &fastvm.TTL{Action: fastvm.TTLPause, Seconds: 3600}})
	if vm.TTL == nil || vm.TTL.Seconds != 3600 || vm.ExpiresAtMs == nil || vm.EnvVars["GREETING"] != "hi there" {
		t.Fatalf("launched %+v", vm)
	}
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"printenv", "GREETING"}})
	if err != nil || res.Stdout != "hi there\n" {
		t.Fatalf("printenv: %+v, %v", res, err)
	}
	u, err := env.c.UpdateVM(ctx, vm.ID, fastvm.VMUpdate{EnvVars: map[string]string{"GREETING": "bye"}, ClearTTL: true})
	if err != nil || u.TTL != nil || u.ExpiresAtMs != nil || u.EnvVars["GREETING"] != "bye" {
		t.Fatalf("update: %+v, %v", u, err)
	}
	_, err = env.c.RefreshTTL(ctx, vm.ID)
	var apiErr *fastvm.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Fatalf("refresh without a TTL: %v", err)
	}
	// A bad TTL is the server's 400.
	if _, err := env.c.UpdateVM(ctx, vm.ID, fastvm.VMUpdate{TTL: &fastvm.TTL{Action: fastvm.TTLPause, Seconds: fastvm.MaxTTLSeconds + 1}}); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Fatalf("a TTL over a year: %v", err)
	}
	// A one-second TTL with action pause really pauses it.
	if _, err := env.c.UpdateVM(ctx, vm.ID, fastvm.VMUpdate{TTL: &fastvm.TTL{Action: fastvm.TTLPause, Seconds: 1}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := env.c.GetVM(ctx, vm.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == fastvm.StatusPaused {
			if got.TTLRemainingMs == nil || *got.TTLRemainingMs != 1000 {
				t.Fatalf("paused by its TTL: %+v", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a 1 s TTL did not pause the VM: %+v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	r, err := env.c.RefreshTTL(ctx, vm.ID)
	if err != nil || r.TTLRemainingMs == nil || *r.TTLRemainingMs != 1000 {
		t.Fatalf("refresh while paused: %+v, %v", r, err)
	}
}

func TestEmuServices(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	web, err := env.c.CreateService(ctx, vm.ID, fastvm.Service{Name: "web", Port: 8080})
	if err != nil || web.Name != "web" || web.Port != 8080 || web.URL != fastvm.ServiceURL("web", vm.ID, fastvmemu.DefaultProxyDomain) {
		t.Fatalf("create: %+v, %v", web, err)
	}
	if _, err := env.c.CreateService(ctx, vm.ID, fastvm.Service{Name: "web", Port: 8080}); err != nil {
		t.Fatalf("the same again: %v", err)
	}
	_, err = env.c.CreateService(ctx, vm.ID, fastvm.Service{Name: "web", Port: 9999})
	var apiErr *fastvm.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict || !strings.Contains(apiErr.Message, "PUT") {
		t.Fatalf("another port under the name: %v", err)
	}
	if s, err := env.c.PutService(ctx, vm.ID, "grpc", 9090, true); err != nil || !s.H2C {
		t.Fatalf("put: %+v, %v", s, err)
	}
	list, err := env.c.ListServices(ctx, vm.ID)
	if err != nil || len(list) != 2 || list[0].Name != "grpc" || list[1].Name != "web" {
		t.Fatalf("list: %+v, %v", list, err)
	}
	got, err := env.c.GetVM(ctx, vm.ID)
	if err != nil || got.EffectiveFirewall == nil || len(got.EffectiveFirewall.Ingress) != 2 {
		t.Fatalf("effective firewall: %+v, %v", got, err)
	}
	if err := env.c.DeleteService(ctx, vm.ID, "web"); err != nil {
		t.Fatal(err)
	}
	if err := env.c.DeleteService(ctx, vm.ID, "web"); err != nil {
		t.Fatalf("deleting it again: %v", err)
	}
	// A restore brings the services back; a failed replay says so.
	snap, err := env.c.CreateSnapshot(ctx, vm.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap, err = env.c.WaitSnapshot(ctx, snap.ID); err != nil || len(snap.Services) != 1 {
		t.Fatalf("snapshot: %+v, %v", snap, err)
	}
	env.emu.FailNextServiceReplay()
	restored := env.launch(t, fastvm.LaunchRequest{SnapshotID: snap.ID})
	if w := restored.SnapshotRestoreWarnings; w == nil || !w.ServicesRegistrationFailed || len(w.UnregisteredServices) != 1 || w.UnregisteredServices[0].Name != "grpc" {
		t.Fatalf("restore warnings: %+v", restored.SnapshotRestoreWarnings)
	}
	again := env.launch(t, fastvm.LaunchRequest{SnapshotID: snap.ID})
	if list, err := env.c.ListServices(ctx, again.ID); err != nil || len(list) != 1 || again.SnapshotRestoreWarnings != nil {
		t.Fatalf("restored services: %+v, %v, %+v", list, err, again.SnapshotRestoreWarnings)
	}
}

// A service without the extensions: every new call is a 404 *APIError.
func TestEmuWithoutExtensions(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{NoExtensions: true})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	_, err1 := env.c.PauseVM(ctx, vm.ID)
	_, err2 := env.c.ResumeVM(ctx, vm.ID)
	_, err3 := env.c.ListServices(ctx, vm.ID)
	for i, err := range []error{err1, err2, err3} {
		if !fastvm.IsNotFound(err) {
			t.Errorf("call %d: %v, want a 404", i, err)
		}
	}
	if vms, err := env.c.ListVMs(ctx, nil); err != nil || !slices.ContainsFunc(vms, func(v fastvm.VM) bool { return v.ID == vm.ID }) {
		t.Fatalf("list: %v", err)
	}
}
