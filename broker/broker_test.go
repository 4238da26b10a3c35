package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// fakeBackend is an in-memory backend: the broker's tests are about which
// machine a call gets, not about machines.
type fakeBackend struct {
	name string
	caps map[backend.Capability]bool

	mu       sync.Mutex
	next     int
	machines map[string]backend.MachineInfo
	idled    []string
}

func newFake(name string, caps ...backend.Capability) *fakeBackend {
	f := &fakeBackend{name: name, caps: map[backend.Capability]bool{}, machines: map[string]backend.MachineInfo{}}
	for _, c := range caps {
		f.caps[c] = true
	}
	return f
}

type fakeMachine struct{ id, backend string }

func (m fakeMachine) ID() string      { return m.id }
func (m fakeMachine) Backend() string { return m.backend }

func (f *fakeBackend) Name() string                                              { return f.name }
func (f *fakeBackend) Has(c backend.Capability) bool                             { return f.caps[c] }
func (f *fakeBackend) Recognizes(id string) bool                                 { return strings.HasPrefix(id, f.name+"-") }
func (f *fakeBackend) Snapshots(context.Context) ([]backend.SnapshotInfo, error) { return nil, nil }
func (f *fakeBackend) Create(_ context.Context, spec backend.MachineSpec) (backend.MachineInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	info := backend.MachineInfo{ID: fmt.Sprintf("%s-%d", f.name, f.next), Name: spec.Name, Backend: f.name, Status: "running", Tags: spec.Tags}
	f.machines[info.ID] = info
	return info, nil
}
func (f *fakeBackend) Machine(_ context.Context, id string) (backend.Machine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.machines[id]; !ok {
		return nil, backend.ErrNotFound
	}
	return fakeMachine{id, f.name}, nil
}
func (f *fakeBackend) Machines(context.Context) ([]backend.MachineInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []backend.MachineInfo
	for _, m := range f.machines {
		out = append(out, m)
	}
	return out, nil
}
func (f *fakeBackend) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.machines[id]; !ok {
		return backend.ErrNotFound
	}
	delete(f.machines, id)
	return nil
}
func (f *fakeBackend) Idle(_ context.Context, id string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.idled = append(f.idled, id)
	return "", nil
}

func newBroker(t *testing.T, cfg Config) (*Broker, *conversations.Manager) {
	t.Helper()
	store, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "sessions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg.Conversations = conversations.NewManager(store, conversations.Limits{})
	cfg.Log = zerolog.Nop()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b, cfg.Conversations
}

func conversation(t *testing.T, m *conversations.Manager, principal string) *conversations.Conversation {
	t.Helper()
	c, _, err := m.Resolve(context.Background(), principal, conversations.NewSession, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Save(context.Background(), c); err != nil { // as the call that began it does
		t.Fatal(err)
	}
	return c
}

func acquire(t *testing.T, b *Broker, c *conversations.Conversation, id string, need backend.Capability) backend.Machine {
	t.Helper()
	l, err := b.Acquire(context.Background(), c, id, need)
	if err != nil {
		t.Fatalf("acquire %q for %s: %v", id, need, err)
	}
	l.Release()
	return l.Machine
}

// TestOneMachinePerConversation: every capability without a machine gets
// the same machine, on the preferred backend; launching makes the new
// machine the one for every capability.
func TestOneMachinePerConversation(t *testing.T) {
	cloud := newFake("cloud", backend.Python, backend.Shell, backend.Files)
	local := newFake("local", backend.Python, backend.Shell, backend.Files, backend.Snapshots)
	b, m := newBroker(t, Config{Backends: []backend.Backend{cloud, local}})
	c := conversation(t, m, "alice")
	first := acquire(t, b, c, "", backend.Files)
	if first.Backend() != "cloud" {
		t.Fatalf("the conversation's machine is on %s, want the preferred backend", first.Backend())
	}
	for _, need := range []backend.Capability{backend.Python, backend.Shell, backend.Files} {
		if got := acquire(t, b, c, "", need); got.ID() != first.ID() {
			t.Errorf("%s went to %s, not the conversation's machine %s", need, got.ID(), first.ID())
		}
	}
	// A capability the machine lacks: a clear error naming the backend that has it.
	_, err := b.Acquire(context.Background(), c, "", backend.Snapshots)
	var ue *backend.UnsupportedError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), `launch_vm with backend "local"`) {
		t.Errorf("snapshots on a cloud machine: %v", err)
	}
	// launch_vm on the other backend: every capability follows.
	info, err := b.Launch(context.Background(), c, local, backend.MachineSpec{Name: "work"})
	if err != nil {
		t.Fatal(err)
	}
	for _, need := range []backend.Capability{backend.Python, backend.Shell, backend.Files, backend.Snapshots} {
		if got := acquire(t, b, c, "", need); got.ID() != info.ID {
			t.Errorf("after launch_vm, %s went to %s, not %s", need, got.ID(), info.ID)
		}
	}
	// By id and by name, the first machine is still reachable; another
	// principal's conversation cannot reach it.
	if got := acquire(t, b, c, first.ID(), backend.Python); got.ID() != first.ID() {
		t.Errorf("by id: %s", got.ID())
	}
	if got := acquire(t, b, c, "work", backend.Python); got.ID() != info.ID {
		t.Errorf("by name: %s", got.ID())
	}
	bob := conversation(t, m, "bob")
	if _, err := b.Acquire(context.Background(), bob, first.ID(), backend.Python); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("bob reaches alice's machine: %v", err)
	}
	if _, err := b.Acquire(context.Background(), bob, "work", backend.Python); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("bob reaches alice's machine by name: %v", err)
	}
}

// TestOlderConversationsAreMigrated: a conversation stored by a version
// with one default machine per backend goes on with the one of the
// preferred backend, keeps the others by id, and is stored migrated.
func TestOlderConversationsAreMigrated(t *testing.T) {
	cloud := newFake("cloud", backend.Python, backend.Shell, backend.Files)
	local := newFake("local", backend.Python, backend.Shell, backend.Files)
	b, m := newBroker(t, Config{Backends: []backend.Backend{cloud, local}})
	ctx := context.Background()
	onCloud, _ := cloud.Create(ctx, backend.MachineSpec{})
	onLocal, _ := local.Create(ctx, backend.MachineSpec{})
	c := conversation(t, m, "alice")
	if _, err := m.Store().Update(ctx, c.Principal, c.Handle, func(c *conversations.Conversation) error {
		c.AddMachine("local", onLocal.ID, time.Now())
		c.AddMachine("cloud", onCloud.ID, time.Now())
		c.Defaults = map[string]string{"local": onLocal.ID, "cloud": onCloud.ID} // as older versions wrote it
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, need := range []backend.Capability{backend.Files, backend.Python, backend.Shell} {
		if got := acquire(t, b, c, "", need); got.ID() != onCloud.ID {
			t.Errorf("%s after migration went to %s, want %s", need, got.ID(), onCloud.ID)
		}
	}
	stored, err := m.Store().Load(ctx, c.Principal, c.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if stored.Defaults != nil || stored.Default == nil || stored.Default.ID != onCloud.ID || len(stored.Machines) != 2 {
		t.Errorf("stored after migration: default %+v, defaults %v, %d machines", stored.Default, stored.Defaults, len(stored.Machines))
	}
	if got := acquire(t, b, c, onLocal.ID, backend.Shell); got.ID() != onLocal.ID {
		t.Errorf("the other machine by id: %s", got.ID())
	}
}

// TestReaperSparesHeldMachines: a machine held by a call is not idled
// under it, and is once the call has released it.
func TestReaperSparesHeldMachines(t *testing.T) {
	be := newFake("cloud", backend.Python)
	b, m := newBroker(t, Config{Backends: []backend.Backend{be}, Idle: map[string]time.Duration{"cloud": time.Nanosecond}})
	c := conversation(t, m, "alice")
	l, err := b.Acquire(context.Background(), c, "", backend.Python)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	if _, err := b.Reap(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(be.idled) != 0 {
		t.Fatalf("the reaper idled a machine in use: %v", be.idled)
	}
	l.Release()
	l.Release() // twice is harmless
	time.Sleep(time.Millisecond)
	r, err := b.Reap(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(be.idled) != 1 || be.idled[0] != l.Machine.ID() || r.Stopped != 1 {
		t.Fatalf("the idle machine was not idled: %v, %+v", be.idled, r)
	}
	// Stopped already and unused since: the next look does nothing, and
	// says so (the server logs only what a look did).
	if r, err = b.Reap(context.Background()); err != nil || r.Stopped+r.Parked+r.Closed != 0 || len(be.idled) != 1 {
		t.Fatalf("a second look at a stopped machine: %+v, %v, idled %v", r, err, be.idled)
	}
}
