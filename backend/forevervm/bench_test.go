//go:build linux

package forevervm

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// cpuTimes are the host's CPU counters of /proc/stat: all of them, and the
// time stolen by the hypervisor.
type cpuTimes struct{ total, steal, idle uint64 }

func readCPU() cpuTimes {
	b, _ := os.ReadFile("/proc/stat")
	line, _, _ := strings.Cut(string(b), "\n")
	var c cpuTimes
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		c.total += v
		switch i {
		case 3:
			c.idle = v
		case 7:
			c.steal = v
		}
	}
	return c
}

// since describes the host's CPU between two readings.
func (c cpuTimes) since(before cpuTimes) string {
	d := float64(max(c.total-before.total, 1))
	return fmt.Sprintf("steal %.1f%%, idle %.1f%%", 100*float64(c.steal-before.steal)/d, 100*float64(c.idle-before.idle)/d)
}

// BenchmarkUpload10MiB compares, in interleaved rounds, a 10 MiB upload
// through WriteFile (chunks, checked at both ends, renamed into place) with
// the same bytes written by one REPL instruction carrying them all (what
// the service allows at best: no chunking, no checks, no bound on memory).
// The emulator is allowed messages large enough for the latter.
func BenchmarkUpload10MiB(b *testing.B) {
	const size = 10 << 20
	e := startEmulator(b, emulatorOptions{MaxBodyBytes: 64 << 20})
	m := e.machine(b)
	ctx := testCtx(b, 30*time.Minute)
	data := randomBytes(size)
	python(b, m, "0") // the interpreter, started
	if _, err := m.WriteFile(ctx, "warm.bin", bytes.NewReader(data[:1<<20]), 0); err != nil {
		b.Fatal(err)
	}
	oneInstruction := "open('one.bin', 'wb').write(__import__('base64').b64decode(b'" + base64.StdEncoding.EncodeToString(data) + "')) and None"
	var chunked, single time.Duration
	rounds := 0
	cpu0 := readCPU()
	for b.Loop() {
		rounds++
		c0 := readCPU()
		t0 := time.Now()
		if _, err := m.WriteFile(ctx, "chunked.bin", bytes.NewReader(data), 0); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		res, err := m.RunPython(ctx, oneInstruction, backend.PythonOptions{Timeout: 5 * time.Minute})
		if err != nil || res.Error != "" {
			b.Fatalf("one instruction: %v %+v", err, res)
		}
		t2 := time.Now()
		chunked += t1.Sub(t0)
		single += t2.Sub(t1)
		b.Logf("round %d: WriteFile %.1f MB/s, one instruction %.1f MB/s (%s)", rounds,
			size/t1.Sub(t0).Seconds()/1e6, size/t2.Sub(t1).Seconds()/1e6, readCPU().since(c0))
	}
	mbps := func(d time.Duration) float64 { return float64(rounds) * size / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(chunked), "writefile-MB/s")
	b.ReportMetric(mbps(single), "oneinstr-MB/s")
	b.Logf("%d rounds of 10 MiB: WriteFile %.1f MB/s, one instruction %.1f MB/s; host CPU over the run: %s",
		rounds, mbps(chunked), mbps(single), readCPU().since(cpu0))
}
