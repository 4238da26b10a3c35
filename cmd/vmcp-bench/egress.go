//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// egressBytes is what the egress benchmark downloads.
const egressBytes = 100 << 20

// benchEgress times the download of 100 MiB from a loopback HTTP server
// by curl in a local machine whose allow-list names the server (through
// the server's proxy), against curl on the host fetching it directly, in
// interleaved rounds; it reports the throughputs, their ratio, and the
// server's resident memory (the proxy runs in it) before and at its peak.
func benchEgress(w io.Writer, server serverSpec, dir string, rounds int) error {
	data := make([]byte, egressBytes)
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Length", strconv.Itoa(len(data)))
		rw.Write(data)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go srv.Serve(ln)
	defer srv.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	server.args = append(append([]string(nil), server.args...), "--network-allow", "bench.test", "--network-allow-private", "bench.test")
	server.env = append(append([]string(nil), server.env...), "VMCP_TEST_RESOLVE_LOOPBACK=bench.test")
	p, err := openLean(server, filepath.Join(dir, "lean"))
	if err != nil {
		return err
	}
	defer p.close()
	launch := &operation{name: "launch_vm", tool: "launch_vm", args: map[string]any{"network": []string{"bench.test"}}, check: func([]byte) error { return nil }}
	if _, err := p.call(launch); err != nil {
		return fmt.Errorf("launch_vm: %w\n%s", err, p.stderr)
	}
	curl := []string{"curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "http://bench.test:" + port + "/"}
	inMachine := &operation{name: "through the proxy", tool: "exec_command", args: map[string]any{"argv": curl, "timeout_seconds": 300},
		check: func(structured []byte) error {
			var out struct {
				ExitCode int    `json:"exit_code"`
				Stdout   string `json:"stdout"`
			}
			if err := json.Unmarshal(structured, &out); err != nil {
				return err
			}
			if out.ExitCode != 0 || out.Stdout != strconv.Itoa(egressBytes) {
				return fmt.Errorf("curl in the machine: exit %d, %q", out.ExitCode, out.Stdout)
			}
			return nil
		}}
	direct := func() (time.Duration, error) {
		start := time.Now()
		out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", "http://127.0.0.1:"+port+"/").Output()
		d := time.Since(start)
		if err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(egressBytes) {
			return d, fmt.Errorf("curl on the host: %v %q", err, out)
		}
		return d, nil
	}
	if _, err := p.call(inMachine); err != nil { // warm up
		return fmt.Errorf("%w\n%s", err, p.stderr)
	}
	before := procStatus(p.pid, "VmRSS")
	var proxied, host []time.Duration
	cpu0, stealKnown := readCPUTimes()
	for r := 0; r < rounds; r++ {
		d, err := p.call(inMachine)
		if err != nil {
			return fmt.Errorf("%w\n%s", err, p.stderr)
		}
		proxied = append(proxied, d)
		if d, err = direct(); err != nil {
			return err
		}
		host = append(host, d)
	}
	cpu1, _ := readCPUTimes()
	peak := procStatus(p.pid, "VmHWM")
	mbps := func(ds []time.Duration) float64 {
		return float64(egressBytes) / (1 << 20) / percentile(ds, 0.5).Seconds()
	}
	fmt.Fprintf(w, "\nDownload of 100 MiB from a loopback HTTP server (%d interleaved rounds, median)\n", rounds)
	fmt.Fprintf(w, "curl in a machine, through the proxy: %.0f MiB/s\ncurl on the host, directly:          %.0f MiB/s\n", mbps(proxied), mbps(host))
	fmt.Fprintf(w, "through the proxy / directly (throughput): %.2fx\n", mbps(proxied)/mbps(host))
	fmt.Fprintf(w, "server resident memory (the proxy runs in it): %d MiB before, peak %d MiB\n", before>>20, peak>>20)
	if stealKnown && cpu1.total > cpu0.total {
		fmt.Fprintf(w, "CPU time taken by the host (steal) during these calls: %.0f%% of the machine's CPU time\n", 100*float64(cpu1.steal-cpu0.steal)/float64(cpu1.total-cpu0.total))
	}
	return nil
}
