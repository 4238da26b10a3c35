//go:build linux && !vmcp_nolocal

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/broker"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
)

// cliFixture is a state directory as servers leave it, made through the
// engine and the store directly (no sandbox starts).
type cliFixture struct {
	dir string
	env map[string]string
	// owned is the default conversation's default machine; unused is
	// another of its machines, last used two hours ago; orphan is one no
	// conversation refers to; legacy is the default machine of a version
	// from before conversations; gone is a machine the conversation
	// refers to that no longer exists.
	owned, unused, orphan, legacy, gone string
	// snap is the conversation's snapshot, loose one that none owns.
	snap, loose string
	handle      string
}

func newCLIFixture(t *testing.T) *cliFixture {
	t.Helper()
	ctx := context.Background()
	f := &cliFixture{dir: t.TempDir(), gone: "m-00000000000000000001"}
	// The engine of the commands runs no sandbox here: nothing in these
	// tests starts one.
	f.env = map[string]string{"VMCP_STATE_DIR": f.dir, "VMCP_DANGEROUSLY_DISABLE_SANDBOX": "1"}
	e, err := local.New(local.Options{StateDir: f.dir, DangerouslyDisableSandbox: true})
	if err != nil {
		t.Fatal(err)
	}
	create := func(name string, tags map[string]string) string {
		info, err := e.Create(ctx, local.MachineSpec{Name: name, Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	f.owned, f.unused, f.orphan = create("main", nil), create("old", nil), create("lost", nil)
	f.legacy = create("legacy", map[string]string{"vmcp": "default"})
	m, err := e.Machine(f.owned)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.dir, "machines", f.owned, "workspace", "data.bin"), make([]byte, 100<<10), 0o644)
	snap, err := m.Snapshot(ctx, "keep")
	if err != nil {
		t.Fatal(err)
	}
	loose, err := m.Snapshot(ctx, "loose")
	if err != nil {
		t.Fatal(err)
	}
	f.snap, f.loose = snap.ID, loose.ID

	store, err := conversations.OpenBolt(filepath.Join(f.dir, "sessions.db"))
	if err != nil {
		t.Fatal(err)
	}
	manager := conversations.NewManager(store, conversations.Limits{})
	c, _, err := manager.Resolve(ctx, principal.Local(), "", "")
	if err != nil {
		t.Fatal(err)
	}
	f.handle = c.Handle
	if _, err := store.Update(ctx, c.Principal, c.Handle, func(c *conversations.Conversation) error {
		now := time.Now().UTC()
		c.AddMachine("local", f.owned, now)
		c.SetDefault("local", f.owned)
		c.AddMachine("local", f.unused, now.Add(-2*time.Hour))
		c.Machine("local", f.unused).LastUsed = now.Add(-2 * time.Hour)
		c.AddMachine("local", f.gone, now)
		c.Snapshots = append(c.Snapshots, conversations.Snapshot{Backend: "local", ID: f.snap, Machine: f.owned, CreatedAt: now})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	store.Close()
	e.Close()
	return f
}

// conversation is the fixture's conversation as the store has it now.
func (f *cliFixture) conversation(t *testing.T) *conversations.Conversation {
	t.Helper()
	store, err := conversations.OpenBolt(filepath.Join(f.dir, "sessions.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c, err := store.Load(context.Background(), principal.Local(), f.handle)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// machineDirs are the machines on disk.
func (f *cliFixture) machineDirs(t *testing.T) map[string]bool {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(f.dir, "machines"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, e := range entries {
		out[e.Name()] = true
	}
	return out
}

// TestCLIMachinesListRmPrune: list shows every machine with its owner;
// rm deletes one and the conversation forgets it; prune deletes what no
// conversation refers to (not the legacy default machine), then with
// --unused-for what was unused that long, and forgets the machine that
// no longer exists; --dry-run deletes nothing.
func TestCLIMachinesListRmPrune(t *testing.T) {
	f := newCLIFixture(t)
	tag := broker.ConversationTag(f.handle)

	res := runCLITest(t, f.env, "machines", "list", "--json")
	if res.err != nil {
		t.Fatalf("list: %v\n%s", res.err, res.stderr)
	}
	var list machineListing
	if err := json.Unmarshal([]byte(res.stdout), &list); err != nil {
		t.Fatalf("list --json: %v\n%s", err, res.stdout)
	}
	rows := map[string]machineRow{}
	for _, m := range list.Machines {
		rows[m.ID] = m
	}
	if len(list.Machines) != 4 || list.ServerRunning || !list.ConversationsKnown || list.StateDir != f.dir {
		t.Fatalf("list: %+v", list)
	}
	if m := rows[f.owned]; m.Conversation != tag || !m.Default || m.Principal != principal.Local() || m.Status != "stopped" || m.Name != "main" ||
		m.DiskBytes == nil || *m.DiskBytes < 100<<10 || m.LastUsed == nil || m.Backend != "local" {
		t.Errorf("the conversation's machine: %+v", m)
	}
	if m := rows[f.unused]; m.Conversation != tag || m.Default || m.LastUsed == nil || time.Since(*m.LastUsed) < time.Hour {
		t.Errorf("the unused machine: %+v", m)
	}
	if m := rows[f.orphan]; m.Conversation != "" || m.Principal != "" || m.Legacy {
		t.Errorf("the orphan: %+v", m)
	}
	if m := rows[f.legacy]; m.Conversation != "" || !m.Legacy || m.Tags["vmcp"] != "default" {
		t.Errorf("the legacy default machine: %+v", m)
	}
	if strings.Contains(res.stdout, f.handle) {
		t.Error("the list shows a conversation's handle, a secret")
	}
	res = runCLITest(t, f.env, "machines", "list")
	for _, want := range []string{"ID", "NAME", "STATUS", "CONVERSATION", f.owned, tag + " *", "(none)", "4 local machines in " + f.dir,
		"(none: adopted at start)", "1 machine no conversation refers to (`mcp-server machines prune` deletes it)"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("list lacks %q:\n%s", want, res.stdout)
		}
	}

	// rm: one deleted (the conversation's default), one unknown.
	res = runCLITest(t, f.env, "machines", "rm", f.owned, "m-0123456789abcdef0123")
	if !errors.Is(res.err, errReported) || !strings.Contains(res.stdout, "deleted machine "+f.owned+" of conversation "+tag) ||
		!strings.Contains(res.stderr, "machine m-0123456789abcdef0123 not found") {
		t.Errorf("rm: %+v", res)
	}
	if f.machineDirs(t)[f.owned] {
		t.Error("the deleted machine's directory is still there")
	}
	c := f.conversation(t)
	if c.Machine("local", f.owned) != nil || c.Default != nil {
		t.Errorf("the conversation still refers to the deleted machine: %+v", c)
	}
	if res := runCLITest(t, f.env, "machines", "rm", f.owned); !errors.Is(res.err, errReported) || !strings.Contains(res.stderr, "not found") {
		t.Errorf("rm again: %+v", res)
	}

	// prune --dry-run: says, deletes nothing.
	res = runCLITest(t, f.env, "machines", "prune", "--dry-run")
	if res.err != nil || !strings.Contains(res.stdout, "would delete machine "+f.orphan+` "lost": no conversation refers to it`) ||
		!strings.Contains(res.stdout, "would forget machine "+f.gone) || !strings.Contains(res.stdout, "nothing was deleted") ||
		strings.Contains(res.stdout, f.legacy) || strings.Contains(res.stdout, f.unused) {
		t.Errorf("prune --dry-run: %+v", res)
	}
	if !f.machineDirs(t)[f.orphan] || f.conversation(t).Machine("local", f.gone) == nil {
		t.Error("prune --dry-run deleted something")
	}

	// prune: the orphan goes, the legacy default and the conversation's
	// machine stay, the record of the machine gone is forgotten.
	res = runCLITest(t, f.env, "machines", "prune")
	if res.err != nil || !strings.Contains(res.stdout, "deleted machine "+f.orphan) || !strings.Contains(res.stdout, "forgot machine "+f.gone) ||
		!strings.Contains(res.stdout, "pruned 1 machine (and 1 record of machines gone already), freeing") {
		t.Errorf("prune: %+v", res)
	}
	dirs := f.machineDirs(t)
	if dirs[f.orphan] || !dirs[f.legacy] || !dirs[f.unused] {
		t.Errorf("after prune: %v", dirs)
	}
	if c := f.conversation(t); c.Machine("local", f.gone) != nil || c.Machine("local", f.unused) == nil {
		t.Errorf("after prune, the conversation: %+v", c)
	}
	if res := runCLITest(t, f.env, "machines", "prune", "--unused-for", "3h"); res.err != nil || !strings.Contains(res.stdout, "nothing to prune") {
		t.Errorf("prune --unused-for 3h: %+v", res)
	}

	// prune --unused-for: the machine unused for two hours goes too.
	res = runCLITest(t, f.env, "machines", "prune", "--unused-for", "1h")
	if res.err != nil || !strings.Contains(res.stdout, "deleted machine "+f.unused+` "old": conversation `+tag) || !strings.Contains(res.stdout, "last used it 2h ago") {
		t.Errorf("prune --unused-for 1h: %+v", res)
	}
	if dirs := f.machineDirs(t); dirs[f.unused] || !dirs[f.legacy] {
		t.Errorf("after prune --unused-for: %v", dirs)
	}
	if c := f.conversation(t); len(c.Machines) != 0 {
		t.Errorf("after prune --unused-for, the conversation: %+v", c)
	}
	// The snapshots taken from the deleted machines stay.
	if res := runCLITest(t, f.env, "snapshots", "list"); !strings.Contains(res.stdout, f.snap) || !strings.Contains(res.stdout, f.loose) {
		t.Errorf("snapshots after the machines went: %+v", res)
	}
}

// TestCLISnapshots: list shows each snapshot with its owner; rm deletes
// one a conversation owns (which forgets it) and one none owns.
func TestCLISnapshots(t *testing.T) {
	f := newCLIFixture(t)
	tag := broker.ConversationTag(f.handle)
	res := runCLITest(t, f.env, "snapshots", "list", "--json")
	var list snapshotListing
	if err := json.Unmarshal([]byte(res.stdout), &list); err != nil || len(list.Snapshots) != 2 {
		t.Fatalf("snapshots list --json: %v %+v\n%s", err, res, res.stdout)
	}
	for _, s := range list.Snapshots {
		switch s.ID {
		case f.snap:
			if s.Conversation != tag || s.Name != "keep" || s.Machine != f.owned || s.SizeBytes < 100<<10 {
				t.Errorf("the conversation's snapshot: %+v", s)
			}
		case f.loose:
			if s.Conversation != "" {
				t.Errorf("the loose snapshot: %+v", s)
			}
		}
	}
	res = runCLITest(t, f.env, "snapshots", "list")
	for _, want := range []string{"FROM MACHINE", f.snap, "keep", tag, "(none)", "2 local snapshots in " + f.dir} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("snapshots list lacks %q:\n%s", want, res.stdout)
		}
	}
	res = runCLITest(t, f.env, "snapshots", "rm", f.snap, f.loose, "s-0123456789abcdef0123")
	if !errors.Is(res.err, errReported) || !strings.Contains(res.stdout, "deleted snapshot "+f.snap+" of conversation "+tag) ||
		!strings.Contains(res.stdout, "deleted snapshot "+f.loose+" (no conversation owned it)") || !strings.Contains(res.stderr, "snapshot s-0123456789abcdef0123 not found") {
		t.Errorf("snapshots rm: %+v", res)
	}
	if c := f.conversation(t); len(c.Snapshots) != 0 {
		t.Errorf("the conversation still owns: %+v", c.Snapshots)
	}
	if entries, _ := os.ReadDir(filepath.Join(f.dir, "snapshots")); len(entries) != 0 {
		t.Errorf("snapshots left on disk: %v", entries)
	}
}

// TestCLIRefusesWhileAServerOwnsTheStateDirectory: while another process
// holds the state directory (as a server does), rm and prune refuse,
// naming its pid, and delete nothing; the lists read the records.
func TestCLIRefusesWhileAServerOwnsTheStateDirectory(t *testing.T) {
	f := newCLIFixture(t)
	e, err := local.New(local.Options{StateDir: f.dir, DangerouslyDisableSandbox: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	pid := fmt.Sprintf("(pid %d)", os.Getpid())
	for _, args := range [][]string{{"machines", "rm", f.orphan}, {"machines", "prune"}, {"machines", "prune", "--dry-run"}, {"snapshots", "rm", f.loose}} {
		res := runCLITest(t, f.env, args...)
		if res.err == nil || !strings.Contains(res.err.Error(), "a vmcp server "+pid+" owns state directory "+f.dir) ||
			!strings.Contains(res.err.Error(), "Stop that server") {
			t.Errorf("%q: %+v", args, res)
		}
	}
	if dirs := f.machineDirs(t); !dirs[f.orphan] {
		t.Error("a refused rm deleted the machine")
	}

	res := runCLITest(t, f.env, "machines", "list", "--json")
	var list machineListing
	if err := json.Unmarshal([]byte(res.stdout), &list); err != nil {
		t.Fatalf("list --json: %v\n%s", err, res.stdout)
	}
	if res.err != nil || len(list.Machines) != 4 || !list.ServerRunning || list.ServerPID != os.Getpid() || list.ConversationsKnown ||
		!strings.Contains(res.stderr, "a vmcp server "+pid+" owns "+f.dir) {
		t.Errorf("list while owned: %+v %+v", res, list)
	}
	for _, m := range list.Machines {
		if m.Status != "unknown" || m.Conversation != "" || m.CreatedAt.IsZero() {
			t.Errorf("a machine listed while owned: %+v", m)
		}
		if m.ID == f.owned && (m.DiskBytes == nil || *m.DiskBytes < 100<<10) {
			t.Errorf("the machine's disk use while owned: %+v", m)
		}
	}
	res = runCLITest(t, f.env, "snapshots", "list")
	if res.err != nil || !strings.Contains(res.stdout, f.snap) || !strings.Contains(res.stdout, "unknown") {
		t.Errorf("snapshots list while owned: %+v", res)
	}
	// The owner's machines still work: the lists took nothing from it.
	if _, err := e.Machine(f.owned); err != nil {
		t.Error(err)
	}
}

// TestCLIDoctor: on this host (with bubblewrap, as the engine's tests
// need), every check of the local backend passes and says what it found.
func TestCLIDoctor(t *testing.T) {
	if _, err := exec.LookPath("bwrap"); err != nil {
		t.Skip("bubblewrap is not installed")
	}
	dir := t.TempDir()
	res := runCLITest(t, map[string]string{"VMCP_STATE_DIR": dir}, "doctor")
	if res.err != nil {
		t.Fatalf("doctor: %v\n%s", res.err, res.stdout)
	}
	for _, want := range []string{"ok    state directory  " + dir + ": writable; no vmcp server runs on it", "ok    disk ", "ok    bubblewrap       bubblewrap ",
		"ok    user namespaces", "ok    sandbox          a machine's sandbox started and ran `true` in", "ok    python           Python 3.",
		"cgroups ", "skip  fastvm", "skip  forevervm", "every check passed"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("doctor lacks %q:\n%s", want, res.stdout)
		}
	}
	// A machine's probe leaves nothing behind.
	if matches, _ := filepath.Glob(filepath.Join(os.TempDir(), "vmcp-doctor-*")); len(matches) > 0 {
		t.Errorf("doctor left %v", matches)
	}
}

// TestCLIRemoveForgetsAMachineGoneAlready: rm of a machine that a
// conversation refers to but that no longer exists (deleted outside vmcp)
// clears the conversation's record.
func TestCLIRemoveForgetsAMachineGoneAlready(t *testing.T) {
	f := newCLIFixture(t)
	res := runCLITest(t, f.env, "machines", "rm", f.gone)
	if res.err != nil || !strings.Contains(res.stdout, "machine "+f.gone+" no longer existed; conversation "+broker.ConversationTag(f.handle)+" ("+principal.Local()+") forgot it") {
		t.Errorf("rm of a machine gone already: %+v", res)
	}
	if c := f.conversation(t); c.Machine("local", f.gone) != nil || c.Machine("local", f.owned) == nil {
		t.Errorf("the conversation after rm: %+v", c)
	}
}
