package fastvm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
)

// FastVM has no way on the wire to stop a VM's processes. Every command
// vmcp starts in a VM (exec_command's, and the Python REPL's host) carries
// jobMarker in its environment, and what they start inherits it; a reset
// is one exec of a bash script that uses builtins only (it forks nothing,
// so a fork bomb cannot starve it once it runs) and stops every process
// with the marker. The VM's own services have none and are left alone. A
// process that empties its environment escapes the reset: unlike the local
// engine's, this one is a convenience, not a boundary.

// jobMarker is the environment variable that marks a VM's processes as
// started by vmcp's commands.
const jobMarker = "VMCP_JOB=1"

var _ backend.Resetter = (*Machine)(nil)

// markedArgv runs argv with jobMarker in its environment.
func markedArgv(argv []string) []string {
	if len(argv) == 0 {
		return argv // the service refuses it, as it should
	}
	return append([]string{"env", jobMarker}, argv...)
}

// processScript lists the processes with the marker ($0) but itself, one
// line each: "PID<TAB>CPU ticks<TAB>KIND<TAB>command", KIND being 2 for
// the REPL's host, 1 for its interpreter (a child of the host) and 0 for
// anything else. With "kill" as $1 it stops them instead (all but kinds 1
// and 2 when $2 is "keep") and prints how many it stopped: it freezes
// them first (SIGSTOP, to whole process groups when their leader is one of
// them: a group is stopped at once, and a stopped process forks no more),
// pass after pass until every one is frozen, then kills them. It runs no
// other program and forks no subshell, so a VM at its process limit can
// run it, and each process it freezes leaves it more of the CPU.
const processScript = `
marker=$0 mode=$1 keep=$2
declare -A class host seen bad groups
classify() { # $1 pid, $2 its start time: cls 0 not marked, 1 marked, 2 the REPL's host, 3 not known yet
	local key=$1:$2 e c=0
	local -a env
	if [[ -z ${class[$key]} ]]; then
		# An environment that cannot be read is a process being born or
		# dying: it is looked at again on the next pass.
		mapfile -d '' -t env 2>/dev/null < "/proc/$1/environ" || { cls=3; return; }
		((${#env[@]} == 0)) && { cls=3; return; }
		for e in "${env[@]}"; do [[ $e == "$marker" ]] && { c=1; break; }; done
		if ((c == 1)); then
			mapfile -d '' -t env 2>/dev/null < "/proc/$1/cmdline"
			[[ " ${env[*]} " == *"/host.py serve "* ]] && c=2
		fi
		class[$key]=$c
	fi
	cls=${class[$key]}
}
is_host() { # $1 pid
	local s
	local -a f
	if [[ -z ${host[$1]} ]]; then
		host[$1]=0
		read -r s 2>/dev/null < "/proc/$1/stat" || return 1
		f=(${s##*) })
		classify "$1" "${f[19]}"
		((cls == 2)) && host[$1]=1
	fi
	((${host[$1]} == 1))
}
# scan sets victims ("pid:start:kind" of each marked process not kept) and
# running (how many of them were not stopped yet), stopping them as it
# finds them, and unknown (how many processes it could not tell yet); in
# list mode it prints every marked process instead.
scan() {
	local d p s k
	local -a f a
	victims=() running=0 unknown=0 bad=() groups=()
	for d in /proc/[0-9]*; do
		p=${d#/proc/}
		[[ $p == "$$" ]] && continue
		read -r s 2>/dev/null < "$d/stat" || continue
		f=(${s##*) })
		[[ ${f[0]} == [ZX] ]] && continue # ended already
		((f[6] & 0x200000)) && continue # a kernel thread
		classify "$p" "${f[19]}"
		((cls == 3)) && { ((unknown++)); continue; }
		if ((cls == 0)); then bad[${f[2]}]=1; continue; fi
		k=0
		if ((cls == 2)); then k=2; elif is_host "${f[1]}"; then k=1; fi
		if [[ $mode != kill ]]; then
			mapfile -d '' -t a 2>/dev/null < "$d/cmdline"
			s=${a[*]}
			s=${s//[$'\n\t\r']/ }
			printf '%s\t%s\t%s\t%.200s\n' "$p" "$(( f[11] + f[12] ))" "$k" "$s"
			continue
		fi
		if [[ $keep == keep && $k != 0 ]]; then bad[${f[2]}]=1; continue; fi
		victims+=("$p:${f[19]}:$k") groups[${f[2]}]=1
		if [[ ${f[0]} != [Tt] ]]; then
			((running++))
			kill -STOP "$p" 2>/dev/null
		fi
	done
}
# each is every group whose processes are all victims: signalled as one,
# they cannot fork past the signal.
each() {
	local g
	for g in "${!groups[@]}"; do [[ -z ${bad[$g]} ]] && kill "$1" -- "-$g" 2>/dev/null; done
}
if [[ $mode != kill ]]; then scan; exit 0; fi
killed=0 idle=0
for ((i = 0; i < 1000; i++)); do
	scan
	if ((${#victims[@]} == 0)); then
		((unknown == 0 || ++idle > 3)) && { echo "$killed"; exit 0; }
		continue
	fi
	idle=0
	if ((running > 0)); then each -STOP; continue; fi
	each -KILL
	for v in "${victims[@]}"; do
		kill -KILL "${v%%:*}" 2>/dev/null
		# The REPL's host goes with its interpreter: one to the user.
		[[ -z ${seen[$v]} && ${v##*:} != 2 ]] && { seen[$v]=1; ((killed++)); }
	done
done
echo "$killed"
exit 3
`

// resetTimeout bounds a reset, retries included; listTimeout a listing
// of the processes.
const (
	resetTimeout = 50 * time.Second
	listTimeout  = 10 * time.Second
)

// Reset stops every process that vmcp's commands started in the VM and
// left running (and the REPL's interpreter unless keepPython), and returns
// how many it stopped. At the VM's process limit the exec that runs the
// script may be refused: it is tried again until it gets in.
func (m *Machine) Reset(ctx context.Context, keepPython bool) (int, error) {
	mode := "all"
	if keepPython {
		mode = "keep"
	}
	out, err := m.processScript(ctx, "kill", mode)
	if err != nil {
		return 0, fmt.Errorf("reset FastVM machine %s: %w", m.id, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return 0, fmt.Errorf("reset FastVM machine %s: unexpected answer %.200q", m.id, out)
	}
	if !keepPython {
		// The next call finds the host gone and starts a new one, which
		// reports that the state was lost.
		m.b.forgetREPL(m.id)
	}
	return n, nil
}

// Processes lists the processes that vmcp's commands started in the VM and
// that still run, with the REPL's interpreter; the most CPU first. The
// REPL's host is not listed: it is part of the interpreter. A paused VM is
// not resumed to list them (none runs), and a VM at its process limit is
// not waited for.
func (m *Machine) Processes(ctx context.Context) ([]backend.ProcessInfo, error) {
	if m.b.isPaused(m.id) {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	r, err := m.b.c.Exec(ctx, m.id, fastvmclient.ExecRequest{Command: []string{"bash", "-c", processScript, jobMarker, "list"}, TimeoutSec: int(listTimeout / time.Second)})
	if err == nil && r.ExitCode != 0 {
		err = fmt.Errorf("exit status %d: %.500s", r.ExitCode, r.Stderr)
	}
	if err != nil {
		return nil, fmt.Errorf("list the processes of FastVM machine %s: %w", m.id, err)
	}
	var ps []backend.ProcessInfo
	for _, line := range strings.Split(r.Stdout, "\n") {
		f := strings.SplitN(line, "\t", 4)
		if len(f) != 4 || f[2] == "2" {
			continue
		}
		pid, err1 := strconv.Atoi(f[0])
		ticks, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		ps = append(ps, backend.ProcessInfo{PID: pid, CPU: time.Duration(ticks) * time.Second / 100, // USER_HZ
			Interpreter: f[2] == "1", Command: strings.ToValidUTF8(f[3], "\uFFFD")})
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i].CPU > ps[j].CPU })
	return ps, nil
}

// processScript runs processScript in the VM, trying again while the VM
// refuses to start it (at its process limit).
func (m *Machine) processScript(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, resetTimeout)
	defer cancel()
	req := fastvmclient.ExecRequest{Command: append([]string{"bash", "-c", processScript, jobMarker}, args...), TimeoutSec: int(resetTimeout / time.Second)}
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		var r *fastvmclient.ExecResult
		err := m.resumed(ctx, repeatable, func() error {
			var err error
			r, err = m.b.c.Exec(ctx, m.id, req)
			return err
		})
		if err == nil && r.ExitCode == 0 {
			return r.Stdout, nil
		}
		if err == nil {
			if !atProcessLimit(r.Stderr) {
				return "", fmt.Errorf("exit status %d: %.500s", r.ExitCode, r.Stderr)
			}
		} else if !retryableAtLimit(err) {
			return "", err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the machine's processes kept it from starting the reset for %v (%w); delete the machine", resetTimeout, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// atProcessLimit reports whether a command's stderr says that it could not
// fork.
func atProcessLimit(stderr string) bool {
	return strings.Contains(stderr, "Resource temporarily unavailable") || strings.Contains(stderr, "process limit")
}

// retryableAtLimit reports whether an exec's failure may be the VM at its
// process limit: a server-side refusal that a later try may pass.
func retryableAtLimit(err error) bool {
	var apiErr *fastvmclient.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.StatusCode >= http.StatusInternalServerError || atProcessLimit(apiErr.Message)
}

// errAtProcessLimit is what a call says when the VM refused to start its
// command because the VM is at its process limit.
var errAtProcessLimit = errors.New("the machine is at its process limit: stop its processes with reset_machine (keep_python: true keeps your Python variables), or delete the machine")

// atLimit turns an exec's refusal at the VM's process limit into
// errAtProcessLimit, which says what to do; other errors pass unchanged.
func atLimit(err error) error {
	var apiErr *fastvmclient.APIError
	if errors.As(err, &apiErr) && atProcessLimit(apiErr.Message) {
		return errAtProcessLimit
	}
	return err
}
