package tools

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestAdmissionOrder: with its one slot taken, the gate lets the waiting
// calls start by tier — an established conversation's call, then a new
// conversation's first call, then another call of a new conversation —
// and in order of arrival within a tier.
func TestAdmissionOrder(t *testing.T) {
	a := newAdmission(1)
	a.hold, a.maxWait = time.Hour, time.Hour // the test's own pace must not free the slot
	now := time.Now()
	hold, err := a.enter(context.Background(), now, true)
	if err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 5)
	queued := 0
	start := func(name string, created time.Time, first bool) {
		go func() {
			release, err := a.enter(context.Background(), created, first)
			if err != nil {
				t.Error(err)
				return
			}
			order <- name
			release()
		}()
		// Each is waiting before the next comes.
		queued++
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			a.mu.Lock()
			n := len(a.waiting)
			a.mu.Unlock()
			if n == queued {
				return
			}
		}
		t.Fatalf("%s is not waiting", name)
	}
	start("young follow-up 1", now, false)
	start("first call 1", now, true)
	start("young follow-up 2", now, false)
	// A call of an established conversation does not wait, though the
	// slot is taken; while it runs, it holds a slot of its own.
	entered := make(chan func(), 1)
	go func() {
		release, _ := a.enter(context.Background(), now.Add(-time.Minute), false)
		entered <- release
	}()
	var established func()
	select {
	case established = <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("a call of an established conversation waits for a slot")
	}
	start("first call 2", now, true)
	hold()
	select {
	case name := <-order:
		t.Fatalf("%s started while an established call ran past the slots", name)
	case <-time.After(50 * time.Millisecond):
	}
	established()
	want := []string{"first call 1", "first call 2", "young follow-up 1", "young follow-up 2"}
	for _, w := range want {
		select {
		case got := <-order:
			if got != w {
				t.Fatalf("started %q; want %q (order %v)", got, w, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q did not start", w)
		}
	}
}

// TestAdmissionLongCallsDoNotHoldSlots: a call that runs longer than
// slotHold gives its slot back, so the next call starts without waiting
// for it to end; a call that waited maxAdmissionWait starts without a
// slot; one whose context ends while it waits gets the context's error.
func TestAdmissionLongCallsDoNotHoldSlots(t *testing.T) {
	a := newAdmission(1)
	a.maxWait = time.Hour
	long, err := a.enter(context.Background(), time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer long()
	ctx, cancel := context.WithTimeout(context.Background(), a.hold/10)
	defer cancel()
	if _, err := a.enter(ctx, time.Now(), false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a call whose context ended while it waited: %v", err)
	}
	start := time.Now()
	next, err := a.enter(context.Background(), time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > a.hold+time.Second {
		t.Errorf("the next call waited %v behind a long one; want about %v at most", waited, a.hold)
	}

	// next holds the slot (for an hour now): a call waits maxWait, then
	// starts all the same.
	a.hold, a.maxWait = time.Hour, 50*time.Millisecond
	next()
	held, err := a.enter(context.Background(), time.Now(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer held()
	start = time.Now()
	extra, err := a.enter(context.Background(), time.Now(), false)
	if err != nil || time.Since(start) < a.maxWait || time.Since(start) > a.maxWait+time.Second {
		t.Errorf("a call that found no slot for maxWait: %v after %v", err, time.Since(start))
	}
	extra()
	if a.free != 0 || len(a.waiting) != 0 {
		t.Errorf("%d free, %d waiting; want 0, 0 (the slot is held; the call without one gave none back)", a.free, len(a.waiting))
	}
}
