//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	forevervmemu "github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// smallFileEnv runs TestForeverVMFilesAndCommands with a 64 MiB file
// instead of 1 GiB, which takes more than two minutes through the emulator
// on two cores: for quick runs while working on it.
const smallFileEnv = "VMCP_E2E_FOREVERVM_SMALL"

// forevervmEmulatorWithDisk is forevervmEmulator whose machines may keep
// disk bytes of files (the default quota, 1 GiB, cannot hold a 1 GiB file
// and anything else).
func forevervmEmulatorWithDisk(t *testing.T, disk int64) (url, token string) {
	t.Helper()
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	token = "e2e.secret-token-value"
	emu, err := forevervmemu.New(forevervmemu.Options{Engine: engine, Token: token, Limits: local.Limits{DiskBytes: disk}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(emu)
	t.Cleanup(func() {
		srv.Close()
		emu.Close()
		engine.Close()
	})
	return srv.URL, token
}

// callFor calls a tool that must succeed, waiting up to d (h.ok waits a
// minute).
func callFor(t *testing.T, h *harness, d time.Duration, name string, args map[string]any, out any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	res, err := h.cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if res.IsError {
		t.Fatalf("%s: tool error: %s", name, text(res))
	}
	if err := h.checkOutput(ctx, name, res.StructuredContent); err != nil {
		t.Fatal(err)
	}
	decode(t, res, out)
}

// writeRandomFile writes size pseudo-random bytes to path and returns
// their sha256, without holding them.
func writeRandomFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	rng := rand.NewChaCha8([32]byte{42})
	if _, err := io.CopyN(io.MultiWriter(f, h), rng, size); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestForeverVMFilesAndCommands: on a ForeverVM machine (the emulator's),
// a big file goes up from the host and comes back down intact through the
// REPL, while the server stays within 64 MiB of memory; exec_command runs
// with exit codes, stdin and a timeout that kills what it started; and the
// user's Python state is untouched by all of it.
func TestForeverVMFilesAndCommands(t *testing.T) {
	t.Parallel()
	size := int64(1 << 30)
	url, token := forevervmEmulatorWithDisk(t, 3<<30)
	if os.Getenv(smallFileEnv) != "" {
		size = 64 << 20
	}
	h := startForeverVM(t, t.TempDir(), url, token)

	var py tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "x = 41"}, &py)
	machine := py.Machine
	if !forevervmName.MatchString(machine) {
		t.Fatalf("run_python ran on %q, not a ForeverVM machine", machine)
	}

	base := peakMemory(t, h.cmd.Process.Pid)
	want := writeRandomFile(t, filepath.Join(h.root, "big.bin"), size)
	began := time.Now()
	var up tools.UploadFileOutput
	callFor(t, h, 30*time.Minute, "upload_file", map[string]any{"path": "data/big.bin", "local_path": "big.bin", "timeout_seconds": 1800}, &up)
	upTook := time.Since(began)
	if up.Machine != machine || up.Bytes != size || up.SHA256 != want {
		t.Errorf("upload_file: %+v; want %d bytes with sha256 %s on %s", up, size, want, machine)
	}
	var cmd tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": "sha256sum data/big.bin"}, &cmd)
	if got, _, _ := strings.Cut(cmd.Stdout, " "); cmd.Machine != machine || got != want {
		t.Errorf("the machine's sha256 of the upload: %+v; want %s", cmd, want)
	}

	began = time.Now()
	var down tools.DownloadFileOutput
	callFor(t, h, 30*time.Minute, "download_file", map[string]any{"path": "data/big.bin", "local_path": "back.bin", "timeout_seconds": 1800}, &down)
	downTook := time.Since(began)
	if down.Machine != machine || down.Bytes != size || down.SHA256 != want {
		t.Errorf("download_file: %+v; want %d bytes with sha256 %s", down, size, want)
	}
	if got := fileSHA(t, filepath.Join(h.root, "back.bin")); got != want {
		t.Errorf("the downloaded file's sha256 is %s, want %s", got, want)
	}
	peak := peakMemory(t, h.cmd.Process.Pid)
	mb := float64(size) / 1e6
	t.Logf("%d MiB through ForeverVM: upload %v (%.1f MB/s), download %v (%.1f MB/s); server peak RSS (VmHWM) %d MiB (%d MiB before)",
		size>>20, upTook.Round(time.Millisecond), mb/upTook.Seconds(), downTook.Round(time.Millisecond), mb/downTook.Seconds(), peak>>20, base>>20)
	if peak > 64<<20 {
		t.Errorf("the server's peak RSS was %d MiB; want at most 64 MiB", peak>>20)
	}

	// Commands: exit codes, stdin, a timeout that kills the whole tree.
	h.ok(t, "exec_command", map[string]any{"command": "echo out; echo err >&2; exit 3"}, &cmd)
	if cmd.Machine != machine || cmd.ExitCode != 3 || cmd.Stdout != "out\n" || cmd.Stderr != "err\n" {
		t.Errorf("exit 3: %+v", cmd)
	}
	stdin := strings.Repeat(hex.EncodeToString([]byte(want)), 40000) // 5 MB
	h.ok(t, "exec_command", map[string]any{"command": "sha256sum", "stdin": stdin}, &cmd)
	if cmd.Stdout != sha([]byte(stdin))+"  -\n" {
		t.Errorf("sha256sum of %d bytes of stdin: %q; want %s", len(stdin), cmd.Stdout, sha([]byte(stdin)))
	}
	began = time.Now()
	res := h.call(t, "exec_command", map[string]any{"command": "sleep 1000 & sleep 1000", "timeout_seconds": 1})
	decode(t, res, &cmd)
	if !res.IsError || !cmd.TimedOut || cmd.ExitCode != 137 || time.Since(began) > 10*time.Second {
		t.Errorf("a 1 s timeout: %+v after %v (tool error %v)", cmd, time.Since(began), res.IsError)
	}
	h.ok(t, "exec_command", map[string]any{"command": `for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 1000 $' || true`}, &cmd)
	if cmd.Stdout != "0\n" {
		t.Errorf("sleep 1000 processes left after the timeout: %s", cmd.Stdout)
	}

	// The user's state is as it was.
	h.ok(t, "run_python", map[string]any{"code": "x + 1"}, &py)
	if py.Value == nil || *py.Value != "42" || py.Machine != machine {
		t.Errorf("x + 1 after the file and command tools: %+v", py)
	}
}
