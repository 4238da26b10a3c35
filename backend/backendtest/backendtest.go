// Package backendtest is one behavioural suite for every backend: the
// local engine, ForeverVM and FastVM (each against its emulator in tests)
// and the in-memory fake. It speaks only the interfaces of package backend
// and asks Has(capability) before each part, so that what the tools rely on
// is checked the same way everywhere and a backend that lacks a capability
// skips its part instead of failing it.
//
// The suite's Python is kept to what a tiny fake interpreter can run
// (assignments, integer arithmetic, print, time.sleep) and its commands to
// a few shell built-ins (echo, cat, printenv, pwd, mkdir, sleep, exit), so
// that the fake passes it too; what needs a real interpreter is behind
// Options.RealPython.
package backendtest

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// Options tune the suite to the backend under test.
type Options struct {
	// RealPython says the backend runs CPython, so that the suite also
	// checks what only a real interpreter does: tracebacks, a CPU-bound
	// loop interrupted by a timeout, files opened from Python.
	RealPython bool
	// LargeFileBytes is the size of the large file's round trip; 0 means
	// 20 MiB.
	LargeFileBytes int64
	// Grace is how much longer than a timeout or a cancellation a call may
	// take to return; 0 means 5 s. Backends that poll a service may need
	// more.
	Grace time.Duration
	// UncountedLeftRunning says the backend's commands do not report the
	// processes they leave running (CommandResult.LeftRunning): counting
	// them would cost the backend another request per command.
	UncountedLeftRunning bool
	// Skip names subtests that must not run, as the paths t.Run gives them
	// below the suite (e.g. "Python/Timeout"), each with the reason: a
	// known bug of the backend, named.
	Skip map[string]string
	// Only, when set, runs just these top-level parts (e.g. "Idle"), for a
	// second configuration of a backend that differs in one behaviour.
	Only []string
}

func (o Options) grace() time.Duration {
	if o.Grace > 0 {
		return o.Grace
	}
	return 5 * time.Second
}

func (o Options) largeFileBytes() int64 {
	if o.LargeFileBytes > 0 {
		return o.LargeFileBytes
	}
	return 20 << 20
}

// callTimeout bounds every call of the suite that is not meant to end
// early, so that a hung backend fails its test rather than the binary.
const callTimeout = 2 * time.Minute

// suite is one run: the backend and its options.
type suite struct {
	b    backend.Backend
	opts Options
	root string // the name of the suite's own test, to turn names into Skip keys
}

// Run runs the suite against the backend that newBackend returns. It is
// called once, with the suite's own t, and the backend serves every
// subtest: whatever it needs closed goes in t.Cleanup.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend, opts Options) {
	s := &suite{b: newBackend(t), opts: opts, root: t.Name() + "/"}
	parts := []struct {
		name string
		run  func(*testing.T)
	}{
		{"Capabilities", s.testCapabilities},
		{"Lifecycle", s.testLifecycle},
		{"Python", s.testPython},
		{"Commands", s.testCommands},
		{"Files", s.testFiles},
		{"Snapshots", s.testSnapshots},
		{"Reset", s.testReset},
		{"Idle", s.testIdle},
	}
	for _, p := range parts {
		if len(opts.Only) > 0 && !slices.Contains(opts.Only, p.name) {
			continue
		}
		s.run(t, p.name, p.run)
	}
}

// run is t.Run that first skips a subtest named in Options.Skip.
func (s *suite) run(t *testing.T, name string, f func(*testing.T)) bool {
	return t.Run(name, func(t *testing.T) {
		key := strings.TrimPrefix(t.Name(), s.root)
		if reason, ok := s.opts.Skip[key]; ok {
			t.Skip(reason)
		}
		f(t)
	})
}

// need skips the test unless the backend has every capability.
func (s *suite) need(t *testing.T, caps ...backend.Capability) {
	t.Helper()
	for _, c := range caps {
		if !s.b.Has(c) {
			t.Skipf("%s machines do not have %s", s.b.Name(), c)
		}
	}
}

// ctx is a context for calls that should finish: it ends with the test.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), callTimeout)
	t.Cleanup(cancel)
	return c
}

// newMachine creates a machine and returns it; it is deleted when the test
// ends, where the backend deletes machines.
func (s *suite) newMachine(t *testing.T, spec backend.MachineSpec) backend.Machine {
	t.Helper()
	info, err := s.b.Create(ctx(t), spec)
	if err != nil {
		t.Fatalf("Create(%+v): %v", spec, err)
	}
	t.Cleanup(func() {
		// ForeverVM keeps every machine: its Delete fails, and that is
		// its promise, not this test's failure.
		c, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		s.b.Delete(c, info.ID)
	})
	m, err := s.b.Machine(ctx(t), info.ID)
	if err != nil {
		t.Fatalf("Machine(%s) just after Create: %v", info.ID, err)
	}
	return m
}

// testCapabilities: Has reports exactly the interfaces the machines (and
// the backend) implement, so that a tool's type assertion and the
// capability list it shows never disagree; a backend without snapshots
// refuses to start from one with an error instead of starting empty.
func (s *suite) testCapabilities(t *testing.T) {
	m := s.newMachine(t, backend.MachineSpec{})
	implements := map[backend.Capability]bool{}
	_, implements[backend.Python] = m.(backend.PythonRunner)
	_, implements[backend.Shell] = m.(backend.CommandRunner)
	_, implements[backend.Files] = m.(backend.FileStore)
	_, implements[backend.Snapshots] = m.(backend.Snapshotter)
	_, implements[backend.Firewall] = m.(backend.FirewallSetter)
	_, implements[backend.Reset] = m.(backend.Resetter)
	_, implements[backend.Build] = s.b.(backend.ImageBuilder)
	for c, impl := range implements {
		if has := s.b.Has(c); has != impl {
			t.Errorf("Has(%s) = %v, but the implementation of the interface is %v", c, has, impl)
		}
	}
	if s.b.Has("no-such-capability") {
		t.Error(`Has("no-such-capability") = true`)
	}
	if m.Backend() != s.b.Name() {
		t.Errorf("machine's Backend() = %q; the backend's Name() is %q", m.Backend(), s.b.Name())
	}
	if !s.b.Has(backend.Snapshots) {
		if snaps, err := s.b.Snapshots(ctx(t)); err != nil || len(snaps) != 0 {
			t.Errorf("Snapshots() of a backend without snapshots = %v, %v; want none and no error", snaps, err)
		}
		if info, err := s.b.Create(ctx(t), backend.MachineSpec{FromSnapshot: "no-such-snapshot"}); err == nil {
			s.b.Delete(ctx(t), info.ID)
			t.Error("Create from a snapshot on a backend without snapshots succeeded")
		} else {
			t.Logf("Create from a snapshot without snapshots: %v", err)
		}
	}
	if _, err := s.b.Machine(ctx(t), "not a machine id"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf(`Machine("not a machine id") = %v; want ErrNotFound`, err)
	}
}

// testLifecycle: a machine is created with its name and tags, found by
// id, listed, and gone once deleted.
func (s *suite) testLifecycle(t *testing.T) {
	spec := backend.MachineSpec{Name: "backendtest-lifecycle", Tags: map[string]string{"backendtest": "lifecycle"}}
	info, err := s.b.Create(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	deleted := false
	t.Cleanup(func() {
		if !deleted {
			s.b.Delete(context.Background(), info.ID)
		}
	})
	if info.ID == "" || info.Backend != s.b.Name() || info.Name != spec.Name {
		t.Errorf("Create = %+v; want an id, backend %q and name %q", info, s.b.Name(), spec.Name)
	}
	if info.Tags["backendtest"] != "lifecycle" {
		t.Errorf("Create's tags = %v; want them to hold backendtest=lifecycle", info.Tags)
	}
	if !s.b.Recognizes(info.ID) {
		t.Errorf("Recognizes(%q) = false for one of its own machines", info.ID)
	}
	if s.b.Recognizes("not a machine id") {
		t.Error(`Recognizes("not a machine id") = true`)
	}
	m, err := s.b.Machine(ctx(t), info.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID() != info.ID || m.Backend() != s.b.Name() {
		t.Errorf("Machine(%s) has id %q and backend %q", info.ID, m.ID(), m.Backend())
	}
	listed := func() *backend.MachineInfo {
		list, err := s.b.Machines(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		for i := range list {
			if list[i].ID == info.ID {
				return &list[i]
			}
		}
		return nil
	}
	if l := listed(); l == nil {
		t.Errorf("Machines() does not list %s", info.ID)
	} else if l.Name != spec.Name || l.Backend != s.b.Name() || l.Tags["backendtest"] != "lifecycle" {
		t.Errorf("Machines() lists %+v; want name %q, backend %q and the tags", *l, spec.Name, s.b.Name())
	}

	if err := s.b.Delete(ctx(t), info.ID); err != nil {
		t.Logf("Delete: %v (the backend keeps its machines)", err)
		return
	}
	deleted = true
	if _, err := s.b.Machine(ctx(t), info.ID); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Machine(%s) after Delete = %v; want ErrNotFound", info.ID, err)
	}
	if l := listed(); l != nil {
		t.Errorf("Machines() lists %s after Delete: %+v", info.ID, *l)
	}
	// Deleting it again is no failure: FastVM says nothing of a VM it is
	// still deleting.
	if err := s.b.Delete(ctx(t), info.ID); err != nil && !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("a second Delete(%s) = %v; want nil or ErrNotFound", info.ID, err)
	}
}
