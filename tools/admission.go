package tools

import (
	"context"
	"runtime"
	"sync"
	"time"
)

// Admission: when more calls arrive at once than the host has cores for
// (a burst of new conversations), running them all at once makes every
// call slow, those of the conversations that were already working too.
// So the calls of new conversations start a few at a time, and the calls
// of established conversations (older than establishedAge) do not wait:
// they start at once, taking a slot even when none is free (and holding it
// as any call does), so that newcomers wait for them. The waiting calls go
// in order of tiers: the first calls of new conversations (each newcomer
// gets its machine soon), then their other calls; first come, first
// served within a tier.
// A call gives its slot back when it ends, or once it has run for
// slotHold: a long call (a sleep, a build) does not hold up the others.
// No call waits more than maxAdmissionWait: past it, it starts without a
// slot, so that a call ends within its timeout and callGrace however busy
// the server is.

const (
	establishedAge   = 10 * time.Second
	slotHold         = 100 * time.Millisecond
	maxAdmissionWait = time.Second
)

// DefaultCallSlots is how many calls start at a time by default: two per
// core.
func DefaultCallSlots() int { return max(2, 2*runtime.NumCPU()) }

// admission is the gate of calls; nil lets every call start at once.
type admission struct {
	mu      sync.Mutex
	free    int // below 0 while established calls run past the slots
	seq     uint64
	waiting []*admissionTicket
	now     func() time.Time
	hold    time.Duration // slotHold
	maxWait time.Duration // maxAdmissionWait
}

type admissionTicket struct {
	tier  int
	seq   uint64
	ready chan struct{} // closed when the ticket holds a slot
}

func newAdmission(slots int) *admission {
	if slots <= 0 {
		return nil
	}
	return &admission{free: slots, now: time.Now, hold: slotHold, maxWait: maxAdmissionWait}
}

// enter waits for a slot for a call of a conversation created at created
// (first: the call made it), maxAdmissionWait at most (a call of an
// established conversation takes one at once, even past the slots), and
// returns the function that gives the slot back, safe to call more than
// once. It returns ctx's error if ctx ends first.
func (a *admission) enter(ctx context.Context, created time.Time, first bool) (func(), error) {
	if a == nil {
		return func() {}, nil
	}
	established := a.now().Sub(created) >= establishedAge
	tier := 2
	if first {
		tier = 1
	}
	a.mu.Lock()
	if established || a.free > 0 && len(a.waiting) == 0 {
		a.free--
		a.mu.Unlock()
		return a.holding(), nil
	}
	a.seq++
	t := &admissionTicket{tier: tier, seq: a.seq, ready: make(chan struct{})}
	a.waiting = append(a.waiting, t)
	a.mu.Unlock()
	timer := time.NewTimer(a.maxWait)
	defer timer.Stop()
	select {
	case <-t.ready:
		return a.holding(), nil
	case <-ctx.Done():
	case <-timer.C:
	}
	a.mu.Lock()
	for i, w := range a.waiting {
		if w == t {
			a.waiting = append(a.waiting[:i], a.waiting[i+1:]...)
			a.mu.Unlock()
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return func() {}, nil // waited long enough: it starts without a slot
		}
	}
	a.mu.Unlock()
	// The slot came just then.
	release := a.holding()
	if err := ctx.Err(); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// holding returns the release of a slot just taken: at once when called,
// or after slotHold, whichever comes first.
func (a *admission) holding() func() {
	var once sync.Once
	release := func() { once.Do(a.release) }
	timer := time.AfterFunc(a.hold, release)
	return func() {
		timer.Stop()
		release()
	}
}

// release gives a slot back: to the first waiting call of the best tier,
// unless established calls still run past the slots.
func (a *admission) release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.free++
	if a.free <= 0 || len(a.waiting) == 0 {
		return
	}
	a.free--
	best := 0
	for i, w := range a.waiting {
		if w.tier < a.waiting[best].tier || w.tier == a.waiting[best].tier && w.seq < a.waiting[best].seq {
			best = i
		}
	}
	t := a.waiting[best]
	a.waiting = append(a.waiting[:best], a.waiting[best+1:]...)
	close(t.ready)
}
