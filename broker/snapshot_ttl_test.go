//go:build linux

package broker

import (
	"slices"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend/backendfake"
)

// TestClosedConversationsSnapshotsExpire: the snapshots of a conversation
// closed longer than the snapshot time to live are deleted, on the backend
// and from its record, not a nanosecond before; a conversation closed
// later keeps its own until its time comes.
func TestClosedConversationsSnapshotsExpire(t *testing.T) {
	const ttl, snapTTL = time.Hour, 24 * time.Hour
	clock := backendfake.NewClock()
	cloud := backendfake.New(backendfake.Options{Name: "cloud", Now: clock.Now, IdleParks: true})
	k := newClocked(t, clock, Config{Idle: map[string]time.Duration{"cloud": idle}, ConversationTTL: ttl, SnapshotTTL: snapTTL}, cloud)

	// Two conversations, each with a machine parked (its snapshot kept
	// when the conversation closes); the second ten minutes behind.
	first := conversation(t, k.m, "alice")
	held(t, k.b, first, "").Release()
	clock.Advance(idle)
	k.reap(t, ReapResult{Parked: 1}, "the first's machine idle")
	second := conversation(t, k.m, "alice")
	held(t, k.b, second, "").Release()
	clock.Advance(idle)
	k.reap(t, ReapResult{Parked: 1}, "the second's machine idle")
	clock.Advance(ttl - 2*idle + time.Nanosecond)
	k.reap(t, ReapResult{Closed: 1}, "the first closed")
	clock.Advance(idle)
	k.reap(t, ReapResult{Closed: 1}, "the second closed")
	firstSnap, secondSnap := k.load(t, first).Snapshots, k.load(t, second).Snapshots
	if len(firstSnap) != 1 || len(secondSnap) != 1 || len(snapshotIDs(t, cloud)) != 2 {
		t.Fatalf("closed conversations' snapshots: %+v, %+v; on the backend %v", firstSnap, secondSnap, snapshotIDs(t, cloud))
	}

	clock.Advance(snapTTL - idle) // the first closed exactly snapTTL ago
	k.reap(t, ReapResult{}, "the first's snapshot at exactly its time to live")
	clock.Advance(time.Nanosecond)
	k.reap(t, ReapResult{SnapshotsExpired: 1}, "the first's snapshot a nanosecond past")
	if got := k.load(t, first).Snapshots; len(got) != 0 {
		t.Fatalf("the first conversation still records %+v", got)
	}
	if got := snapshotIDs(t, cloud); !slices.Equal(got, []string{secondSnap[0].ID}) {
		t.Fatalf("snapshots on the backend: %v, want only the second's %s", got, secondSnap[0].ID)
	}
	k.reap(t, ReapResult{}, "nothing left to expire yet")
	clock.Advance(idle)
	k.reap(t, ReapResult{SnapshotsExpired: 1}, "the second's snapshot past its time")
	if got := snapshotIDs(t, cloud); len(got) != 0 || len(k.load(t, second).Snapshots) != 0 {
		t.Fatalf("after both expired: backend %v, record %+v", got, k.load(t, second).Snapshots)
	}
}
