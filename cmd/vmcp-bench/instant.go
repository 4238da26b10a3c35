//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// instantPool is the warm pool of the server the first calls are timed on.
const instantPool = 4

// pandasFirst is the first call of a data-analysis conversation.
const pandasFirst = "import pandas; pandas.DataFrame({'a': range(100000)}).a.sum()"

// benchInstant times the first call of new conversations (session "new")
// over stdio: on a server with a pool of warm machines and on one without,
// taking turns, with a pause after each round for the pool to refill.
func benchInstant(w io.Writer, spec serverSpec, dir string, rounds int) error {
	warmSpec := serverSpec{path: spec.path, args: []string{"--warm-machines", fmt.Sprint(instantPool)}, env: spec.env}
	coldSpec := serverSpec{path: spec.path, args: []string{"--warm-machines", "0"}, env: spec.env}
	warm, err := openLean(warmSpec, filepath.Join(dir, "warm"))
	if err != nil {
		return err
	}
	defer warm.close()
	cold, err := openLean(coldSpec, filepath.Join(dir, "cold"))
	if err != nil {
		return err
	}
	defer cold.close()
	pss, err := waitPoolReady(warm.stderr, 5*time.Minute)
	if err != nil {
		return err
	}
	ops := []*operation{
		{name: "first 1+1 (session new)", tool: "run_python", args: map[string]any{"code": "1+1", "session": "new"}, check: checkPython},
		{name: "first pandas sum (session new)", tool: "run_python", args: map[string]any{"code": pandasFirst, "session": "new"}, check: checkValue("4999950000")},
	}
	for _, op := range ops {
		op.samples = map[string][]time.Duration{}
	}
	before, stealKnown := readCPUTimes()
	// Each call finds the pool full, as a new conversation does that comes
	// a few seconds after the last: the pauses let it refill.
	for r := 0; r < rounds; r++ {
		for _, op := range ops {
			for _, p := range []struct {
				name string
				p    *path
			}{{"no pool", cold}, {"warm pool", warm}} {
				d, err := p.p.call(op)
				if err != nil {
					return fmt.Errorf("%s, %s: %w\nstderr:\n%s", p.name, op.name, err, p.p.stderr)
				}
				op.samples[p.name] = append(op.samples[p.name], d)
				time.Sleep(time.Second)
			}
			time.Sleep(2 * time.Second)
		}
	}
	after, _ := readCPUTimes()
	steal := -1.0
	if stealKnown && after.total > before.total {
		steal = float64(after.steal-before.steal) / float64(after.total-before.total)
	}
	fmt.Fprintf(w, "\nNew conversations' first call over stdio (lean client), %d rounds taking turns; warm pool of %d machines with numpy, pandas\n"+
		"and matplotlib.pyplot imported, %.1f MiB PSS per idle pooled machine; host steal %.2f %% (ms)\n", rounds, instantPool, pss, 100*steal)
	fmt.Fprintf(w, "%-32s %12s %12s %12s %12s\n", "", "pool p50", "pool p99", "no-pool p50", "no-pool p99")
	for _, op := range ops {
		wp, cp := op.samples["warm pool"], op.samples["no pool"]
		fmt.Fprintf(w, "%-32s %12s %12s %12s %12s\n", op.name, ms(percentile(wp, .5)), ms(percentile(wp, .99)), ms(percentile(cp, .5)), ms(percentile(cp, .99)))
	}
	if n := strings.Count(warm.stderr.String(), "could not start a warm machine"); n > 0 {
		return fmt.Errorf("the pool could not start machines:\n%s", warm.stderr)
	}
	return nil
}

var poolReady = regexp.MustCompile(`warm machines ready.* pss_mib_per_machine=([0-9.]+)`)

// waitPoolReady waits for the server's log line that its pool is full and
// returns the PSS per machine it reports.
func waitPoolReady(stderr *syncBuffer, within time.Duration) (float64, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m := poolReady.FindStringSubmatch(stderr.String()); m != nil {
			var v float64
			fmt.Sscan(m[1], &v)
			return v, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("the warm pool did not fill within %v:\n%s", within, stderr)
}

// checkValue checks that run_python's value is want.
func checkValue(want string) func([]byte) error {
	return func(structured []byte) error {
		var out struct {
			Value *string `json:"value"`
			Error string  `json:"error"`
		}
		if err := json.Unmarshal(structured, &out); err != nil {
			return err
		}
		if out.Value == nil || *out.Value != want {
			return fmt.Errorf("value %s, error %q; want %s", strPtr(out.Value), out.Error, want)
		}
		return nil
	}
}
