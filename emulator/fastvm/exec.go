//go:build linux

package fastvm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

const (
	// maxAggregateOutput caps each stream of an aggregate exec result (§4).
	maxAggregateOutput = 4 << 20
	// Spec §13 #7: the default exec timeoutSec is 300 s.
	defaultExecTimeout = 300 * time.Second
	// Spec §13 #7: a timed-out command exits 124.
	timeoutExitCode = 124
	// streamWriteTimeout bounds one NDJSON write to a client that stopped
	// reading; the command is killed then.
	streamWriteTimeout = 30 * time.Second
)

// execResult is the wire ExecResult (§4); every field is always present.
type execResult struct {
	ExitCode        int    `json:"exitCode"`
	Stdout          string `json:"stdout"`
	Stderr          string `json:"stderr"`
	DurationMs      int64  `json:"durationMs"`
	TimedOut        bool   `json:"timedOut"`
	StdoutTruncated bool   `json:"stdoutTruncated"`
	StderrTruncated bool   `json:"stderrTruncated"`
}

// parseTimeoutSec reads an optional positive timeoutSec. Spec §13 #3: zero or
// negative is a 400.
func parseTimeoutSec(n *json.Number, def time.Duration) (time.Duration, error) {
	if n == nil {
		return def, nil
	}
	f, err := n.Float64()
	if err != nil || f <= 0 || math.IsInf(f, 0) || f > 1e9 {
		return 0, fmt.Errorf("timeoutSec must be a positive number of seconds, not %s", n.String())
	}
	return time.Duration(f * float64(time.Second)), nil
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Command    []string     `json:"command"`
		TimeoutSec *json.Number `json:"timeoutSec"`
		Stdin      *string      `json:"stdin"`
	}
	if !decodeBody(w, r, maxExecBody, &req) {
		return
	}
	if len(req.Command) == 0 || req.Command[0] == "" {
		writeError(w, http.StatusBadRequest, `command must be a non-empty argv list, e.g. ["sh","-c","echo hi"]`)
		return
	}
	timeout, err := parseTimeoutSec(req.TimeoutSec, defaultExecTimeout)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var stdin []byte
	if req.Stdin != nil {
		if stdin, err = base64.StdEncoding.DecodeString(*req.Stdin); err != nil {
			writeError(w, http.StatusBadRequest, "stdin must be base64 (standard alphabet, padded): "+err.Error())
			return
		}
	}
	v, m, ok := s.runningMachine(w, r)
	if !ok {
		return
	}
	// argv runs as given; through `exec "$@"` a missing program is what it
	// is on a VM, exit 127 with the shell's message, not an API error. The
	// VM's envVars (§9), over its image's ENV, are in its environment.
	cmd := local.Command{
		Argv:    append([]string{"/bin/sh", "-c", `exec "$@"`, "sh"}, req.Command...),
		Workdir: "/root",
		Timeout: timeout,
		Env:     s.envOf(v),
	}
	if req.Stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin) // written whole, then closed
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	if wantsNDJSON(r.Header.Get("Accept")) {
		s.streamExec(ctx, cancel, w, m, cmd)
		return
	}
	cmd.MaxOutput = maxAggregateOutput
	res, err := m.Run(ctx, cmd)
	if err != nil && res == nil {
		// §1: exec answers 502 when the VM host fails.
		writeError(w, http.StatusBadGateway, "the VM could not run the command: "+err.Error())
		return
	}
	// Invalid UTF-8 in the output becomes U+FFFD (Spec §13 #7), as Go's JSON
	// encoder does.
	writeJSON(w, http.StatusOK, aggregate(res))
}

// envOf is a command's environment in a VM: its image's ENV, with its
// envVars over it (a launch's or PATCH's envVars win, as docker run -e
// wins over an image's ENV).
func (s *Server) envOf(v *vmRecord) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(v.ImageEnv) == 0 {
		return maps.Clone(v.EnvVars)
	}
	env := maps.Clone(v.ImageEnv)
	maps.Copy(env, v.EnvVars)
	return env
}

func aggregate(res *local.CommandResult) execResult {
	out := execResult{
		ExitCode: res.ExitCode, Stdout: res.Stdout, Stderr: res.Stderr, DurationMs: res.Duration.Milliseconds(),
		TimedOut: res.TimedOut, StdoutTruncated: res.StdoutTruncated, StderrTruncated: res.StderrTruncated,
	}
	if res.TimedOut {
		out.ExitCode = timeoutExitCode
	}
	return out
}

// wantsNDJSON: Accept application/x-ndjson picks the stream; application/json,
// */* or nothing pick the aggregate (§4). With both, the higher q wins, then
// the first listed.
func wantsNDJSON(accept string) bool {
	bestQ, best := -1.0, ""
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				q = f
			}
		}
		if q > bestQ && q > 0 {
			bestQ, best = q, mt
		}
	}
	return best == "application/x-ndjson"
}

// streamExec answers the NDJSON event stream (§4): o/e events with base64
// data as the command writes, flushed at once, then exactly one x event.
func (s *Server) streamExec(ctx context.Context, cancel context.CancelFunc, w http.ResponseWriter, m *local.Machine, cmd local.Command) {
	// Spec §13 #8: Content-Type application/x-ndjson, status 200.
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	st := &ndjsonStream{w: w, rc: http.NewResponseController(w), cancel: cancel}
	st.flush()
	cmd.Stdout = st.stream("o")
	cmd.Stderr = st.stream("e")
	res, err := m.Run(ctx, cmd)
	if res == nil {
		// The headers are out: the failure can only be told in the stream.
		// Emulator choice (not in the spec): an e event with the reason and
		// exit code 255.
		st.write(dataEvent("e", []byte("fastvm emulator: the VM could not run the command: "+err.Error()+"\n")))
		st.write(exitEvent(255, false, 0))
		return
	}
	out := aggregate(res)
	st.write(exitEvent(out.ExitCode, out.TimedOut, out.DurationMs))
}

// ndjsonStream writes events to the client. The engine calls the stream
// writers on the machine's event reader, so a client that stops reading holds
// that machine's other calls too: each write gets streamWriteTimeout, after
// which the command is killed and the stream abandoned.
type ndjsonStream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	cancel context.CancelFunc
	failed bool
}

func (st *ndjsonStream) flush() {
	if err := st.rc.Flush(); err != nil {
		st.fail()
	}
}

func (st *ndjsonStream) fail() {
	st.failed = true
	st.cancel() // nobody reads the output any more: stop the command
}

// write sends one event line; the engine calls the stream writers one at a
// time, and the exit event comes after them.
func (st *ndjsonStream) write(line []byte) error {
	if st.failed {
		return fmt.Errorf("the client stopped reading the exec stream")
	}
	st.rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := st.w.Write(line); err != nil {
		st.fail()
		return err
	}
	st.flush()
	return nil
}

// stream is an io.Writer that turns each chunk into an event of kind t.
func (st *ndjsonStream) stream(t string) writerFunc {
	return func(p []byte) (int, error) {
		if err := st.write(dataEvent(t, p)); err != nil {
			return 0, err
		}
		return len(p), nil
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func dataEvent(t string, p []byte) []byte {
	b := make([]byte, 0, len(p)*4/3+24)
	b = append(b, `{"t":"`...)
	b = append(b, t...)
	b = append(b, `","d":"`...)
	b = base64.StdEncoding.AppendEncode(b, p)
	return append(b, "\"}\n"...)
}

// exitEvent: c is omitted when 0 and to when false (§4); ms is always there.
func exitEvent(code int, timedOut bool, ms int64) []byte {
	b, _ := json.Marshal(struct {
		T  string `json:"t"`
		C  int    `json:"c,omitempty"`
		TO bool   `json:"to,omitempty"`
		MS int64  `json:"ms"`
	}{"x", code, timedOut, ms})
	return append(b, '\n')
}
