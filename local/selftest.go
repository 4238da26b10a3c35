//go:build linux && !vmcp_nolocal

package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// selfTestTimeout bounds the probe: a sandbox that has not run `true` by
// then will not run anything.
const selfTestTimeout = 60 * time.Second

// SelfTest returns why machines cannot run on this host, in one line that
// names the cause and the fix, or nil when they can. It waits for the probe
// that New starts (a sandbox that runs `true`), or for ctx.
func (e *Engine) SelfTest(ctx context.Context) error {
	select {
	case <-e.selfTestDone:
		return e.selfTestErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startSelfTest probes the sandbox in the background, unless a probe with
// the same host facts passed since this boot.
func (e *Engine) startSelfTest(missingBwrap error) {
	e.selfTestDone = make(chan struct{})
	if missingBwrap != nil || e.opts.DangerouslyDisableSandbox {
		e.selfTestErr = missingBwrap
		close(e.selfTestDone)
		return
	}
	key := e.selfTestKey()
	cache := selfTestCache()
	if cached, err := os.ReadFile(cache); err == nil && string(cached) == key {
		close(e.selfTestDone)
		return
	}
	go func() {
		defer close(e.selfTestDone)
		ctx, cancel := context.WithTimeout(context.Background(), selfTestTimeout)
		defer cancel()
		if err := e.probe(ctx); err != nil {
			e.selfTestErr = diagnose(err, readHostFacts())
			return
		}
		if os.MkdirAll(filepath.Dir(cache), 0o700) == nil {
			writeFileAtomic(cache, []byte(key))
		}
	}()
}

// probe starts a workspace sandbox, exactly as a machine's, and runs `true`
// in it.
func (e *Engine) probe(ctx context.Context) error {
	dir := filepath.Join(e.opts.StateDir, "selftest")
	if err := removeAll(dir); err != nil {
		return err
	}
	defer removeAll(dir)
	info := MachineInfo{ID: "selftest", Flavour: Workspace, Limits: e.opts.Limits, CreatedAt: time.Now()}
	if err := e.prepareMachineDir(ctx, dir, info, SnapshotInfo{}); err != nil {
		return err
	}
	m := newMachine(e, dir, info)
	m.probe = true
	defer func() {
		m.Stop()
		e.cgroups.remove(info.ID)
	}()
	res, err := m.Run(ctx, Command{Argv: []string{"true"}})
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("`true` exited with status %d in the sandbox: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
	}
	return nil
}

// selfTestCache is where a passed probe is remembered: one file per user.
func selfTestCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("vmcp-%d", os.Getuid()))
	}
	return filepath.Join(dir, "vmcp", "selftest")
}

// selfTestKey names what a probe's outcome depends on: this boot, this
// binary and bubblewrap, the user, how /proc is mounted, and the kernel's
// switches for user namespaces.
func (e *Engine) selfTestKey() string {
	h := sha256.New()
	for _, p := range []string{"/proc/sys/kernel/random/boot_id", "/proc/sys/kernel/unprivileged_userns_clone",
		"/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "/proc/sys/user/max_user_namespaces"} {
		b, _ := os.ReadFile(p)
		fmt.Fprintf(h, "%s=%s\n", p, b)
	}
	for _, p := range []string{e.helper, e.bwrap} {
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	fmt.Fprintf(h, "uid %d %d\n", os.Getuid(), os.Geteuid())
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range bytes.Split(mi, []byte("\n")) {
			if bytes.Contains(line, []byte("/proc")) {
				fields := bytes.Fields(line)
				if len(fields) > 4 { // the mount ids change; where and what do not
					h.Write(bytes.Join(fields[3:], []byte(" ")))
					h.Write([]byte("\n"))
				}
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hostFacts are what diagnose needs to know of the host.
type hostFacts struct {
	container        string // Container()
	wsl1             bool
	usernsClone      string // kernel.unprivileged_userns_clone ("" where absent)
	apparmorUserns   string // kernel.apparmor_restrict_unprivileged_userns
	maxUserNamespace string // user.max_user_namespaces
}

func readHostFacts() hostFacts {
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return strings.TrimSpace(string(b))
	}
	f := hostFacts{
		usernsClone:      read("/proc/sys/kernel/unprivileged_userns_clone"),
		apparmorUserns:   read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
		maxUserNamespace: read("/proc/sys/user/max_user_namespaces"),
	}
	version := read("/proc/version")
	f.wsl1 = strings.Contains(version, "Microsoft") && !strings.Contains(strings.ToLower(version), "microsoft-standard")
	f.container = Container()
	return f
}

// cloudHint ends each diagnosis: the cloud backends work wherever the local
// engine does not.
const cloudHint = "; the ForeverVM and FastVM backends work without it (set FOREVERVM_TOKEN or FASTVM_API_KEY)"

// diagnose turns a failed probe into one line: what is wrong on this host
// and how to fix it.
func diagnose(err error, f hostFacts) error {
	msg := err.Error()
	prefix := "the local sandbox cannot start on this host: "
	userns := strings.Contains(msg, "namespace") || strings.Contains(msg, "uid map") || strings.Contains(msg, "uid_map") ||
		strings.Contains(msg, "setgroups") || (strings.Contains(msg, "fork/exec") && strings.Contains(msg, "operation not permitted"))
	var cause string
	switch {
	case f.wsl1:
		cause = "WSL 1 has no Linux kernel to sandbox with: convert this distribution to WSL 2 (in PowerShell: wsl --set-version <distribution> 2)"
	case strings.Contains(msg, "mount proc") && f.container != "":
		cause = "this container hides parts of /proc, so a sandbox cannot mount its own: run the container with " +
			"--security-opt systempaths=unconfined (Docker) or --security-opt unmask=ALL (Podman), " +
			"besides --security-opt seccomp=unconfined --security-opt apparmor=unconfined"
	case strings.Contains(msg, "mount proc"):
		cause = "parts of /proc are hidden by mounts over them, so a sandbox cannot mount its own /proc: " +
			"start vmcp where /proc is fully visible (outside the container or namespace that hides it)"
	case userns && f.usernsClone == "0":
		cause = "unprivileged user namespaces are off (kernel.unprivileged_userns_clone=0): " +
			"turn them on with `sudo sysctl -w kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d/ to keep it)"
	case userns && f.maxUserNamespace == "0":
		cause = "user namespaces are off (user.max_user_namespaces=0): " +
			"turn them on with `sudo sysctl -w user.max_user_namespaces=15000` (and in /etc/sysctl.d/ to keep it)"
	case userns && f.apparmorUserns == "1":
		cause = "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, as on Ubuntu 24.04): " +
			"lift it with `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or give bwrap an AppArmor profile that allows userns"
	case userns && f.container != "":
		cause = "this container's seccomp or AppArmor profile forbids user namespaces: run the container with " +
			"--security-opt seccomp=unconfined --security-opt apparmor=unconfined (and --security-opt systempaths=unconfined, Podman: unmask=ALL)"
	case f.container != "":
		cause = "this container's security options keep sandboxes from starting: run the container with " +
			"--security-opt seccomp=unconfined --security-opt apparmor=unconfined and --security-opt systempaths=unconfined (Docker) or --security-opt unmask=ALL (Podman)"
	default:
		return errors.New(prefix + "its self-test failed: " + oneLine(msg) + cloudHint)
	}
	return errors.New(prefix + cause + " (the self-test said: " + oneLine(msg) + ")" + cloudHint)
}

// oneLine joins a message's lines.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
