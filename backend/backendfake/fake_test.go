//go:build linux

package backendfake

import (
	"context"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/backend/backendtest"
)

// TestConformance: the fake passes the suite the real backends pass, with
// idle machines stopped and with them parked.
func TestConformance(t *testing.T) {
	backendtest.Run(t, func(*testing.T) backend.Backend { return New(Options{}) }, backendtest.Options{})
}

func TestConformanceIdleParks(t *testing.T) {
	backendtest.Run(t, func(*testing.T) backend.Backend { return New(Options{IdleParks: true}) },
		backendtest.Options{Only: []string{"Idle", "Snapshots"}})
}

// TestClock: every timestamp comes from Options.Now, so a test moves time
// on without waiting.
func TestClock(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	b := New(Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	info, err := b.Create(ctx, backend.MachineSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if !info.CreatedAt.Equal(now) {
		t.Errorf("CreatedAt = %v; want %v", info.CreatedAt, now)
	}
	if used, ok := b.LastUsed(info.ID); !ok || !used.Equal(now) {
		t.Errorf("LastUsed after Create = %v, %v", used, ok)
	}
	m, _ := b.Machine(ctx, info.ID)
	now = now.Add(90 * time.Millisecond)
	if _, err := m.(backend.CommandRunner).Run(ctx, backend.Command{Shell: "echo x > f"}); err != nil {
		t.Fatal(err)
	}
	if used, _ := b.LastUsed(info.ID); !used.Equal(now) {
		t.Errorf("LastUsed after a command = %v; want %v", used, now)
	}
	fi, err := m.(backend.FileStore).Stat(ctx, "f")
	if err != nil || !fi.ModTime.Equal(now) {
		t.Errorf("the file's ModTime = %v, %v; want %v", fi, err, now)
	}
	if _, ok := b.LastUsed("fake-0000000000000000"); ok {
		t.Error("LastUsed of no machine says ok")
	}
	// Machines made at the same instant list in the order they were made.
	var want []string
	for range 5 {
		info, _ := b.Create(ctx, backend.MachineSpec{})
		want = append(want, info.ID)
	}
	list, _ := b.Machines(ctx)
	for i, id := range want {
		if list[i+1].ID != id {
			t.Fatalf("Machines lists %+v; want the order of creation", list)
		}
	}
}

// TestIdleStops: a stopped machine says so in its status until its next
// use, which says the Python state was reset.
func TestIdleStops(t *testing.T) {
	b := New(Options{})
	ctx := context.Background()
	info, _ := b.Create(ctx, backend.MachineSpec{})
	m, _ := b.Machine(ctx, info.ID)
	py := m.(backend.PythonRunner)
	py.RunPython(ctx, "x = 1", backend.PythonOptions{})
	if snap, err := b.Idle(ctx, info.ID); snap != "" || err != nil {
		t.Fatalf("Idle = %q, %v", snap, err)
	}
	list, _ := b.Machines(ctx)
	if len(list) != 1 || list[0].Status != "stopped" {
		t.Errorf("Machines after Idle = %+v; want it stopped", list)
	}
	r, err := py.RunPython(ctx, "x", backend.PythonOptions{})
	if err != nil || r.StateReset == "" || r.Error == "" {
		t.Errorf("x after Idle = %+v, %v; want a NameError and the reset said", r, err)
	}
	list, _ = b.Machines(ctx)
	if list[0].Status != "running" {
		t.Errorf("status after the next call: %s", list[0].Status)
	}
	if _, err := b.Idle(ctx, "fake-0000000000000000"); err != backend.ErrNotFound {
		t.Errorf("Idle of no machine = %v", err)
	}
}

// TestPython: what the fake interpreter makes of a few lines.
func TestPython(t *testing.T) {
	b := New(Options{})
	ctx := context.Background()
	info, _ := b.Create(ctx, backend.MachineSpec{})
	m, _ := b.Machine(ctx, info.ID)
	py := m.(backend.PythonRunner)
	for _, c := range []struct{ code, value, err string }{
		{"a = 7; b = -2", "<nil>", ""},
		{"a // b, a % b", "", "SyntaxError"},
		{"a // b", "-4", ""},
		{"a % b", "-1", ""},
		{"a / 2", "3.5", ""},
		{"(a + 1) * 3 - 2 * 2", "20", ""},
		{"1 / 3", "0.3333333333333333", ""},
		{"2.0 * 3", "6.0", ""},
		{"1e20 * 10", "1e+21", ""},
		{"'it' + \"'s\"", `"it's"`, ""},
		{"'ab' * 3", "'ababab'", ""},
		{"'a' + 1", "", "TypeError"},
		{"True + True", "2", ""},
		{"9223372036854775807 + 1", "", "OverflowError"},
		{"len('x')", "", "SyntaxError"},
		{"if a:\n    pass", "", "SyntaxError"},
		{"b = 5\n$", "", "SyntaxError"},
		{"b", "-2", ""}, // the syntax error ran nothing
		{"print('# not a comment') # a comment", "<nil>", ""},
		{"'x'\nNone", "<nil>", ""},
	} {
		r, err := py.RunPython(ctx, c.code, backend.PythonOptions{})
		if err != nil {
			t.Fatalf("%q: %v", c.code, err)
		}
		got := "<nil>"
		if r.Value != nil {
			got = *r.Value
		}
		if c.err != "" {
			if r.Error == "" || !contains(r.Error, c.err) {
				t.Errorf("%q: error %q, value %s; want a %s", c.code, r.Error, got, c.err)
			}
			continue
		}
		if r.Error != "" || got != c.value {
			t.Errorf("%q = %s (error %q); want %s", c.code, got, r.Error, c.value)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
