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
	TimeoutSeconds int               `json:"timeout_seconds,omitempty" jsonschema:"description=Kill the command and everything it started after this many seconds (default 60).,minimum=0,maximum=86400"`
	Stdin          Text              `json:"stdin,omitempty" jsonschema:"description=Text fed to the command's standard input."`
	Workdir        string            `json:"workdir,omitempty" jsonschema:"description=Working directory inside the machine; default its home (the workspace)."`
	Env            map[string]string `json:"env,omitempty" jsonschema:"description=Environment variables to add or override."`
	SessionArg
}

// ExecCommandOutput is exec_command's result.
type ExecCommandOutput struct {
	SessionResult
	Machine         string `json:"machine" jsonschema:"description=The machine the command ran in."`
	ExitCode        int    `json:"exit_code" jsonschema:"description=The exit status; non-zero is a normal result."`
	Signal          string `json:"signal,omitempty" jsonschema:"description=The signal that ended the command\\, if any."`
	Stdout          string `json:"stdout" jsonschema:"description=What the command wrote to standard output (the first 1 MiB)."`
	Stderr          string `json:"stderr" jsonschema:"description=What the command wrote to standard error (the first 1 MiB)."`
	StdoutTruncated bool   `json:"stdout_truncated" jsonschema:"description=stdout was longer than the 1 MiB kept."`
	StderrTruncated bool   `json:"stderr_truncated" jsonschema:"description=stderr was longer than the 1 MiB kept."`
	TimedOut        bool   `json:"timed_out" jsonschema:"description=The command was killed at its timeout."`
	DurationMS      int64  `json:"duration_ms" jsonschema:"description=How long the command ran\\, in milliseconds."`
}

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
	m, sh, err := machineAs[backend.CommandRunner](ctx, s, in.Machine, backend.Shell)
	if err != nil {
		return nil, err
	}
	timeout := defaultCommandTimeout
	if in.TimeoutSeconds > 0 {
		timeout = time.Duration(in.TimeoutSeconds) * time.Second
	}
	cmd := backend.Command{
		Argv:    in.Argv,
		Shell:   in.Command,
		Env:     in.Env,
		Workdir: in.Workdir,
		Timeout: timeout,
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
	out := ExecCommandOutput{
		Machine:         m.ID(),
		ExitCode:        res.ExitCode,
		Signal:          res.Signal,
		Stdout:          res.Stdout,
		Stderr:          res.Stderr,
		StdoutTruncated: res.StdoutTruncated,
		StderrTruncated: res.StderrTruncated,
		TimedOut:        res.TimedOut,
		DurationMS:      ms(res.Duration),
	}
	return structured(out, res.TimedOut, mcp.NewTextContent(commandText(out, timeout))), nil
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
		if o.StdoutTruncated {
			b.WriteString("\n[stdout truncated]")
		}
	}
	if o.Stderr != "" {
		b.WriteString("\nstderr:\n" + strings.TrimRight(o.Stderr, "\n"))
		if o.StderrTruncated {
			b.WriteString("\n[stderr truncated]")
		}
	}
	return b.String()
}
