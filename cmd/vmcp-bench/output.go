package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// outputBytes is what the output benchmark's command prints.
const outputBytes = 200_000_000

// outputCommand prints outputBytes of 100-byte lines.
var outputCommand = fmt.Sprintf("yes %s | head -c %d", strings.Repeat("x", 99), outputBytes)

// benchOutput times a command printing 200 MB through the local backend
// (the result keeps head and tail; the whole is saved in the machine)
// against the same command with its output sent to /dev/null inside the
// machine, in interleaved rounds, and reports the server's peak resident
// memory over its size before.
func benchOutput(w io.Writer, server serverSpec, dir string, rounds int) error {
	p, err := openLean(server, filepath.Join(dir, "lean"))
	if err != nil {
		return err
	}
	defer p.close()
	ops := []*operation{
		{name: "200 MB to the result", tool: "exec_command", args: map[string]any{"command": outputCommand, "timeout_seconds": 600}, check: checkPrinted(outputBytes)},
		{name: "200 MB to /dev/null", tool: "exec_command", args: map[string]any{"command": outputCommand + " >/dev/null", "timeout_seconds": 600}, check: checkPrinted(0)},
	}
	for _, op := range ops { // warm up: the machine, and its saved output
		if _, err := p.call(op); err != nil {
			return fmt.Errorf("%s: %w\n%s", op.name, err, p.stderr)
		}
	}
	before := procStatus(p.pid, "VmRSS")
	times := make([][]time.Duration, len(ops))
	cpu0, stealKnown := readCPUTimes()
	for r := 0; r < rounds; r++ {
		for i, op := range ops {
			d, err := p.call(op)
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", op.name, err, p.stderr)
			}
			times[i] = append(times[i], d)
		}
	}
	cpu1, _ := readCPUTimes()
	peak := procStatus(p.pid, "VmHWM")
	median := func(ds []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	fmt.Fprintf(w, "\nA command printing 200 MB on the local backend, through the MCP server (%d interleaved rounds, median)\n", rounds)
	for i, op := range ops {
		fmt.Fprintf(w, "%-22s %8.0f ms\n", op.name, float64(median(times[i]).Microseconds())/1000)
	}
	fmt.Fprintf(w, "to the result / to /dev/null: %.2fx\n", float64(median(times[0]))/float64(median(times[1])))
	fmt.Fprintf(w, "server resident memory: %d MiB before, peak %d MiB (growth %d MiB)\n", before>>20, peak>>20, (peak-before)>>20)
	if stealKnown && cpu1.total > cpu0.total {
		fmt.Fprintf(w, "CPU time taken by the host (steal) during these calls: %.0f%% of the machine's CPU time\n", 100*float64(cpu1.steal-cpu0.steal)/float64(cpu1.total-cpu0.total))
	}
	return nil
}

// checkPrinted checks that a command succeeded having printed n bytes.
func checkPrinted(n int64) func([]byte) error {
	return func(structured []byte) error {
		var out struct {
			ExitCode         int   `json:"exit_code"`
			StdoutTotalBytes int64 `json:"stdout_total_bytes"`
		}
		if err := json.Unmarshal(structured, &out); err != nil {
			return err
		}
		if out.ExitCode != 0 || out.StdoutTotalBytes != n {
			return fmt.Errorf("exit code %d, %d bytes of stdout; want 0 and %d", out.ExitCode, out.StdoutTotalBytes, n)
		}
		return nil
	}
}

// procStatus reads a "kB" field of a process's /proc status, in bytes.
func procStatus(pid int, field string) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
