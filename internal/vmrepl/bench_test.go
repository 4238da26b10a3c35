//go:build linux

package vmrepl

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// BenchmarkWarmCallVsTrue compares a warm run_python("1+1") with an exec of
// `true` on the same machine, in interleaved rounds (the order alternates),
// and reports their p50 and p90, the ratio of the p50s (the target is at
// most 1.3) and the host's CPU steal and idle time while it ran. An exec of
// `sh -c 'exit 0'` each round shows the floor of any client made of a
// shell.
//
//	go test ./internal/vmrepl/ -run '^$' -bench WarmCall -benchtime 300x
func BenchmarkWarmCallVsTrue(b *testing.B) {
	r, m := newREPL(b, Options{})
	x := machineExecer{m}
	ctx := context.Background()
	execTrue := func() time.Duration {
		start := time.Now()
		if code, err := x.Exec(ctx, []string{"true"}, nil, func(string, []byte) {}); code != 0 || err != nil {
			b.Fatalf("true: %d, %v", code, err)
		}
		return time.Since(start)
	}
	// The floor of any exec-based client: a shell that does nothing.
	execSh := func() time.Duration {
		start := time.Now()
		if code, err := x.Exec(ctx, []string{"/bin/sh", "-c", "exit 0"}, nil, func(string, []byte) {}); code != 0 || err != nil {
			b.Fatalf("sh: %d, %v", code, err)
		}
		return time.Since(start)
	}
	// The client and the host without the interpreter: a ping through the
	// call's path, the floor of a design that ran the code in the host.
	ping := func() time.Duration {
		start := time.Now()
		h := r.host
		var pong bool
		code, err := x.Exec(ctx, []string{"/bin/sh", "-c", directScript, "sh", h.dir, h.life, h.req, newToken(), "ping"}, nil,
			func(_ string, l []byte) { pong = pong || strings.Contains(string(l), `"pong": true`) })
		if code != 0 || err != nil || !pong {
			b.Fatalf("ping: %d, %v", code, err)
		}
		return time.Since(start)
	}
	runPython := func() time.Duration {
		start := time.Now()
		if res := run(b, r, "1+1", backend.PythonOptions{}); value(res) != "2" {
			b.Fatalf("1+1: %+v", res)
		}
		return time.Since(start)
	}
	for range 10 { // warm: the host, the interpreter, the sandbox
		execTrue()
		runPython()
	}
	before := cpuTimes()
	var ts, ps, ss, gs []time.Duration
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			ts = append(ts, execTrue())
			ps = append(ps, runPython())
		} else {
			ps = append(ps, runPython())
			ts = append(ts, execTrue())
		}
		ss = append(ss, execSh())
		gs = append(gs, ping())
	}
	b.StopTimer()
	after := cpuTimes()
	t50, t90 := percentiles(ts)
	p50, p90 := percentiles(ps)
	s50, s90 := percentiles(ss)
	g50, g90 := percentiles(gs)
	ratio := float64(p50) / float64(t50)
	steal, idle := 0.0, 0.0
	if total := sum(after) - sum(before); total > 0 && len(after) > 7 && len(before) > 7 {
		steal = 100 * float64(after[7]-before[7]) / float64(total)
		idle = 100 * float64(after[3]-before[3]) / float64(total)
	}
	if b.N < 10 {
		return // the calibration run
	}
	us := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	fmt.Printf("exec true:        p50 %v  p90 %v\nrun_python 1+1:   p50 %v  p90 %v\nratio of p50s:    %.2f (target <= 1.3)\n"+
		"for reference: sh -c 'exit 0' p50 %v p90 %v (%.2f x true); ping of the host through the client p50 %v p90 %v (%.2f x true)\n"+
		"host CPU steal %.1f%%, idle %.1f%%, load average %s (%d rounds)\n",
		us(t50), us(t90), us(p50), us(p90), ratio, us(s50), us(s90), float64(s50)/float64(t50), us(g50), us(g90), float64(g50)/float64(t50),
		steal, idle, loadAverage(), b.N)
	b.ReportMetric(float64(t50.Microseconds()), "true-p50-µs")
	b.ReportMetric(float64(p50.Microseconds()), "python-p50-µs")
	b.ReportMetric(ratio, "ratio")
	b.ReportMetric(steal, "steal-%")
}

func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func percentiles(ds []time.Duration) (p50, p90 time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0
	}
	return s[len(s)/2], s[len(s)*9/10]
}

// cpuTimes is the host's "cpu" line of /proc/stat: user nice system idle
// iowait irq softirq steal ...
func cpuTimes() []int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var out []int64
	for _, f := range strings.Fields(line)[1:] {
		n, _ := strconv.ParseInt(f, 10, 64)
		out = append(out, n)
	}
	return out
}

func sum(v []int64) int64 {
	var s int64
	for i, n := range v {
		if i < 8 { // guest times are counted in user already
			s += n
		}
	}
	return s
}
