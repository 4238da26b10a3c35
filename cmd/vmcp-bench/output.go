//go:build linux

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

// outputCommands print outputBytes of 100-byte lines: a pure copy (the
// worst case: each byte costs nothing to make, so saving it dominates) and
// a Python script formatting its lines, as an agent's programs do.
var outputCommands = []struct{ name, command string }{
	{"yes | head", fmt.Sprintf("yes %s | head -c %d", strings.Repeat("x", 99), outputBytes)},
	{"python print", fmt.Sprintf(`python3 -c 'for i in range(%d): print(f"{i:09d}", "x"*89)'`, outputBytes/100)},
}

// benchOutput times commands printing 200 MB through the local backend
// (the result keeps head and tail; the whole is saved in the machine)
// against the same commands with their output sent to /dev/null, and to a
// file of the machine's home (the floor of keeping it whole), all inside
// the machine, in interleaved rounds; it reports the server's peak
// resident memory over its size before.
func benchOutput(w io.Writer, server serverSpec, dir string, rounds int) error {
	p, err := openLean(server, filepath.Join(dir, "lean"))
	if err != nil {
		return err
	}
	defer p.close()
	var ops []*operation
	for _, c := range outputCommands {
		exec := func(name, command string, printed int64) *operation {
			return &operation{name: c.name + ", " + name, tool: "exec_command", args: map[string]any{"command": command, "timeout_seconds": 600}, check: checkPrinted(printed)}
		}
		ops = append(ops,
			exec("to the result", c.command, outputBytes),
			exec("to /dev/null", c.command+" >/dev/null", 0),
			exec("to a file", c.command+" >~/.bench-output", 0))
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
	fmt.Fprintf(w, "\nCommands printing 200 MB on the local backend, through the MCP server (%d interleaved rounds, median)\n", rounds)
	for i, op := range ops {
		fmt.Fprintf(w, "%-36s %8.0f ms\n", op.name, float64(median(times[i]).Microseconds())/1000)
	}
	for i, c := range outputCommands {
		result, null, file := median(times[3*i]), median(times[3*i+1]), median(times[3*i+2])
		fmt.Fprintf(w, "%s: to the result / to /dev/null: %.2fx, to a file / to /dev/null: %.2fx\n", c.name, float64(result)/float64(null), float64(file)/float64(null))
	}
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
