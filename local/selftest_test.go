//go:build linux && !vmcp_nolocal

package local

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
)

// TestMissingBwrapStillServesState: without bubblewrap the engine opens its
// state directory, and creating a machine answers how to install it.
func TestMissingBwrapStillServesState(t *testing.T) {
	e := newTestEngine(t, Options{Bwrap: "/nonexistent/bwrap"})
	err := e.SelfTest(context.Background())
	if err == nil || !strings.Contains(err.Error(), "apt-get install -y bubblewrap") {
		t.Fatalf("SelfTest = %v, want the install hint", err)
	}
	if _, cerr := e.Create(context.Background(), MachineSpec{}); cerr == nil || cerr.Error() != err.Error() {
		t.Fatalf("Create = %v, want %v", cerr, err)
	}
	if len(e.Machines()) != 0 {
		t.Fatal("a machine was created")
	}
}

// TestSelfTestPassesAndIsCached: on this host the probe passes, and a second
// engine finds it cached instead of starting a sandbox again.
func TestSelfTestPassesAndIsCached(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir()) // nothing cached yet
	e := newTestEngine(t, Options{})
	select {
	case <-e.selfTestDone:
		t.Fatal("the self-test ended before it could have started a sandbox")
	default:
	}
	if err := e.SelfTest(context.Background()); err != nil {
		t.Fatal(err)
	}
	again := newTestEngine(t, Options{})
	select {
	case <-again.selfTestDone:
	default:
		t.Fatal("a second engine probes again instead of using the cached pass")
	}
	cached, err := os.ReadFile(selfTestCache())
	if err != nil || string(cached) != e.selfTestKey() {
		t.Fatalf("the passed self-test is not cached: %v", err)
	}
	if _, err := os.Stat(e.opts.StateDir + "/selftest"); !os.IsNotExist(err) {
		t.Fatalf("the probe's machine was left behind: %v", err)
	}
}

// TestDiagnoseNamesCauseAndFix: each failure the probe can meet is told in
// one line with the fix for the host it happens on.
func TestDiagnoseNamesCauseAndFix(t *testing.T) {
	userns := errors.New("machine selftest: the machine's sandbox stopped (bwrap: No permission to create new namespace)")
	proc := errors.New("machine selftest: the machine's sandbox stopped (bwrap: Can't mount proc on /newroot/proc: Operation not permitted)")
	for _, c := range []struct {
		name  string
		err   error
		facts hostFacts
		want  string
	}{
		{"masked proc in docker", proc, hostFacts{container: "docker"}, "systempaths=unconfined"},
		{"masked proc elsewhere", proc, hostFacts{}, "where /proc is fully visible"},
		{"userns sysctl", userns, hostFacts{usernsClone: "0"}, "kernel.unprivileged_userns_clone=1"},
		{"ubuntu apparmor", userns, hostFacts{usernsClone: "1", apparmorUserns: "1"}, "apparmor_restrict_unprivileged_userns=0"},
		{"no user namespaces", userns, hostFacts{maxUserNamespace: "0"}, "user.max_user_namespaces"},
		{"container seccomp", userns, hostFacts{container: "podman"}, "seccomp=unconfined"},
		{"other failure in a container", errors.New("bwrap: Can't set hostname to vmcp: Operation not permitted"), hostFacts{container: "podman"}, "unmask=ALL"},
		{"wsl1", userns, hostFacts{wsl1: true}, "wsl --set-version"},
		{"anything else", errors.New("boom\nsecond line"), hostFacts{}, "its self-test failed: boom second line"},
	} {
		got := diagnose(c.err, c.facts).Error()
		if !strings.Contains(got, c.want) || strings.Contains(got, "\n") || !strings.Contains(got, "FOREVERVM_TOKEN") {
			t.Errorf("%s: %q does not say %q in one line", c.name, got, c.want)
		}
	}
}
