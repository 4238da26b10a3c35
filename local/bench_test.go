//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"slices"
	"sort"
	"testing"
	"time"
)

// Run with: go test ./local -run '^$' -bench . -benchtime 2000x
// Each benchmark reports the median and 99th percentile of one operation
// besides Go's mean (ns/op).

type latencies []time.Duration

// p50 is the median.
func (l latencies) p50() time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	return s[len(s)/2]
}

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	b.ReportMetric(float64(l[len(l)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(l[len(l)*99/100].Microseconds())/1000, "p99-ms")
}

func BenchmarkREPLRoundTrip(b *testing.B) {
	m := newTestMachine(b, newTestEngine(b, Options{}), MachineSpec{})
	mustExec(b, m, "1+1", PythonOptions{}) // warm: sandbox and interpreter up
	var l latencies
	ctx := context.Background()
	for b.Loop() {
		start := time.Now()
		r, err := m.RunPython(ctx, "1+1", PythonOptions{})
		l = append(l, time.Since(start))
		if err != nil || value(r) != "2" {
			b.Fatalf("%+v %v", r, err)
		}
	}
	l.report(b)
}

func BenchmarkFirstExecOnNewMachine(b *testing.B) {
	e := newTestEngine(b, Options{})
	ctx := context.Background()
	var l latencies
	for b.Loop() {
		start := time.Now()
		info, err := e.Create(ctx, MachineSpec{})
		if err != nil {
			b.Fatal(err)
		}
		m, _ := e.Machine(info.ID)
		r, err := m.RunPython(ctx, "1+1", PythonOptions{})
		l = append(l, time.Since(start))
		if err != nil || value(r) != "2" {
			b.Fatalf("%+v %v", r, err)
		}
		b.StopTimer()
		e.Delete(ctx, info.ID)
		b.StartTimer()
	}
	l.report(b)
}

func BenchmarkCommandTrue(b *testing.B) {
	m := newTestMachine(b, newTestEngine(b, Options{}), MachineSpec{})
	mustRun(b, m, Command{Argv: []string{"true"}})
	var l latencies
	ctx := context.Background()
	for b.Loop() {
		start := time.Now()
		res, err := m.Run(ctx, Command{Argv: []string{"true"}})
		l = append(l, time.Since(start))
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("%+v %v", res, err)
		}
	}
	l.report(b)
}

// BenchmarkIdleMachineMemory measures what an idle machine with a live
// interpreter costs: the RSS and PSS (RSS with shared pages divided among
// their users) of all its processes, bwrap's outer one included.
func BenchmarkIdleMachineMemory(b *testing.B) {
	const machines = 8
	e := newTestEngine(b, Options{})
	var ms []*Machine
	for i := 0; i < machines; i++ {
		m := newTestMachine(b, e, MachineSpec{})
		mustExec(b, m, "x = 1", PythonOptions{})
		ms = append(ms, m)
	}
	time.Sleep(500 * time.Millisecond) // let them settle
	var rssTotal, pssTotal int64
	for b.Loop() {
		rssTotal, pssTotal = 0, 0
		for _, m := range ms {
			m.mu.Lock()
			outer := m.sb.cmd.Process.Pid
			m.mu.Unlock()
			pids := append(m.HostPIDs(), outer)
			for _, pid := range pids {
				rssTotal += procMemField(pid, "status", "VmRSS:")
				pssTotal += procMemField(pid, "smaps_rollup", "Pss:")
			}
		}
	}
	b.ReportMetric(float64(rssTotal)/machines/(1<<20), "RSS-MiB/machine")
	b.ReportMetric(float64(pssTotal)/machines/(1<<20), "PSS-MiB/machine")
}
