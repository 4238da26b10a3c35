//go:build linux

package fastvm_test

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

func TestEmuHealthAndQuotas(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{Quotas: fastvmemu.Quotas{VCPU: 7}})
	ctx := context.Background()
	h, err := env.c.Health(ctx)
	if err != nil || h.Status != "ok" {
		t.Fatalf("health %+v, %v", h, err)
	}
	env.launch(t, fastvm.LaunchRequest{MachineType: "c2m4"})
	q, err := env.c.Quotas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if q.OrgID == "" || q.Limits.VCPU != 7 || q.Usage.VCPU != 2 || q.Usage.MemoryMiB != 4096 {
		t.Fatalf("quotas %+v", q)
	}
	// Quota exhaustion: 429 with x-should-retry: false, so one attempt.
	env.wire.reset()
	_, err = env.c.LaunchNoWait(ctx, fastvm.LaunchRequest{MachineType: "c8m16"})
	var apiErr *fastvm.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 429 || apiErr.Attempts != 1 || len(env.wire.find("POST", "/v1/vms")) != 1 {
		t.Fatalf("over quota: %v", err)
	}
}

func TestEmuLaunch201IsRunningAtOnce(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	vm := env.launch(t, fastvm.LaunchRequest{Name: "fast"})
	if vm.Status != fastvm.StatusRunning || vm.Name != "fast" || vm.CPU != 1 || vm.MemoryMiB != 2048 || vm.DiskGiB < 10 {
		t.Fatalf("vm %+v", vm)
	}
	posts := env.wire.find("POST", "/v1/vms")
	if len(posts) != 1 || posts[0].Status != http.StatusCreated {
		t.Fatalf("POSTs %+v, want one 201", posts)
	}
	if gets := env.wire.find("GET", "/v1/vms/"); len(gets) != 0 {
		t.Fatalf("polled %d times after a 201", len(gets))
	}
}

func TestEmuLaunch202Polls(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{ProvisioningDelay: 3 * time.Second})
	ctx := context.Background()
	start := time.Now()
	vm := env.launch(t, fastvm.LaunchRequest{})
	if vm.Status != fastvm.StatusRunning {
		t.Fatalf("vm %+v", vm)
	}
	posts := env.wire.find("POST", "/v1/vms")
	gets := env.wire.find("GET", "/v1/vms/"+vm.ID)
	if len(posts) != 1 || posts[0].Status != http.StatusAccepted {
		t.Fatalf("POSTs %+v, want one 202", posts)
	}
	// The first GET follows the POST at once; then every 2 s ± 10 %.
	if len(gets) < 2 || gets[0].At.Sub(posts[0].At) > time.Second {
		t.Fatalf("%d GETs, first %v after the POST", len(gets), gets[0].At.Sub(posts[0].At))
	}
	for i := 1; i < len(gets); i++ {
		if gap := gets[i].At.Sub(gets[i-1].At); gap < 1700*time.Millisecond || gap > 4*time.Second {
			t.Errorf("poll gap %v, want about 2 s", gap)
		}
	}
	if el := time.Since(start); el < 3*time.Second {
		t.Errorf("running after %v, before the provisioning delay", el)
	}

	// LaunchNoWait returns the raw 202 body; WaitReady finishes the job.
	raw, err := env.c.LaunchNoWait(ctx, fastvm.LaunchRequest{MachineType: "c1m2"})
	if err != nil || raw.Status != fastvm.StatusProvisioning {
		t.Fatalf("raw launch %+v, %v", raw, err)
	}
	t.Cleanup(func() { env.c.DeleteVM(ctx, raw.ID) })
	if vm, err := env.c.WaitReady(ctx, raw.ID); err != nil || vm.Status != fastvm.StatusRunning {
		t.Fatalf("WaitReady %+v, %v", vm, err)
	}
}

func TestEmuLaunchFailureIsTyped(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{ProvisioningDelay: 500 * time.Millisecond})
	env.emu.FailNextLaunch()
	_, err := env.c.Launch(context.Background(), fastvm.LaunchRequest{MachineType: "c1m2"})
	var le *fastvm.LaunchError
	if !errors.As(err, &le) || le.Status != fastvm.StatusError || le.VMID == "" {
		t.Fatalf("err = %v, want *LaunchError with status error", err)
	}
	if !strings.Contains(err.Error(), le.VMID) {
		t.Errorf("error %q does not name the VM", err)
	}

	// A VM that is too slow: *NotReadyError with the last status.
	slow := newEmu(t, fastvmemu.Options{ProvisioningDelay: time.Minute}, fastvm.WithWaitTimeout(time.Second))
	_, err = slow.c.Launch(context.Background(), fastvm.LaunchRequest{MachineType: "c1m2"})
	var nr *fastvm.NotReadyError
	if !errors.As(err, &nr) || nr.LastStatus != fastvm.StatusProvisioning || nr.Timeout != time.Second {
		t.Fatalf("err = %v, want *NotReadyError", err)
	}
}

func TestEmuVMLifecycle(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	fw := &fastvm.FirewallPolicy{Mode: fastvm.FirewallRestricted, Ingress: []fastvm.FirewallRule{
		{Protocol: "tcp", PortStart: 22, SourceCIDRs: []string{"2001:db8::/32"}, Description: "ssh"}}}
	a := env.launch(t, fastvm.LaunchRequest{Name: "  api   one ", Metadata: map[string]string{"env": "prod", "role": "api"}, Firewall: fw})
	b := env.launch(t, fastvm.LaunchRequest{Metadata: map[string]string{"env": "prod", "role": "db"}})
	c := env.launch(t, fastvm.LaunchRequest{Metadata: map[string]string{"env": "dev", "role": "api"}})

	got, err := env.c.GetVM(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "api one" || got.OrgID == "" || got.CreatedAt == "" || got.MachineName != "c1m2" ||
		got.Firewall == nil || got.Firewall.Ingress[0].Description != "ssh" || got.Metadata["role"] != "api" {
		t.Fatalf("GetVM %+v", got)
	}
	if !strings.HasPrefix(b.Name, "vm-") {
		t.Errorf("default name %q", b.Name)
	}

	ids := func(vms []fastvm.VM) []string {
		var out []string
		for _, v := range vms {
			out = append(out, v.ID)
		}
		slices.Sort(out)
		return out
	}
	for filter, want := range map[string][]string{
		"":                  {a.ID, b.ID, c.ID},
		"env=prod":          {a.ID, b.ID},
		"env=prod,role=api": {a.ID},
		"role=api":          {a.ID, c.ID},
		"env=none":          nil,
	} {
		md := map[string]string{}
		for kv := range strings.SplitSeq(filter, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				md[k] = v
			}
		}
		vms, err := env.c.ListVMs(ctx, md)
		slices.Sort(want)
		if err != nil || !slices.Equal(ids(vms), want) {
			t.Errorf("ListVMs(%s) = %v, %v; want %v", filter, ids(vms), err, want)
		}
	}

	// PATCH: rename keeps metadata; metadata replaces the whole map; {} clears.
	up, err := env.c.UpdateVM(ctx, a.ID, fastvm.VMUpdate{Name: "renamed"})
	if err != nil || up.Name != "renamed" || !maps.Equal(up.Metadata, a.Metadata) {
		t.Fatalf("rename: %+v, %v", up, err)
	}
	up, err = env.c.UpdateVM(ctx, a.ID, fastvm.VMUpdate{Metadata: map[string]string{"only": "this"}})
	if err != nil || up.Name != "renamed" || !maps.Equal(up.Metadata, map[string]string{"only": "this"}) {
		t.Fatalf("replace metadata: %+v, %v", up, err)
	}
	up, err = env.c.UpdateVM(ctx, a.ID, fastvm.VMUpdate{Metadata: map[string]string{}})
	if err != nil || len(up.Metadata) != 0 {
		t.Fatalf("clear metadata: %+v, %v", up, err)
	}
	var apiErr *fastvm.APIError
	if _, err := env.c.UpdateVM(ctx, a.ID, fastvm.VMUpdate{}); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Fatalf("empty PATCH: %v, want 400", err)
	}

	// Firewall: PUT replaces; PATCH without ingress keeps the rules; [] clears.
	up, err = env.c.SetFirewall(ctx, a.ID, fastvm.FirewallPolicy{Mode: fastvm.FirewallRestricted,
		Ingress: []fastvm.FirewallRule{{Protocol: "udp", PortStart: 5000, PortEnd: 5010}}})
	if err != nil || up.Firewall.Mode != "restricted" || len(up.Firewall.Ingress) != 1 || up.Firewall.Ingress[0].PortEnd != 5010 {
		t.Fatalf("PUT firewall: %+v, %v", up.Firewall, err)
	}
	up, err = env.c.PatchFirewall(ctx, a.ID, fastvm.FirewallPatch{Mode: fastvm.FirewallOpen})
	if err != nil || up.Firewall.Mode != "open" || len(up.Firewall.Ingress) != 1 {
		t.Fatalf("PATCH mode: %+v, %v", up.Firewall, err)
	}
	up, err = env.c.PatchFirewall(ctx, a.ID, fastvm.FirewallPatch{Ingress: []fastvm.FirewallRule{}})
	if err != nil || up.Firewall.Mode != "open" || len(up.Firewall.Ingress) != 0 {
		t.Fatalf("PATCH clear: %+v, %v", up.Firewall, err)
	}
	if _, err := env.c.SetFirewall(ctx, a.ID, fastvm.FirewallPolicy{Mode: "restricted",
		Ingress: []fastvm.FirewallRule{{Protocol: "tcp", PortStart: 80, SourceCIDRs: []string{"10.0.0.0/8"}}}}); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
		t.Fatalf("IPv4 CIDR: %v, want 400", err)
	}

	// Console: a token, then a WebSocket authenticated by it alone.
	tok, err := env.c.ConsoleToken(ctx, a.ID)
	if err != nil || tok.Token == "" || tok.ExpiresInSec <= 0 {
		t.Fatalf("console token %v, %v", tok, err)
	}
	u, err := env.c.ConsoleURL(tok)
	if err != nil {
		t.Fatal(err)
	}
	checkConsole(t, u)

	// Delete: confirmed, then gone from GET (404) and from the list.
	del, err := env.c.DeleteVM(ctx, b.ID)
	if err != nil || !del.Deleted || del.ID != b.ID {
		t.Fatalf("delete %+v, %v", del, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := env.c.GetVM(ctx, b.ID)
		if fastvm.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted VM still answers: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if vms, _ := env.c.ListVMs(ctx, nil); slices.Contains(ids(vms), b.ID) {
		t.Error("the deleted VM is still listed")
	}
}

// checkConsole types a command into the console WebSocket and waits for its
// output: proof that ConsoleURL addresses the console.
func checkConsole(t *testing.T, u string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, nil) // no API key: the token is the credential
	if err != nil {
		t.Fatalf("console dial: %v", err)
	}
	defer conn.CloseNow()
	if err := conn.Write(ctx, websocket.MessageText, []byte("echo console-$((6*7))\n")); err != nil {
		t.Fatal(err)
	}
	var seen strings.Builder
	for !strings.Contains(seen.String(), "console-42") {
		_, b, err := conn.Read(ctx)
		if err != nil {
			t.Fatalf("console read: %v (so far %q)", err, seen.String())
		}
		seen.Write(b)
	}
	conn.Close(websocket.StatusNormalClosure, "")
}

func TestEmuErrorBodies(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	var apiErr *fastvm.APIError
	_, err := env.c.GetVM(ctx, "vm_does_not_exist_000000")
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Message == "" || apiErr.Message == apiErr.Body {
		t.Fatalf("unknown VM: %#v", err)
	}
	if _, err := env.c.LaunchNoWait(ctx, fastvm.LaunchRequest{}); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "machineType") {
		t.Fatalf("launch without type: %v", err)
	}
	bad := fastvm.New("wrong-key", fastvm.WithBaseURL(env.srv.URL))
	if _, err := bad.ListVMs(ctx, nil); !errors.As(err, &apiErr) || apiErr.StatusCode != 401 || !strings.Contains(err.Error(), "API key") {
		t.Fatalf("bad key: %v", err)
	}
	if strings.Contains(err.Error(), emuKey) {
		t.Fatal("an error shows the key")
	}
}

func TestEmuRetriesIdempotentCallsOnly(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})

	for _, status := range []int{429, 503} {
		// Idempotent: GET, PATCH, DELETE of a snapshot… retried until success.
		env.wire.reset()
		env.emu.InjectTransient("GET", "/v1/vms/"+vm.ID, status, 2)
		if _, err := env.c.GetVM(ctx, vm.ID); err != nil {
			t.Fatalf("GET after 2 injected %d: %v", status, err)
		}
		if n := len(env.wire.find("GET", "/v1/vms/"+vm.ID)); n != 3 {
			t.Fatalf("%d GETs for 2 injected %d, want 3", n, status)
		}
		env.emu.InjectTransient("PATCH", "/v1/vms/"+vm.ID, status, 1)
		if _, err := env.c.UpdateVM(ctx, vm.ID, fastvm.VMUpdate{Name: "x"}); err != nil {
			t.Fatalf("PATCH after an injected %d: %v", status, err)
		}

		// Launch and exec: one attempt, the error returned.
		env.wire.reset()
		env.emu.InjectTransient("POST", "/v1/vms", status, 1)
		_, err := env.c.LaunchNoWait(ctx, fastvm.LaunchRequest{MachineType: "c1m2"})
		var apiErr *fastvm.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != status || apiErr.Attempts != 1 {
			t.Fatalf("launch with an injected %d: %v", status, err)
		}
		if n := len(env.wire.find("POST", "/v1/vms")); n != 1 {
			t.Fatalf("%d launch POSTs, want 1", n)
		}
		env.emu.InjectTransient("POST", "/v1/vms/"+vm.ID+"/exec", status, 1)
		if _, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"true"}}); !errors.As(err, &apiErr) || apiErr.StatusCode != status {
			t.Fatalf("exec with an injected %d: %v", status, err)
		}
		env.emu.InjectTransient("POST", "/v1/vms/"+vm.ID+"/exec", status, 1)
		for _, err := range env.c.ExecStream(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"true"}}) {
			if !errors.As(err, &apiErr) || apiErr.StatusCode != status {
				t.Fatalf("exec stream with an injected %d: %v", status, err)
			}
		}
		if n := len(env.wire.await(t, 2, "POST", "/v1/vms/"+vm.ID+"/exec")); n != 2 {
			t.Fatalf("%d exec POSTs, want 2 (one per call)", n)
		}
		// Nothing was left injected: the next calls work.
		if _, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"true"}}); err != nil {
			t.Fatal(err)
		}
	}
	if vms, _ := env.c.ListVMs(ctx, nil); len(vms) != 1 {
		t.Fatalf("%d VMs: a failed launch left one behind", len(vms))
	}
}

func TestEmuExecAggregate(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})

	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("echo out; echo err >&2; exit 3")})
	if err != nil || res.ExitCode != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" || res.TimedOut {
		t.Fatalf("exec %+v, %v", res, err)
	}
	// stdin goes base64 on the wire and arrives byte for byte.
	in := []byte("line 1\n\x00\xff binary\n")
	res, err = env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"sh", "-c", "od -An -tx1 | tr -d ' \\n'"}, Stdin: in})
	if err != nil || res.Stdout != "6c696e6520310a00ff2062696e6172790a" {
		t.Fatalf("stdin: %+v, %v", res, err)
	}
	start := time.Now()
	res, err = env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"sleep", "30"}, TimeoutSec: 1})
	if err != nil || !res.TimedOut || res.ExitCode != 124 || time.Since(start) > 20*time.Second {
		t.Fatalf("timeout: %+v, %v after %v", res, err, time.Since(start))
	}
	if exec := env.wire.find("POST", "/v1/vms/"+vm.ID+"/exec"); exec[0].Header.Get("Accept") != "application/json" {
		t.Errorf("aggregate exec sent Accept %q", exec[0].Header.Get("Accept"))
	}
}

func TestEmuExecStream(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})

	// Output arrives while the command runs, as raw bytes, then the exit.
	start := time.Now()
	var firstAt time.Duration
	var stdout, stderr []byte
	var exit fastvm.ExecEvent
	req := fastvm.ExecRequest{Command: fastvm.Shell(`printf 'first\n'; sleep 2; printf '\000\377' >&2; printf 'last'`)}
	for ev, err := range env.c.ExecStream(ctx, vm.ID, req) {
		if err != nil {
			t.Fatal(err)
		}
		switch ev.Type {
		case fastvm.EventStdout:
			if firstAt == 0 {
				firstAt = time.Since(start)
			}
			stdout = append(stdout, ev.Data...)
		case fastvm.EventStderr:
			stderr = append(stderr, ev.Data...)
		case fastvm.EventExit:
			exit = ev
		}
	}
	total := time.Since(start)
	if string(stdout) != "first\nlast" || string(stderr) != "\x00\xff" || exit.Type != "x" || exit.ExitCode != 0 || exit.TimedOut || exit.DurationMs < 2000 {
		t.Fatalf("stdout %q stderr %q exit %+v", stdout, stderr, exit)
	}
	if firstAt > total-time.Second {
		t.Errorf("first output after %v of %v: it was not streamed", firstAt, total)
	}
	// On the wire: base64 data, and an exit event without c (0) or to (false).
	raw := env.wire.await(t, 1, "POST", "/v1/vms/"+vm.ID+"/exec")[0]
	lines := strings.Split(strings.TrimSpace(string(raw.Body)), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	if _, hasC := last["c"]; hasC || last["to"] != nil || last["t"] != "x" {
		t.Fatalf("exit line %s, want no c and no to", lines[len(lines)-1])
	}
	if !strings.Contains(string(raw.Body), `"d":"AP8="`) || !strings.Contains(string(raw.Body), `"d":"Zmlyc3QK"`) {
		t.Fatalf("stream %s lacks the base64 data", raw.Body)
	}

	// A timeout: c and to set on the wire, decoded into the exit event.
	env.wire.reset()
	exit, err := env.c.ExecStreamFunc(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"sleep", "30"}, TimeoutSec: 1},
		func(fastvm.ExecEvent) error { return nil })
	if err != nil || !exit.TimedOut || exit.ExitCode != 124 {
		t.Fatalf("timeout exit %+v, %v", exit, err)
	}
	if body := string(env.wire.await(t, 1, "POST", "/v1/vms/"+vm.ID+"/exec")[0].Body); !strings.Contains(body, `"to":true`) || !strings.Contains(body, `"c":124`) {
		t.Fatalf("timeout stream %s", body)
	}
	// A non-zero exit code comes through c.
	exit, err = env.c.ExecStreamFunc(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("exit 7")}, func(fastvm.ExecEvent) error { return nil })
	if err != nil || exit.ExitCode != 7 || exit.TimedOut {
		t.Fatalf("exit 7: %+v, %v", exit, err)
	}
}

func TestEmuSnapshots(t *testing.T) {
	env := newEmu(t, fastvmemu.Options{}, fastvm.WithPollInterval(500*time.Millisecond))
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{})
	if res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: fastvm.Shell("echo saved > /root/marker")}); err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	s, err := env.c.CreateSnapshot(ctx, vm.ID, "")
	if err != nil || s.VMID != vm.ID || !strings.HasPrefix(s.Name, "snapshot-") {
		t.Fatalf("create %+v, %v", s, err)
	}
	if posts := env.wire.find("POST", "/v1/snapshots"); posts[0].Status != http.StatusCreated {
		t.Fatalf("snapshot POST answered %d, want 201", posts[0].Status)
	}
	if s, err = env.c.WaitSnapshot(ctx, s.ID); err != nil || s.Status != fastvm.SnapshotReady {
		t.Fatalf("wait %+v, %v", s, err)
	}
	if s, err = env.c.RenameSnapshot(ctx, s.ID, "golden"); err != nil || s.Name != "golden" {
		t.Fatalf("rename %+v, %v", s, err)
	}
	list, err := env.c.ListSnapshots(ctx)
	if err != nil || len(list) != 1 || list[0].ID != s.ID || list[0].Name != "golden" {
		t.Fatalf("list %+v, %v", list, err)
	}
	restored := env.launch(t, fastvm.LaunchRequest{SnapshotID: s.ID})
	res, err := env.c.Exec(ctx, restored.ID, fastvm.ExecRequest{Command: []string{"cat", "/root/marker"}})
	if err != nil || res.Stdout != "saved\n" || restored.MachineName != "c1m2" {
		t.Fatalf("restored VM %+v: %+v, %v", restored, res, err)
	}
	if del, err := env.c.DeleteSnapshot(ctx, s.ID); err != nil || !del.Deleted {
		t.Fatalf("delete %+v, %v", del, err)
	}
	if _, err := env.c.GetSnapshot(ctx, s.ID); !fastvm.IsNotFound(err) {
		t.Fatalf("deleted snapshot: %v", err)
	}
}
