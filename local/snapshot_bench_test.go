//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSnapshot1GiB snapshots a workspace of 1 GiB: four files of
// 192 MiB and 2,560 files of 100 KiB in 64 directories. Not run by
// `make bench` (it writes 2 GiB); run it alone:
//
//	go test ./local -run '^$' -bench Snapshot1GiB -benchtime 5x
func BenchmarkSnapshot1GiB(b *testing.B) {
	e := newTestEngine(b, Options{Limits: Limits{DiskBytes: 4 << 30}})
	m := newTestMachine(b, e, MachineSpec{})
	mustRun(b, m, Command{Shell: `set -e
for i in 1 2 3 4; do head -c 192M /dev/urandom > big$i; done
for d in $(seq 1 64); do mkdir d$d; for f in $(seq 1 40); do head -c 100K /dev/urandom > d$d/f$f; done; done
du -sh .`, Timeout: 5 * time.Minute})
	ctx := context.Background()
	var l latencies
	for b.Loop() {
		start := time.Now()
		s, err := m.Snapshot(ctx, "")
		l = append(l, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		e.DeleteSnapshot(s.ID)
		b.StartTimer()
	}
	l.report(b)
}
