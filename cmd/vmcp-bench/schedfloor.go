//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"
)

// The load test's ratio (an established conversation's calls during a
// burst, against alone) depends on the host's scheduler as much as on the
// server: a call is handed from process to process (client, server,
// agent, interpreter and back), and on a busy host each hand-off waits
// for a processor. schedFloor measures that floor with no vmcp code at
// all: a token passed around a chain of processes that do a little work
// each, alone and then beside chains that pass tokens without pause, as
// the burst's calls do. A server cannot do better than its host's floor.

// hopEnv holds the work in microseconds when the bench runs as one
// process of a chain.
const hopEnv = "VMCP_BENCH_HOP_WORK_US"

const (
	floorHops   = 6                      // the hand-offs of one call
	floorWork   = 200 * time.Microsecond // per hand-off, about a call's share
	floorRounds = 200                    // of the measured chain, alone and beside the busy ones
	floorPause  = 10 * time.Millisecond  // between the measured chain's rounds, as the probe's
)

// floorResult is what schedFloor measured.
type floorResult struct {
	busy          int // chains passing tokens beside the measured one
	alone, beside time.Duration
	steal         float64 // of the host's CPU time while measuring; -1: unknown
}

// runHopIfRequested runs one process of a chain and exits if the bench
// was started as one: it reads a byte, works, and passes it on, until its
// input ends.
func runHopIfRequested() {
	s := os.Getenv(hopEnv)
	if s == "" {
		return
	}
	us, err := strconv.Atoi(s)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmcp-bench hop:", err)
		os.Exit(1)
	}
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(os.Stdin, b); err != nil {
			os.Exit(0)
		}
		spin(time.Duration(us) * time.Microsecond)
		if _, err := os.Stdout.Write(b); err != nil {
			os.Exit(0)
		}
	}
}

// spin keeps a processor busy for d.
func spin(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); {
	}
}

// chain is processes connected by pipes, each one's output the next one's
// input.
type chain struct {
	cmds   []*exec.Cmd
	in     *os.File // the first process's input
	out    *os.File // the last process's output
	closed bool
}

// startChain starts n processes in a row; with ring, the last one's output
// is the first one's input and a token is already on its way.
func startChain(n int, ring bool) (*chain, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r, first, err := os.Pipe() // first: the write end into the first process
	if err != nil {
		return nil, err
	}
	c := &chain{}
	for i := 0; i < n; i++ {
		out, next := first, (*os.File)(nil)
		if !ring || i < n-1 {
			if next, out, err = os.Pipe(); err != nil {
				r.Close()
				first.Close()
				c.stop()
				return nil, err
			}
		}
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), hopEnv+"="+strconv.Itoa(int(floorWork/time.Microsecond)))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = r, out, os.Stderr
		err := cmd.Start()
		r.Close()
		if out != first {
			out.Close()
		}
		if err != nil {
			first.Close()
			if next != nil {
				next.Close()
			}
			c.stop()
			return nil, err
		}
		c.cmds = append(c.cmds, cmd)
		r = next
	}
	if ring {
		_, err := first.Write([]byte{1})
		first.Close()
		return c, err
	}
	c.in, c.out = first, r
	return c, nil
}

// round passes a token through the chain, doing the work of one process
// itself, and returns how long it took.
func (c *chain) round() (time.Duration, error) {
	b := []byte{1}
	t0 := time.Now()
	spin(floorWork)
	if _, err := c.in.Write(b); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(c.out, b); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// stop kills the chain's processes and waits for them.
func (c *chain) stop() {
	if c.closed {
		return
	}
	c.closed = true
	for _, cmd := range c.cmds {
		cmd.Process.Kill()
	}
	for _, cmd := range c.cmds {
		cmd.Wait()
	}
	if c.in != nil {
		c.in.Close()
	}
	if c.out != nil {
		c.out.Close()
	}
}

// measure times rounds rounds, floorPause apart, and returns the median.
func (c *chain) measure(rounds int) (time.Duration, error) {
	var l []time.Duration
	for i := 0; i < rounds; i++ {
		d, err := c.round()
		if err != nil {
			return 0, err
		}
		l = append(l, d)
		time.Sleep(floorPause)
	}
	return percentile(l, 0.5), nil
}

// schedFloor measures rounds rounds of a chain of floorHops processes
// alone, then beside busy chains that never pause.
func schedFloor(busy, rounds int) (*floorResult, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, stealKnown := readCPUTimes()
	probe, err := startChain(floorHops-1, false) // the bench is the sixth
	if err != nil {
		return nil, err
	}
	defer probe.stop()
	r := &floorResult{busy: busy, steal: -1}
	if r.alone, err = probe.measure(rounds); err != nil {
		return nil, err
	}
	for i := 0; i < busy; i++ {
		c, err := startChain(floorHops, true)
		if err != nil {
			return nil, err
		}
		defer c.stop()
	}
	time.Sleep(200 * time.Millisecond)
	if r.beside, err = probe.measure(rounds); err != nil {
		return nil, err
	}
	if after, ok := readCPUTimes(); stealKnown && ok && after.total > before.total {
		r.steal = float64(after.steal-before.steal) / float64(after.total-before.total)
	}
	return r, nil
}

func printFloor(w io.Writer, r *floorResult) {
	fmt.Fprintf(w, "this host's floor: a token passed through %d processes (%v of work each) every %v: p50 %s ms alone, %s ms beside %d busy chains (tokens passed without pause) (%.2fx); host steal %.2f %%\n",
		floorHops, floorWork, floorPause, ms(r.alone), ms(r.beside), r.busy, float64(r.beside)/float64(max(r.alone, 1)), 100*r.steal)
}
