package broker

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendfake"
	"github.com/vmcp-dev/vmcp/conversations"
)

// The tests of this file drive the broker's timing (idle timeouts, parking,
// conversations' time to live) on a clock they move by hand, over the
// in-memory fake backend and a real session store: what the end-to-end
// tests wait seconds for takes microseconds, and every boundary is checked
// exactly, a nanosecond before and at the timeout.

// clocked is a broker over fake backends, its conversations and the clock they
// all read.
type clocked struct {
	clock *backendfake.Clock
	b     *Broker
	m     *conversations.Manager
}

// newClocked returns a broker over backends on one clock; cfg gives its
// timeouts. The backends must have been made with clock.Now.
func newClocked(t *testing.T, clock *backendfake.Clock, cfg Config, backends ...backend.Backend) *clocked {
	t.Helper()
	cfg.Backends, cfg.Now = backends, clock.Now
	if cfg.Instance == "" {
		cfg.Instance = "test-instance"
	}
	b, m := newBroker(t, cfg)
	m.SetClock(clock.Now) // the broker measures idleness against its stamps
	return &clocked{clock: clock, b: b, m: m}
}

// reap runs one pass of the reaper and checks what it did.
func (k *clocked) reap(t *testing.T, want ReapResult, why string) {
	t.Helper()
	got, err := k.b.Reap(context.Background())
	if err != nil {
		t.Fatalf("%s: reap: %v", why, err)
	}
	if got != want {
		t.Fatalf("%s: reap did %+v, want %+v", why, got, want)
	}
}

// reapsAtTimeout checks that the reaper does nothing a nanosecond before
// the idle timeout from now, and want at it.
func (k *clocked) reapsAtTimeout(t *testing.T, want ReapResult, what string) {
	t.Helper()
	k.clock.Advance(idle - time.Nanosecond)
	k.reap(t, ReapResult{}, what+": a nanosecond before the timeout")
	k.clock.Advance(time.Nanosecond)
	k.reap(t, want, what+": at the timeout")
}

// load is the stored record of a conversation.
func (k *clocked) load(t *testing.T, c *conversations.Conversation) *conversations.Conversation {
	t.Helper()
	c, err := k.m.Store().Load(context.Background(), c.Principal, c.Handle)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// held acquires a machine and keeps it until the test releases it.
func held(t *testing.T, b *Broker, c *conversations.Conversation, id string) *Lease {
	t.Helper()
	l, err := b.Acquire(context.Background(), c, id, backend.Shell)
	if err != nil {
		t.Fatalf("acquire %q: %v", id, err)
	}
	return l
}

// shell runs a command line in a machine and returns its stdout.
func shell(t *testing.T, m backend.Machine, line string) string {
	t.Helper()
	res, err := m.(backend.CommandRunner).Run(context.Background(), backend.Command{Shell: line})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("%s on %s: %+v, %v", line, m.ID(), res, err)
	}
	return res.Stdout
}

// python runs code in a machine.
func python(t *testing.T, m backend.Machine, code string) *backend.PythonResult {
	t.Helper()
	res, err := m.(backend.PythonRunner).RunPython(context.Background(), code, backend.PythonOptions{})
	if err != nil {
		t.Fatalf("%s on %s: %v", code, m.ID(), err)
	}
	return res
}

// status is the fake backend's status of a machine, "" if it has none.
func status(t *testing.T, be backend.Backend, id string) string {
	t.Helper()
	infos, err := be.Machines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		if info.ID == id {
			return info.Status
		}
	}
	return ""
}

// machineIDs are the ids of the backend's machines.
// machineNames maps the backend's machines' ids to their names.
func machineNames(t *testing.T, be backend.Backend) map[string]string {
	t.Helper()
	infos, err := be.Machines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, info := range infos {
		names[info.ID] = info.Name
	}
	return names
}

func machineIDs(t *testing.T, be backend.Backend) []string {
	t.Helper()
	infos, err := be.Machines(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, info := range infos {
		ids = append(ids, info.ID)
	}
	slices.Sort(ids)
	return ids
}

// snapshotIDs are the ids of the backend's snapshots.
func snapshotIDs(t *testing.T, be backend.Backend) []string {
	t.Helper()
	snaps, err := be.Snapshots(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, s := range snaps {
		ids = append(ids, s.ID)
	}
	return ids
}

const idle = 10 * time.Minute

// TestIdleMachineIsStoppedAtItsTimeout: on a backend that stops idle
// machines (the local engine), a machine unused for its idle timeout is
// stopped, and not a nanosecond before; once, not at every look; the next
// call finds the same machine with its files and says that Python's state
// was reset; and that call starts the idle time again.
func TestIdleMachineIsStoppedAtItsTimeout(t *testing.T) {
	clock := backendfake.NewClock()
	be := backendfake.New(backendfake.Options{Name: "local", Now: clock.Now})
	k := newClocked(t, clock, Config{Idle: map[string]time.Duration{"local": idle}}, be)
	c := conversation(t, k.m, "alice")

	l := held(t, k.b, c, "")
	id := l.Machine.ID()
	shell(t, l.Machine, "echo kept > f")
	python(t, l.Machine, "x = 41")
	l.Release()

	clock.Advance(idle - time.Nanosecond)
	k.reap(t, ReapResult{}, "a nanosecond before the timeout")
	if got := status(t, be, id); got != "running" {
		t.Fatalf("before the timeout the machine is %q, want running", got)
	}
	clock.Advance(time.Nanosecond)
	k.reap(t, ReapResult{Stopped: 1}, "at the timeout")
	if got := status(t, be, id); got != "stopped" {
		t.Fatalf("at the timeout the machine is %q, want stopped", got)
	}
	clock.Advance(idle)
	k.reap(t, ReapResult{}, "stopped already and unused since")

	l = held(t, k.b, c, "")
	if l.Machine.ID() != id || len(l.Notes) != 0 {
		t.Fatalf("after the stop: machine %s with notes %q, want %s without notes", l.Machine.ID(), l.Notes, id)
	}
	if got := shell(t, l.Machine, "cat f"); got != "kept\n" {
		t.Errorf("the file after the stop: %q", got)
	}
	res := python(t, l.Machine, "x")
	if !strings.Contains(res.StateReset, "stopped") || !strings.Contains(res.Error, "NameError") {
		t.Errorf("Python after the stop: reset %q, error %q; want the reset said and x gone", res.StateReset, res.Error)
	}
	l.Release()

	k.reapsAtTimeout(t, ReapResult{Stopped: 1}, "the timeout counted from the last call")
}

// TestIdleMachineIsParkedAndRestored: on a backend that parks idle machines
// (FastVM without pause), a machine unused for its idle timeout is saved as
// a snapshot, recorded as parked and deleted, and not a nanosecond before;
// the next call relaunches it from the snapshot with its files, under a new
// id that the old one still reaches, says so, and deletes the parking
// snapshot; nothing runs that the conversation does not own.
func TestIdleMachineIsParkedAndRestored(t *testing.T) {
	clock := backendfake.NewClock()
	be := backendfake.New(backendfake.Options{Name: "fastvm", Now: clock.Now, IdleParks: true})
	k := newClocked(t, clock, Config{Idle: map[string]time.Duration{"fastvm": idle}}, be)
	c := conversation(t, k.m, "alice")

	l := held(t, k.b, c, "")
	first := l.Machine.ID()
	name := machineNames(t, be)[first]
	if name == "" {
		t.Fatalf("the default machine has no name: %v", machineNames(t, be))
	}
	shell(t, l.Machine, "echo kept > f")
	python(t, l.Machine, "x = 41")
	l.Release()

	clock.Advance(idle - time.Nanosecond)
	k.reap(t, ReapResult{}, "a nanosecond before the timeout")
	if rec := k.load(t, c).Machine("fastvm", first); rec == nil || rec.Parked != nil || !slices.Equal(machineIDs(t, be), []string{first}) {
		t.Fatalf("before the timeout: record %+v, machines %v", rec, machineIDs(t, be))
	}
	clock.Advance(time.Nanosecond)
	k.reap(t, ReapResult{Parked: 1}, "at the timeout")
	rec := k.load(t, c).Machine("fastvm", first)
	snaps := snapshotIDs(t, be)
	if rec == nil || rec.Parked == nil || len(snaps) != 1 || rec.Parked.Snapshot != snaps[0] || !rec.Parked.At.Equal(clock.Now()) {
		t.Fatalf("after parking: record %+v, snapshots %v", rec, snaps)
	}
	if ids := machineIDs(t, be); len(ids) != 0 {
		t.Fatalf("after parking, machines %v still exist", ids)
	}
	snap := rec.Parked.Snapshot
	clock.Advance(idle)
	k.reap(t, ReapResult{}, "parked already")

	l = held(t, k.b, c, "")
	now := l.Machine.ID()
	if now == first || len(l.Notes) != 1 || !strings.Contains(l.Notes[0], "restored from that snapshot") ||
		!strings.Contains(l.Notes[0], first) || !strings.Contains(l.Notes[0], snap) || !strings.Contains(l.Notes[0], now) {
		t.Fatalf("the call after parking got %s (was %s) with notes %q", now, first, l.Notes)
	}
	if got := shell(t, l.Machine, "cat f"); got != "kept\n" {
		t.Errorf("the file after the restore: %q", got)
	}
	if res := python(t, l.Machine, "x"); res.StateReset == "" || !strings.Contains(res.Error, "NameError") {
		t.Errorf("Python after the restore: reset %q, error %q; want the reset said and x gone", res.StateReset, res.Error)
	}
	l.Release()
	stored := k.load(t, c)
	rec = stored.Machine("fastvm", now)
	if rec == nil || rec.Parked != nil || !slices.Equal(rec.Previous, []string{first}) || !rec.LastUsed.Equal(clock.Now()) ||
		!stored.IsDefault("fastvm", now) || len(stored.Machines) != 1 {
		t.Fatalf("stored after the restore: %+v, default %+v", stored.Machines, stored.Default)
	}
	if ids := machineIDs(t, be); !slices.Equal(ids, []string{now}) {
		t.Errorf("machines after the restore %v, want only %s", ids, now)
	}
	if got := machineNames(t, be)[now]; got != name {
		t.Errorf("the restored machine is named %q, want %q as before it was parked", got, name)
	}
	if s := snapshotIDs(t, be); len(s) != 0 {
		t.Errorf("the parking snapshot outlived the restore: %v", s)
	}
	// The old id reaches the machine, without relaunching it again.
	l = held(t, k.b, c, first)
	if l.Machine.ID() != now || len(l.Notes) != 0 {
		t.Errorf("by the old id: %s with notes %q, want %s", l.Machine.ID(), l.Notes, now)
	}
	l.Release()

	// The relaunched machine idles like any other.
	k.reapsAtTimeout(t, ReapResult{Parked: 1}, "the relaunched machine at its timeout")
}

// TestHeldMachineIsNeverIdled: however long a call holds a machine, the
// reaper leaves it alone, whether it stops or parks idle machines and also
// when the call relaunched the machine from its parking snapshot (under a
// new id); the machine's idle time starts when the call ends.
func TestHeldMachineIsNeverIdled(t *testing.T) {
	for _, parks := range []bool{false, true} {
		want := ReapResult{Stopped: 1}
		if parks {
			want = ReapResult{Parked: 1}
		}
		t.Run(map[bool]string{false: "stop", true: "park"}[parks], func(t *testing.T) {
			clock := backendfake.NewClock()
			be := backendfake.New(backendfake.Options{Name: "cloud", Now: clock.Now, IdleParks: parks})
			k := newClocked(t, clock, Config{Idle: map[string]time.Duration{"cloud": idle}}, be)
			c := conversation(t, k.m, "alice")

			l := held(t, k.b, c, "")
			shell(t, l.Machine, "echo kept > f")
			clock.Advance(3 * idle)
			k.reap(t, ReapResult{}, "a call holds the machine")
			if got := status(t, be, l.Machine.ID()); got != "running" {
				t.Fatalf("the held machine is %q, want running", got)
			}
			if got := shell(t, l.Machine, "cat f"); got != "kept\n" {
				t.Fatalf("the held machine's file: %q", got)
			}
			l.Release()
			k.reap(t, ReapResult{}, "the call has just ended")
			k.reapsAtTimeout(t, want, "the timeout counted from the call's end")
			if !parks {
				return
			}

			// The call that relaunches a parked machine holds it under
			// its new id too.
			l = held(t, k.b, c, "")
			if len(l.Notes) != 1 {
				t.Fatalf("the call after parking: notes %q, want the restore said", l.Notes)
			}
			clock.Advance(3 * idle)
			k.reap(t, ReapResult{}, "a call holds the relaunched machine")
			if got := status(t, be, l.Machine.ID()); got != "running" {
				t.Fatalf("the held relaunched machine %s is %q, want running", l.Machine.ID(), got)
			}
			if got := shell(t, l.Machine, "cat f"); got != "kept\n" {
				t.Fatalf("the held relaunched machine's file: %q", got)
			}
			l.Release()
			clock.Advance(idle)
			k.reap(t, want, "the relaunched machine once released")
		})
	}
}

// TestConversationTTL: the reaper closes a conversation unused for longer
// than its time to live, and not at exactly that age; any use of the
// conversation (a call on its machine, or one that touches no machine)
// starts the time again. Closing deletes the conversation's running
// machines, keeps its parked ones' snapshots as its snapshots, and leaves
// other conversations' machines alone; its handle is then refused.
func TestConversationTTL(t *testing.T) {
	const ttl = time.Hour
	clock := backendfake.NewClock()
	// Machines park on "cloud" after idle; "local" keeps them.
	cloud := backendfake.New(backendfake.Options{Name: "cloud", Now: clock.Now, IdleParks: true})
	local := backendfake.New(backendfake.Options{Name: "local", Now: clock.Now})
	k := newClocked(t, clock, Config{Idle: map[string]time.Duration{"cloud": idle}, ConversationTTL: ttl}, cloud, local)
	ctx := context.Background()

	// old: a parked machine on cloud and a running one on local.
	old := conversation(t, k.m, "alice")
	l := held(t, k.b, old, "")
	parked := l.Machine.ID()
	l.Release()
	info, err := k.b.Launch(ctx, old, local, backend.MachineSpec{Name: "work"})
	if err != nil {
		t.Fatal(err)
	}
	running := info.ID
	used := conversation(t, k.m, "alice") // the same principal's, used later
	clock.Advance(idle)
	k.reap(t, ReapResult{Parked: 1}, "old's cloud machine idle")

	clock.Advance(20 * time.Minute) // 30 min: used gets a machine on local and uses it
	info, err = k.b.Launch(ctx, used, local, backend.MachineSpec{})
	if err != nil {
		t.Fatal(err)
	}
	usedMachine := info.ID
	if got := acquire(t, k.b, used, "", backend.Shell).ID(); got != usedMachine {
		t.Fatalf("used's machine is %s, want %s", got, usedMachine)
	}
	touched := conversation(t, k.m, "bob") // another principal's, made now
	clock.Advance(15 * time.Minute)        // 45 min: a call of touched's that uses no machine
	k.m.Touch(touched.Handle)
	k.reap(t, ReapResult{}, "nothing is past its time to live yet")

	clock.Advance(15 * time.Minute) // 1 h: old is exactly ttl old
	k.reap(t, ReapResult{}, "old at exactly its time to live")
	clock.Advance(time.Nanosecond)
	k.reap(t, ReapResult{Closed: 1}, "old a nanosecond past its time to live")
	stored := k.load(t, old)
	if stored.Closed == nil || !stored.Closed.Equal(clock.Now()) || len(stored.Machines) != 0 || stored.Default != nil {
		t.Fatalf("old after closing: closed %v, machines %+v, default %+v", stored.Closed, stored.Machines, stored.Default)
	}
	if status(t, local, running) != "" {
		t.Errorf("old's running machine %s outlived its conversation", running)
	}
	if len(stored.Snapshots) != 1 || stored.Snapshots[0].Machine != parked || !slices.Equal(snapshotIDs(t, cloud), []string{stored.Snapshots[0].ID}) {
		t.Errorf("old's parked machine: snapshots %+v, on the backend %v; want its parking snapshot kept as old's", stored.Snapshots, snapshotIDs(t, cloud))
	}
	if _, _, err := k.m.Resolve(ctx, "alice", old.Handle, ""); !errors.Is(err, conversations.ErrClosed) {
		t.Errorf("old's handle after closing: %v, want it closed", err)
	}
	if status(t, local, usedMachine) != "running" || k.load(t, used).Closed != nil || k.load(t, touched).Closed != nil {
		t.Fatalf("closing old touched the others: used's machine %q", status(t, local, usedMachine))
	}
	k.reap(t, ReapResult{}, "a closed conversation is not closed again")

	clock.Advance(30*time.Minute - time.Nanosecond) // 1 h 30: used is exactly ttl old
	k.reap(t, ReapResult{}, "used at exactly its time to live")
	clock.Advance(time.Nanosecond)
	// Only used: touched, made at 30 min too, was kept by its call at 45.
	k.reap(t, ReapResult{Closed: 1}, "used a nanosecond past its time to live")
	if status(t, local, usedMachine) != "" {
		t.Errorf("used's machine %s outlived its conversation", usedMachine)
	}
	clock.Advance(15*time.Minute - time.Nanosecond) // 1 h 45: touched is exactly ttl old
	k.reap(t, ReapResult{}, "touched at exactly its time to live")
	clock.Advance(time.Nanosecond)
	k.reap(t, ReapResult{Closed: 1}, "touched a nanosecond past its time to live")
	if c, l := machineIDs(t, cloud), machineIDs(t, local); len(c)+len(l) != 0 {
		t.Errorf("machines %v %v outlived their conversations", c, l)
	}
}

// TestOthersMachinesAreNotFound: a machine of another principal is "not
// found" by id and by name, in exactly the words of a machine that does not
// exist, for every way in (acquire, find, delete); asking for it neither
// relaunches it when parked nor changes it. The same principal's other
// conversation reaches it.
func TestOthersMachinesAreNotFound(t *testing.T) {
	clock := backendfake.NewClock()
	be := backendfake.New(backendfake.Options{Name: "fastvm", Now: clock.Now, IdleParks: true})
	k := newClocked(t, clock, Config{Idle: map[string]time.Duration{"fastvm": idle}}, be)
	ctx := context.Background()
	alice, bob := conversation(t, k.m, "alice"), conversation(t, k.m, "bob")
	info, err := k.b.Launch(ctx, alice, be, backend.MachineSpec{Name: "work"})
	if err != nil {
		t.Fatal(err)
	}
	const missing = "fake-0000000000000000"

	check := func(when string) {
		t.Helper()
		for _, id := range []string{info.ID, "work"} {
			for op, try := range map[string]func(id string) error{
				"acquire": func(id string) error { _, err := k.b.Acquire(ctx, bob, id, backend.Shell); return err },
				"find":    func(id string) error { _, err := k.b.Find(ctx, bob, id); return err },
				"delete":  func(id string) error { _, err := k.b.Delete(ctx, bob, id); return err },
			} {
				foreign, none := try(id), try(missing)
				if foreign == nil || none == nil || !strings.Contains(foreign.Error(), "not found") ||
					strings.ReplaceAll(foreign.Error(), id, "ID") != strings.ReplaceAll(none.Error(), missing, "ID") {
					t.Errorf("%s: bob's %s of alice's %q: %v; of a missing machine: %v", when, op, id, foreign, none)
				}
			}
		}
	}
	check("running")
	if ids := machineIDs(t, be); !slices.Equal(ids, []string{info.ID}) {
		t.Fatalf("after bob's attempts on a running machine: machines %v", ids)
	}
	// Alice's other conversation reaches it by name.
	other := conversation(t, k.m, "alice")
	if got := acquire(t, k.b, other, "work", backend.Shell); got.ID() != info.ID {
		t.Errorf("by name from alice's other conversation: %s, want %s", got.ID(), info.ID)
	}
	clock.Advance(idle)
	k.reap(t, ReapResult{Parked: 1}, "alice's machine idle")
	check("parked")
	if ids := machineIDs(t, be); len(ids) != 0 {
		t.Fatalf("bob's attempts relaunched alice's parked machine: %v", ids)
	}
	if rec := k.load(t, alice).Machine("fastvm", info.ID); rec == nil || rec.Parked == nil {
		t.Fatalf("alice's machine after bob's attempts: %+v", rec)
	}

	// Alice's other conversation reaches it by id, and relaunches it.
	l := held(t, k.b, other, info.ID)
	if len(l.Notes) != 1 || l.Machine.ID() == info.ID || !slices.Equal(machineIDs(t, be), []string{l.Machine.ID()}) {
		t.Fatalf("alice's other conversation: %s, notes %q, machines %v; want it relaunched", l.Machine.ID(), l.Notes, machineIDs(t, be))
	}
	l.Release()
}

// TestReconcileDeletesOrphans: at start, a machine this server created for
// a conversation that never recorded it (the server was killed in between)
// is deleted; the conversations' machines, other servers' machines and
// machines the server did not create stay; the default machine of a version
// from before conversations joins the local user's conversation.
func TestReconcileDeletesOrphans(t *testing.T) {
	clock := backendfake.NewClock()
	be := backendfake.New(backendfake.Options{Name: "local", Now: clock.Now})
	k := newClocked(t, clock, Config{LocalPrincipal: "me"}, be)
	ctx := context.Background()
	c := conversation(t, k.m, "alice")
	owned := acquire(t, k.b, c, "", backend.Shell).ID()
	create := func(tags map[string]string) string {
		info, err := be.Create(ctx, backend.MachineSpec{Tags: tags})
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	orphan := create(map[string]string{TagServer: "test-instance", TagConversation: "0123456789abcdef"})
	otherServer := create(map[string]string{TagServer: "another", TagConversation: "0123456789abcdef"})
	untagged := create(nil)
	legacy := create(map[string]string{legacyDefaultTag: "default"})

	r, err := k.b.Reconcile(ctx)
	if err != nil || r != (ReconcileResult{Orphans: 1, Deleted: 1, Adopted: 1}) {
		t.Fatalf("reconcile: %+v, %v", r, err)
	}
	want := []string{owned, otherServer, untagged, legacy}
	slices.Sort(want)
	if ids := machineIDs(t, be); !slices.Equal(ids, want) {
		t.Errorf("machines after reconciling %v, want %v (all but the orphan %s)", ids, want, orphan)
	}
	mine, _, err := k.m.Resolve(ctx, "me", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := acquire(t, k.b, mine, "", backend.Shell).ID(); got != legacy {
		t.Errorf("the local user's machine is %s, want the adopted %s", got, legacy)
	}
	if r, err := k.b.Reconcile(ctx); err != nil || r != (ReconcileResult{}) {
		t.Errorf("a second reconcile: %+v, %v; want nothing to do", r, err)
	}
}
