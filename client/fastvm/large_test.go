//go:build linux

package fastvm_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	fastvm "github.com/vmcp-dev/vmcp/client/fastvm"
	fastvmemu "github.com/vmcp-dev/vmcp/emulator/fastvm"
)

// childEnv, when set to "upload" or "download", makes the test binary run
// that one transfer and exit (see transferChild): the large-transfer test
// measures the client's peak memory in a process of its own, apart from the
// emulator's.
const childEnv = "FASTVM_CLIENT_TEST_CHILD"

// maxClientRSS is the most memory a transfer of any size may take.
const maxClientRSS = 64 << 20

// transferChild runs one Upload or Download as a user program would,
// configured from the environment, and returns the exit status.
func transferChild() int {
	c, err := fastvm.NewFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	vm, from, to := os.Getenv("CHILD_VM"), os.Getenv("CHILD_FROM"), os.Getenv("CHILD_TO")
	switch os.Getenv(childEnv) {
	case "upload":
		err = c.Upload(ctx, vm, from, to)
	case "download":
		err = c.Download(ctx, vm, from, to)
	default:
		err = fmt.Errorf("unknown %s", childEnv)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The kernel's rusage of a child starts from its parent's peak (the
	// exec replaces a shared address space), so report our own: VmHWM.
	fmt.Printf("peak-rss-bytes %d\n", vmHWM())
	return 0
}

// runTransfer runs a transfer in a child process and checks its peak RSS.
func runTransfer(t *testing.T, env *emuEnv, op, vmID, from, to string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+op, "FASTVM_API_KEY="+emuKey, "FASTVM_BASE_URL="+env.srv.URL,
		"CHILD_VM="+vmID, "CHILD_FROM="+from, "CHILD_TO="+to)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s → %s: %v\n%s%s", op, from, to, err, out, stderr.String())
	}
	var rss int64
	if _, err := fmt.Sscanf(string(out), "peak-rss-bytes %d", &rss); err != nil || rss <= 0 {
		t.Fatalf("the child reported no peak RSS: %q", out)
	}
	// rusage: at least the parent's peak at fork time, an upper bound.
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	t.Logf("%-8s %s → %s: %v; client peak RSS %.1f MiB (VmHWM; rusage bound %.1f MiB)", op, filepath.Base(from), filepath.Base(to),
		time.Since(start).Round(time.Millisecond), float64(rss)/(1<<20), float64(ru)/(1<<20))
	if rss > maxClientRSS {
		t.Errorf("the %s took %.1f MiB of memory, over the %d MiB bound", op, float64(rss)/(1<<20), maxClientRSS>>20)
	}
}

// vmHWM reads this process's peak resident set from /proc/self/status.
func vmHWM() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

// logPhases logs how long the storage and VM-side steps of a transfer took,
// from the emulator's side.
func logPhases(t *testing.T, env *emuEnv) {
	t.Helper()
	for _, p := range []struct{ method, prefix string }{{"PUT", "/_emulator/objects/"}, {"GET", "/_emulator/objects/"}, {"POST", "/v1/vms/"}} {
		for _, e := range env.wire.find(p.method, p.prefix) {
			if d := e.Done.Sub(e.At); d > time.Second {
				t.Logf("    %s %s: %v", e.Method, e.Path[strings.LastIndex(e.Path, "/"):], d.Round(time.Millisecond))
			}
		}
	}
	env.wire.reset()
}

// TestEmuLargeTransfersStreamWithBoundedMemory moves a 1 GiB file and a
// directory holding a 256 MiB file into a VM and back through Upload and
// Download, each in a child process whose peak RSS must stay under 64 MiB,
// and checks every byte (sha256) in the VM and back home.
func TestEmuLargeTransfersStreamWithBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: moving 1 GiB each way takes over a minute here (most of it the emulator's fetch into the VM)")
	}
	env := newEmu(t, fastvmemu.Options{})
	ctx := context.Background()
	vm := env.launch(t, fastvm.LaunchRequest{DiskGiB: 10})
	dir := t.TempDir()
	before := vmHWM()
	start := time.Now()

	src := filepath.Join(dir, "big.bin")
	sum := writeRandomFile(t, src, 1<<30, 42)
	runTransfer(t, env, "upload", vm.ID, src, "/root/big.bin")
	logPhases(t, env)
	res, err := env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"sha256sum", "/root/big.bin"}})
	if err != nil || !strings.HasPrefix(res.Stdout, sum+" ") {
		t.Fatalf("sha256 in the VM: %+v, %v; want %s", res, err, sum)
	}
	os.Remove(src)
	back := filepath.Join(dir, "back.bin")
	runTransfer(t, env, "download", vm.ID, "/root/big.bin", back)
	logPhases(t, env)
	if got := fileSHA(t, back); got != sum {
		t.Fatalf("downloaded sha256 %s, want %s", got, sum)
	}
	os.Remove(back)
	env.c.Exec(ctx, vm.ID, fastvm.ExecRequest{Command: []string{"rm", "/root/big.bin"}})

	tree := filepath.Join(dir, "tree")
	sampleTree(t, tree, 256<<20)
	want := treeDigest(t, tree)
	runTransfer(t, env, "upload", vm.ID, tree, "/root/tree")
	logPhases(t, env)
	treeBack := filepath.Join(dir, "tree-back")
	runTransfer(t, env, "download", vm.ID, "/root/tree", treeBack)
	logPhases(t, env)
	if got := treeDigest(t, treeBack); got != want {
		t.Fatalf("directory came back as\n%s\nwant\n%s", got, want)
	}
	t.Logf("total %v; this test process (emulator included) peak RSS %.1f MiB before, %.1f MiB after",
		time.Since(start).Round(time.Millisecond), float64(before)/(1<<20), float64(vmHWM())/(1<<20))
}
