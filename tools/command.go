package tools

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
)

// ExecCommandInput is exec_command's arguments.
type ExecCommandInput struct {
	Command        string            `json:"command,omitempty" jsonschema:"description=A bash command line (run as bash -c). Give either command or argv."`
	Argv           []string          `json:"argv,omitempty" jsonschema:"description=The program and its arguments\\, run without a shell. Give either command or argv."`
	Machine        string            `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"description=Kill the command and everything it started after this many seconds (default 60; leave it out for that).,minimum=1,maximum=86400"`
	Stdin          Text              `json:"stdin,omitempty" jsonschema:"description=Text fed to the command's standard input."`
	Workdir        string            `json:"workdir,omitempty" jsonschema:"description=Working directory inside the machine; default its home (the workspace)."`
	Env            map[string]string `json:"env,omitempty" jsonschema:"description=Environment variables to add or override."`
	OutputArg
	SessionArg
}

// ExecCommandOutput is exec_command's result.
type ExecCommandOutput struct {
	SessionResult
	Machine          string `json:"machine" jsonschema:"description=The machine the command ran in."`
	ExitCode         int    `json:"exit_code" jsonschema:"description=The exit status; non-zero is a normal result."`
	Signal           string `json:"signal,omitempty" jsonschema:"description=The signal that ended the command\\, if any."`
	Stdout           string `json:"stdout" jsonschema:"description=What the command wrote to standard output: all of it\\, or its head and tail with a marker line where the rest was left out (see stdout_truncated)."`
	Stderr           string `json:"stderr" jsonschema:"description=What the command wrote to standard error\\, likewise."`
	StdoutTruncated  bool   `json:"stdout_truncated" jsonschema:"description=stdout did not fit the result's budget (max_output_chars): only its head and tail are here; the whole of it is in full_output_path."`
	StderrTruncated  bool   `json:"stderr_truncated" jsonschema:"description=stderr did not fit the result's budget\\, likewise."`
	StdoutTotalBytes int64  `json:"stdout_total_bytes" jsonschema:"description=How many bytes the command wrote to stdout in all."`
	StderrTotalBytes int64  `json:"stderr_total_bytes" jsonschema:"description=How many bytes the command wrote to stderr in all."`
	StdoutLines      int64  `json:"stdout_lines" jsonschema:"description=How many lines the command wrote to stdout in all."`
	StderrLines      int64  `json:"stderr_lines" jsonschema:"description=How many lines the command wrote to stderr in all."`
	StdoutNotUTF8    bool   `json:"stdout_not_utf8,omitempty" jsonschema:"description=stdout had bytes that are not UTF-8: they show as U+FFFD here; the saved file has them as written."`
	StderrNotUTF8    bool   `json:"stderr_not_utf8,omitempty" jsonschema:"description=stderr had bytes that are not UTF-8\\, likewise."`
	FullOutputPath   string `json:"full_output_path,omitempty" jsonschema:"description=When output was cut: the directory in the machine that holds the whole of it (files stdout and stderr)\\, for download_file (offset\\, length) or a command. Older calls' saved output is deleted as newer is saved."`
	TimedOut         bool   `json:"timed_out" jsonschema:"description=The command was killed at its timeout."`
	ProcessesRunning int    `json:"processes_running,omitempty" jsonschema:"description=Set when more than 5 processes that commands started are still running in the machine: how many (session_info lists them\\, reset_machine stops them)."`
	DurationMS       int64  `json:"duration_ms" jsonschema:"description=How long the command ran\\, in milliseconds."`
}

// homePath reads a machine path as a shell would: "~" and "~/…" are the
// machine's home (relative paths start there), not a directory named "~".
func homePath(p string) string {
	switch {
	case p == "~" || p == "~/":
		return "."
	case strings.HasPrefix(p, "~/"):
		return strings.TrimLeft(p[2:], "/")
	}
	return p
}

// leftRunningNote is how many processes left running in a machine a
// command's result passes over in silence.
const leftRunningNote = 5

// defaultCommandTimeout bounds commands that set no timeout.
const defaultCommandTimeout = 60 * time.Second

func (in ExecCommandInput) timeout() int { return in.TimeoutSeconds }

func (s *Service) commandTools() []server.ServerTool {
	return []server.ServerTool{newTool[ExecCommandInput, ExecCommandOutput](s, toolSpec{
		name:    "exec_command",
		timeout: defaultCommandTimeout,
		title:   "Run a command",
		description: "Run a command in a machine: either a bash command line (command) or an argv without a shell. " +
			"Returns the exit code, stdout and stderr; a non-zero exit is a normal result, a timeout is a tool error. " +
			"With a progress token, output lines are streamed as progress notifications.",
		destructive: true,
	}, s.execCommand)}
}

func (s *Service) execCommand(ctx context.Context, req mcp.CallToolRequest, in ExecCommandInput) (*mcp.CallToolResult, error) {
	switch {
	case in.Command != "" && len(in.Argv) > 0:
		return nil, errors.New("give either command (a bash command line) or argv (a program and its arguments), not both")
	case in.Command == "" && len(in.Argv) == 0:
		return nil, errors.New("missing command: give command (a bash command line) or argv (a program and its arguments)")
	}
	budget, err := s.outputBudget(in.MaxOutputChars)
	if err != nil {
		return nil, err
	}
	m, sh, err := machineAs[backend.CommandRunner](ctx, s, in.Machine, backend.Shell)
	if err != nil {
		return nil, err
	}
	timeout := defaultCommandTimeout
	if in.TimeoutSeconds > 0 {
		timeout = time.Duration(in.TimeoutSeconds) * time.Second
	}
	output := s.newCallOutput(budget, "stdout", "stderr")
	defer output.close()
	cmd := backend.Command{
		Argv:    in.Argv,
		Shell:   in.Command,
		Env:     in.Env,
		Workdir: homePath(in.Workdir),
		Timeout: timeout,
		Stdout:  output.stream("stdout"),
		Stderr:  output.stream("stderr"),
		// Where the backend can, the machine keeps a long output itself:
		// only head and tail cross to this server.
		SaveOutput: output.saveDir,
		Keep:       output.keep,
		SaveMax:    maxSaved,
	}
	if !in.Stdin.Empty() {
		cmd.Stdin = in.Stdin.Reader()
	}
	p := startProgress(ctx, req)
	cmd.OnOutput = p.onOutput()
	res, err := sh.Run(ctx, cmd)
	p.stop()
	if err != nil {
		return nil, err
	}
	output.savedBy(res.Saved, "stdout", "stderr")
	out := ExecCommandOutput{
		Machine:    m.ID(),
		ExitCode:   res.ExitCode,
		Signal:     res.Signal,
		TimedOut:   res.TimedOut,
		DurationMS: ms(res.Duration),
	}
	// The streams share what the rest of the text leaves of the budget.
	text := output.finish(ctx, m, budget-len(commandText(out, timeout))-40, func(err error) {
		s.log.Warn().Err(err).Str("machine", m.ID()).Msg("the whole output of a command could not be kept")
	})
	out.Stdout, out.Stderr = text["stdout"], text["stderr"]
	so, se := output.facts("stdout"), output.facts("stderr")
	out.StdoutTruncated, out.StdoutTotalBytes, out.StdoutLines, out.StdoutNotUTF8 = so.cut, so.total, so.lines, so.notUTF8
	out.StderrTruncated, out.StderrTotalBytes, out.StderrLines, out.StderrNotUTF8 = se.cut, se.total, se.lines, se.notUTF8
	out.FullOutputPath = output.dir
	body := commandText(out, timeout)
	if res.LeftRunning > leftRunningNote {
		out.ProcessesRunning = res.LeftRunning
		body += fmt.Sprintf("\nNote: %d processes started by this or earlier commands are still running in the machine; session_info lists them, reset_machine stops them.", res.LeftRunning)
	}
	if res.ExitCode != 0 {
		if n := noNetworkNote(m, out.Stdout, out.Stderr); n != "" {
			body += "\n" + n
		}
	}
	return structured(out, res.TimedOut, mcp.NewTextContent(body)), nil
}

func commandText(o ExecCommandOutput, timeout time.Duration) string {
	var b strings.Builder
	if o.TimedOut {
		fmt.Fprintf(&b, "Timed out after %s; the command was killed.\n", timeout)
	}
	fmt.Fprintf(&b, "exit code: %d", o.ExitCode)
	if o.Signal != "" {
		fmt.Fprintf(&b, " (signal %s)", o.Signal)
	}
	if o.Stdout != "" {
		b.WriteString("\nstdout:\n" + strings.TrimRight(o.Stdout, "\n"))
	}
	if o.Stderr != "" {
		b.WriteString("\nstderr:\n" + strings.TrimRight(o.Stderr, "\n"))
	}
	return b.String()
}
