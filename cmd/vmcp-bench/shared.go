//go:build linux

package main

import (
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"
)

// benchShared times run_python 1+1 with four stdio servers on one state
// directory: through the one that owns it (in process; the other three
// idle), through one of the others (a front end of the owner), through a
// server alone on its state directory, and on the engine directly, the
// paths taking turns. It prints the table, and the resident memory of the
// four servers once idle.
func benchShared(w io.Writer, cfg config, server serverSpec, dir string) error {
	op := &operation{name: "run_python 1+1", tool: "run_python", args: map[string]any{"code": "1+1"}, check: checkPython}
	named := func(name string, p *path, err error) ([]*path, error) {
		if err != nil {
			return nil, err
		}
		p.name = name
		return []*path{p}, nil
	}
	shared := filepath.Join(dir, "shared")
	var idle []*path
	defer func() { closePaths(idle) }()
	paths, err := openPaths(
		func() ([]*path, error) { p, err := openLean(server, shared); return named("owner", p, err) },
		func() ([]*path, error) { p, err := openLean(server, shared); return named("front end", p, err) },
		func() ([]*path, error) {
			for i := 0; i < 2; i++ {
				p, err := openLean(server, shared)
				if err != nil {
					return nil, err
				}
				idle = append(idle, p)
				if _, err := p.call(op); err != nil { // each with its machine
					return nil, err
				}
			}
			return nil, nil
		},
		func() ([]*path, error) {
			p, err := openLean(server, filepath.Join(dir, "alone"))
			return named("alone", p, err)
		},
		func() ([]*path, error) { return one(openEngine(filepath.Join(dir, "engine"))) },
	)
	if err != nil {
		return err
	}
	defer closePaths(paths)
	if err := measure(cfg.rounds, cfg.n, []*operation{op}, paths); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nFour stdio servers on one state directory: run_python 1+1 through the owner (the other three idle), through a front end of\nthe owner, through a server alone on its state directory, and on the engine directly (ms; lean client)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "path\tp50\tp99\tratio to the engine (p50)")
	base := percentile(op.samples["engine"], 0.50)
	for _, p := range paths {
		p50 := percentile(op.samples[p.name], 0.50)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.2fx\n", p.name, ms(p50), ms(percentile(op.samples[p.name], 0.99)), float64(p50)/float64(base))
	}
	tw.Flush()
	var sum int64
	for _, p := range append(paths[:2:2], idle...) {
		sum += procStatus(p.pid, "VmRSS")
	}
	owner := procStatus(paths[0].pid, "VmRSS")
	fmt.Fprintf(w, "resident memory of the four idle servers: %d MiB in all (the owner, with the engine: %d MiB; the three front ends: %d MiB)\n", sum>>20, owner>>20, (sum-owner)>>20)
	if op.steal >= 0 {
		fmt.Fprintf(w, "CPU time taken by the host (steal) during these calls: %.0f%% of the machine's CPU time\n", 100*op.steal)
	}
	return nil
}
