//go:build linux

package fastvm

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// benchWorkspace writes about 200 MiB of files: two of 64 MiB and 720 of
// 100 KiB in 36 directories, random (incompressible) data.
const benchWorkspace = `set -e
mkdir -p /root/ws && cd /root/ws
head -c 64M /dev/urandom > big1; head -c 64M /dev/urandom > big2
for d in $(seq 1 36); do mkdir -p d$d; for f in $(seq 1 20); do head -c 100K /dev/urandom > d$d/f$f; done; done
du -sm /root/ws | cut -f1`

// BenchmarkIdleRoundTrip compares the two idle actions on a VM with a
// 200 MiB workspace, against the emulator: pause (Idle pauses; the next
// call resumes and runs) and snapshot (Idle snapshots, the VM is deleted;
// the next call launches from the snapshot and runs), as the reaper and the
// next tool call do them. The two take turns in each round, so that a slow
// spell of a shared machine weighs on both. It reports the p50s of the
// idle step and of the next call (`true`), and the share of CPU time the
// host stole meanwhile. Not run by `make bench` (it writes 400 MiB and
// copies 200 MiB twice a round); run it alone:
//
//	go test ./backend/fastvm -run '^$' -bench IdleRoundTrip -benchtime 10x
func BenchmarkIdleRoundTrip(b *testing.B) {
	env := newTestEnv(b, fastvmemu.Options{}, Options{IdleAction: IdlePause})
	parker := New(env.c, Options{IdleAction: IdleSnapshot})
	ctx := context.Background()
	paused := env.machine(b)
	parked := env.machine(b)
	for _, m := range []*Machine{paused, parked} {
		if mib, _ := strconv.Atoi(strings.TrimSpace(mustRun(b, m, benchWorkspace))); mib < 190 {
			b.Fatalf("workspace of %d MiB, want about 200", mib)
		}
	}
	call := func(m *Machine) {
		res, err := m.Run(ctx, backend.Command{Argv: []string{"true"}})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("next call: %+v, %v", res, err)
		}
	}
	pauseRound := func() (idle, next time.Duration) {
		start := time.Now()
		if snap, err := env.b.Idle(ctx, paused.ID()); err != nil || snap != "" {
			b.Fatalf("pause: %q, %v", snap, err)
		}
		mid := time.Now()
		call(paused)
		return mid.Sub(start), time.Since(mid)
	}
	snapshotRound := func() (idle, next time.Duration) {
		start := time.Now()
		snap, err := parker.Idle(ctx, parked.ID())
		if err != nil || snap == "" {
			b.Fatalf("park: %q, %v", snap, err)
		}
		if err := parker.Delete(ctx, parked.ID()); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		info, err := parker.Create(ctx, backend.MachineSpec{FromSnapshot: snap})
		if err != nil {
			b.Fatal(err)
		}
		m, err := parker.Machine(ctx, info.ID)
		if err != nil {
			b.Fatal(err)
		}
		parked = m.(*Machine)
		call(parked)
		next = time.Since(mid)
		if err := parker.DeleteSnapshot(ctx, snap); err != nil { // as the server does once restored
			b.Fatal(err)
		}
		return mid.Sub(start), next
	}
	type idlePath struct {
		round      func() (idle, next time.Duration)
		idle, next []time.Duration
	}
	pause, snapshot := &idlePath{round: pauseRound}, &idlePath{round: snapshotRound}
	before, stealKnown := cpuTimes()
	rounds := 0
	for b.Loop() {
		order := []*idlePath{pause, snapshot}
		if rounds%2 == 1 {
			order = []*idlePath{snapshot, pause}
		}
		for _, p := range order {
			idle, next := p.round()
			p.idle, p.next = append(p.idle, idle), append(p.next, next)
		}
		rounds++
	}
	after, _ := cpuTimes()
	steal := -1.0
	if stealKnown && after.total > before.total {
		steal = float64(after.steal-before.steal) / float64(after.total-before.total)
	}
	p50 := func(l []time.Duration) float64 {
		s := slices.Clone(l)
		slices.Sort(s)
		return float64(s[len(s)/2].Microseconds()) / 1000
	}
	b.ReportMetric(p50(pause.idle), "pause-idle-ms")
	b.ReportMetric(p50(pause.next), "pause-next-call-ms")
	b.ReportMetric(p50(snapshot.idle), "snapshot-idle-ms")
	b.ReportMetric(p50(snapshot.next), "snapshot-next-call-ms")
	b.ReportMetric(steal*100, "steal-%")
	b.Logf("%d rounds, p50 (ms): pause: idle %.1f, next call (resume + run) %.1f; snapshot: idle (snapshot + delete) %.1f, next call (launch from the snapshot + run) %.1f; CPU steal %.1f%%",
		rounds, p50(pause.idle), p50(pause.next), p50(snapshot.idle), p50(snapshot.next), steal*100)
}

// cpuStat is the machine's CPU time since boot, in clock ticks.
type cpuStat struct{ steal, total uint64 }

// cpuTimes reads the "cpu" line of /proc/stat; false where there is none.
// Steal is the time a VM's CPUs were runnable while the host ran something
// else: on a shared machine it is what makes figures move.
func cpuTimes() (cpuStat, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuStat{}, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return cpuStat{}, false
	}
	var t cpuStat
	for i, v := range f[1:9] { // guest times are counted in user and nice already
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return cpuStat{}, false
		}
		t.total += n
		if i == 7 {
			t.steal = n
		}
	}
	return t, true
}
