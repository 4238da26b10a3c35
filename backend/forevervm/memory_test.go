//go:build linux

package forevervm

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// streamOf yields n pseudo-random bytes without holding them, hashing them
// as they go.
type streamOf struct {
	n   int64
	rng *rand.ChaCha8
	h   hash.Hash
}

func newStream(n int64, seed byte) *streamOf {
	return &streamOf{n: n, rng: rand.NewChaCha8([32]byte{seed}), h: sha256.New()}
}

func (s *streamOf) Read(p []byte) (int, error) {
	if s.n <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.n)]
	s.rng.Read(p)
	s.h.Write(p)
	s.n -= int64(len(p))
	return len(p), nil
}

func (s *streamOf) sum() string { return hex.EncodeToString(s.h.Sum(nil)) }

// memorySampler records the peak of this process's Go heap and resident
// set while it runs.
type memorySampler struct {
	stop     chan struct{}
	done     sync.WaitGroup
	peakHeap uint64
	peakRSS  int64
	baseRSS  int64
	baseHeap uint64
}

func rss() int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func sampleMemory() *memorySampler {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := &memorySampler{stop: make(chan struct{}), baseRSS: rss(), baseHeap: ms.HeapInuse}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			s.peakHeap = max(s.peakHeap, ms.HeapInuse)
			s.peakRSS = max(s.peakRSS, rss())
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *memorySampler) end() string {
	close(s.stop)
	s.done.Wait()
	return fmt.Sprintf("Go heap in use peaked at %d MiB (from %d MiB), resident set at %d MiB (from %d MiB)",
		s.peakHeap>>20, s.baseHeap>>20, s.peakRSS>>20, s.baseRSS>>20)
}

// TestMemoryStaysBounded: a 256 MiB upload and download hold a few chunks
// in this process, not the file. The emulator runs in a child process: it
// keeps the last 1000 instructions' output, which is not the backend's.
func TestMemoryStaysBounded(t *testing.T) {
	const size = 256 << 20
	e := startEmulatorProcess(t, emulatorOptions{Limits: localLimits(1 << 30)})
	m := e.machine(t)
	ctx := testCtx(t, 10*time.Minute)

	src := newStream(size, 1)
	s := sampleMemory()
	began := time.Now()
	res, err := m.WriteFile(ctx, "big.bin", src, 0)
	took := time.Since(began)
	mem := s.end()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("upload of 256 MiB: %v (%.1f MB/s); %s", took.Round(time.Millisecond), size/took.Seconds()/1e6, mem)
	if res.Bytes != size || res.SHA256 != src.sum() {
		t.Errorf("uploaded %+v; want %d bytes, sha256 %s", res, size, src.sum())
	}
	checkBounded(t, s)

	h := sha256.New()
	s = sampleMemory()
	began = time.Now()
	n, err := m.ReadFile(ctx, "big.bin", h)
	took = time.Since(began)
	mem = s.end()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("download of 256 MiB: %v (%.1f MB/s); %s", took.Round(time.Millisecond), size/took.Seconds()/1e6, mem)
	if n != size || hex.EncodeToString(h.Sum(nil)) != src.sum() {
		t.Errorf("downloaded %d bytes with sha256 %x; want %d, %s", n, h.Sum(nil), size, src.sum())
	}
	checkBounded(t, s)
}

// checkBounded fails the test when memory grew by more than a few chunks
// (each in flight as bytes, base64, a string and a WebSocket frame).
func checkBounded(t *testing.T, s *memorySampler) {
	t.Helper()
	const limit = 48 << 20
	if grew := s.peakHeap - min(s.baseHeap, s.peakHeap); grew > limit {
		t.Errorf("the Go heap grew by %d MiB; want at most %d MiB", grew>>20, limit>>20)
	}
	if grew := s.peakRSS - s.baseRSS; grew > limit {
		t.Errorf("the resident set grew by %d MiB; want at most %d MiB", grew>>20, limit>>20)
	}
}
