//go:build linux && !vmcp_nolocal

package local

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// The engine runs as root (cgroups, a sandbox user of its own) or as an
// ordinary user (rlimits, the sandbox is that user). Attack tests run in
// both: engineModes runs a test as this process's user and, when that is
// root, again in a copy of this test binary started as an unprivileged uid
// that no account uses.

const unprivilegedEnv = "VMCP_TEST_UNPRIVILEGED"

// engineModes runs test as subtests named "root" or "user" (this process)
// and "unprivileged" (a child process as an unused uid, when this one is
// root).
func engineModes(t *testing.T, test func(t *testing.T)) {
	t.Helper()
	if os.Getenv(unprivilegedEnv) != "" {
		t.Run("unprivileged", test)
		return
	}
	if os.Geteuid() != 0 {
		t.Run("user", test)
		return
	}
	t.Run("root", test)
	t.Run("unprivileged", func(t *testing.T) { runUnprivileged(t, strings.Split(t.Name(), "/")[0]) })
}

var (
	unprivOnce sync.Once
	unprivBin  string
	unprivUID  int
	unprivErr  error
)

// runUnprivileged runs this test binary's test top/unprivileged as an
// unprivileged uid and fails if it fails.
func runUnprivileged(t *testing.T, top string) {
	unprivOnce.Do(func() { unprivBin, unprivUID, unprivErr = prepareUnprivileged() })
	if unprivErr != nil {
		t.Fatalf("prepare the unprivileged run: %v", unprivErr)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(unprivBin), "tmp-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chown(tmp, unprivUID, unprivUID); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unprivBin, "-test.run", "^"+top+"$/^unprivileged$", "-test.count=1", "-test.v", "-test.timeout=10m")
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "TMPDIR=" + tmp, "HOME=" + tmp, unprivilegedEnv + "=1"}
	cmd.Dir = tmp
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(unprivUID), Gid: uint32(unprivUID)}, Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	sc := bufio.NewScanner(io.TeeReader(out, &log))
	ran := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "=== RUN   "+top+"/unprivileged") {
			ran = true
		}
	}
	err = cmd.Wait()
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if err != nil || !ran {
		t.Fatalf("as uid %d: %v\n%s", unprivUID, err, log.String())
	}
	t.Logf("as uid %d:\n%s", unprivUID, log.String())
}

// prepareUnprivileged copies this test binary where any user may run it
// and picks a uid that no account on this host has.
func prepareUnprivileged() (string, int, error) {
	self, err := os.Executable()
	if err != nil {
		return "", 0, err
	}
	dir, err := os.MkdirTemp("", "vmcp-unprivileged-")
	if err != nil {
		return "", 0, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", 0, err
	}
	bin := filepath.Join(dir, filepath.Base(self))
	src, err := os.Open(self)
	if err != nil {
		return "", 0, err
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		return "", 0, err
	}
	if _, err := io.Copy(dst, src); err != nil {
		return "", 0, err
	}
	if err := dst.Close(); err != nil {
		return "", 0, err
	}
	passwd, _ := os.ReadFile("/etc/passwd")
	for uid := 60500; uid < 61000; uid++ {
		if !strings.Contains(string(passwd), ":"+strconv.Itoa(uid)+":") {
			return bin, uid, nil
		}
	}
	return "", 0, fmt.Errorf("no free uid in 60500-60999")
}
