//go:build linux && !vmcp_nolocal

package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	"github.com/vmcp-dev/vmcp/local"
)

// recordedMachines lists the local machines from their records, for a
// state directory that a server owns.
func recordedMachines(stateDir string) ([]backend.MachineInfo, error) {
	infos, err := local.ReadMachines(stateDir)
	var out []backend.MachineInfo
	for _, info := range infos {
		out = append(out, localbackend.InfoOf(info))
	}
	return out, err
}

// recordedSnapshots lists the local snapshots from their records (see
// recordedMachines).
func recordedSnapshots(stateDir string) ([]backend.SnapshotInfo, error) {
	snaps, err := local.ReadSnapshots(stateDir)
	var out []backend.SnapshotInfo
	for _, s := range snaps {
		out = append(out, localbackend.SnapshotInfoOf(s))
	}
	return out, err
}

// machineDisk is the space a local machine's files take on disk.
func machineDisk(stateDir, id string) (int64, error) { return local.DiskUsage(stateDir, id) }

// probeTimeout bounds doctor's sandbox probe, as the engine bounds its
// self-test: a sandbox that has not run `true` by then will not run
// anything.
const probeTimeout = 60 * time.Second

// localChecks are doctor's checks of what the local backend needs, each
// done as the engine does it. inUse: machines go to the local backend by
// default, so what keeps them from running fails; otherwise it warns.
func localChecks(ctx context.Context, cfg Config, inUse bool) []check {
	broken := verdictFail
	if !inUse {
		broken = verdictWarn
	}
	opts := cfg.localOptions()
	var out []check
	add := func(name, verdict, detail string) {
		out = append(out, check{Name: name, Verdict: verdict, Detail: detail})
	}

	out = append(out, diskCheck(cfg))

	bwrapOK := true
	path, version, err := local.CheckBubblewrap(ctx, opts)
	switch {
	case cfg.DangerouslyDisableSandbox:
		add("bubblewrap", verdictWarn, "not used: the sandbox is disabled (--dangerously-disable-sandbox), so machines run as plain host processes with your user's access")
	case err != nil:
		bwrapOK = false
		add("bubblewrap", broken, err.Error())
	default:
		add("bubblewrap", verdictOK, fmt.Sprintf("%s (%s)", version, path))
	}

	if cfg.DangerouslyDisableSandbox {
		add("user namespaces", verdictSkip, "not used: the sandbox is disabled")
	} else if err := local.CheckUserNamespaces(ctx); err != nil {
		add("user namespaces", broken, err.Error())
	} else {
		add("user namespaces", verdictOK, "this user can create one, as every sandbox starts with")
	}

	var probe local.SandboxCheck
	probed := false
	if !bwrapOK {
		add("sandbox", broken, "not tried: bubblewrap is missing (see above)")
	} else {
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		probe, err = local.ProbeSandbox(pctx, opts)
		cancel()
		switch {
		case err != nil:
			add("sandbox", broken, err.Error())
		case cfg.DangerouslyDisableSandbox:
			probed = true
			add("sandbox", verdictWarn, fmt.Sprintf("disabled: a machine started as a plain host process and ran `true` in %s", probe.Took.Round(time.Millisecond)))
		default:
			probed = true
			add("sandbox", verdictOK, fmt.Sprintf("a machine's sandbox started and ran `true` in %s", probe.Took.Round(time.Millisecond)))
		}
	}

	switch {
	case !probed:
		add("python", verdictSkip, "not tried: no sandbox started to run it in")
	case probe.PythonErr != nil:
		add("python", broken, probe.PythonErr.Error()+": install Python 3 (`sudo apt-get install -y python3` on Debian/Ubuntu)")
	default:
		add("python", verdictOK, "Python "+probe.Python+" runs in a machine")
	}

	out = append(out, cgroupCheck(cfg, probe.Cgroups))
	return out
}

// cgroupCheck says how machines' memory and processes are limited: mode
// is what the probe's engine did ("v2", "v1", "none"; "" unknown).
func cgroupCheck(cfg Config, mode string) check {
	c := check{Name: "cgroups"}
	version, controllers := local.CgroupHierarchy()
	hierarchy := "cgroup " + version
	if len(controllers) > 0 {
		hierarchy += " (" + strings.Join(controllers, ", ") + ")"
	}
	switch {
	case mode == "v1" || mode == "v2":
		c.Verdict, c.Detail = verdictOK, hierarchy+": each machine gets a cgroup with its memory and process limits"
	case cfg.DangerouslyDisableSandbox:
		c.Verdict, c.Detail = verdictSkip, hierarchy+": not used with the sandbox disabled (machines are limited by rlimits)"
	case os.Geteuid() != 0:
		c.Verdict, c.Detail = verdictOK, hierarchy+"; vmcp runs unprivileged, so machines are limited by rlimits (address space, processes) "+
			"and the engine's memory watch instead of cgroups (as root they get cgroups)"
	case mode == "none":
		c.Verdict, c.Detail = verdictWarn, hierarchy+", but vmcp (root) could not create its cgroups under /sys/fs/cgroup/vmcp, so machines are limited by "+
			"rlimits instead: give it a writable cgroup hierarchy (a container with a private, writable cgroupfs, or systemd's Delegate=yes)"
	default:
		c.Verdict, c.Detail = verdictSkip, hierarchy+"; not known whether vmcp can use it: no engine started"
	}
	return c
}

// diskCheck measures the free space of the state directory's filesystem
// against what the engine keeps free and what one machine may take.
func diskCheck(cfg Config) check {
	c := check{Name: "disk"}
	dir := existingAncestor(cfg.StateDir)
	s, err := local.FreeSpace(dir, local.Options{})
	if err != nil {
		c.Verdict, c.Detail = verdictFail, fmt.Sprintf("cannot measure the free space of %s: %v", dir, err)
		return c
	}
	free := fmt.Sprintf("%s and %d inodes free on the filesystem of %s", humanBytes(int64(s.FreeBytes)), s.FreeInodes, dir)
	keeps := fmt.Sprintf("vmcp keeps %s and %d inodes free", humanBytes(int64(s.ReserveBytes)), s.ReserveInodes)
	quota := cfg.Limits.DiskMB << 20
	switch {
	case s.Low():
		c.Verdict, c.Detail = verdictFail, free+"; "+keeps+", so machines cannot write: free space, or give --state-dir a directory on another disk"
	case s.Near() || int64(s.FreeBytes) < quota:
		c.Verdict, c.Detail = verdictWarn, fmt.Sprintf("%s: little room (%s; a machine may take %s, --disk-mb): free space, or give --state-dir a directory on another disk",
			free, keeps, humanBytes(quota))
	default:
		c.Verdict, c.Detail = verdictOK, free+" ("+keeps+")"
	}
	return c
}
