package tools

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
)

// ResetMachineInput is reset_machine's arguments.
type ResetMachineInput struct {
	Machine    string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the conversation's machine."`
	KeepPython *bool  `json:"keep_python,omitempty" jsonschema:"description=Keep the Python interpreter and its variables (default true); false stops it too\\, and the next run_python starts fresh."`
	CallTimeout
	SessionArg
}

// ResetMachineOutput is reset_machine's result.
type ResetMachineOutput struct {
	SessionResult
	Machine    string `json:"machine" jsonschema:"description=The machine that was reset."`
	Stopped    int    `json:"stopped" jsonschema:"description=How many processes were stopped."`
	KeptPython bool   `json:"kept_python" jsonschema:"description=The Python interpreter and its variables were kept."`
}

func (s *Service) resetTools() []server.ServerTool {
	return []server.ServerTool{newTool[ResetMachineInput, ResetMachineOutput](s, toolSpec{
		name:    "reset_machine",
		timeout: 60 * time.Second,
		title:   "Stop a machine's processes",
		description: "Stop every process a machine's commands left running (background jobs, servers started with &, a fork bomb), " +
			"from outside the machine, so it works even when the machine is at its process limit and no command can start. " +
			"The machine's files stay; so do the Python interpreter and its variables unless keep_python is false. " +
			"session_info lists the processes still running.",
		destructive: true,
		idempotent:  true,
	}, s.resetMachine)}
}

func (s *Service) resetMachine(ctx context.Context, _ mcp.CallToolRequest, in ResetMachineInput) (*mcp.CallToolResult, error) {
	keep := in.KeepPython == nil || *in.KeepPython
	m, r, err := machineAs[backend.Resetter](ctx, s, in.Machine, backend.Reset)
	if err != nil {
		return nil, err
	}
	n, err := r.Reset(ctx, keep)
	if err != nil {
		return nil, err
	}
	out := ResetMachineOutput{Machine: m.ID(), Stopped: n, KeptPython: keep}
	text := fmt.Sprintf("Stopped %d %s of machine %s; its files are kept", n, plural(n, "process", "processes"), m.ID())
	if keep {
		text += ", and so are the Python interpreter and its variables."
	} else {
		text += "; the Python interpreter was stopped too: the next run_python starts fresh."
	}
	return structured(out, false, mcp.NewTextContent(text)), nil
}

// plural is one or many, by n.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// processSummary describes a machine's processes for session_info: how
// many, and the busiest.
func processSummary(ps []backend.ProcessInfo) string {
	var others []backend.ProcessInfo
	for _, p := range ps {
		if !p.Interpreter {
			others = append(others, p)
		}
	}
	if len(others) == 0 {
		return "no processes running but the Python interpreter"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s running besides the Python interpreter (reset_machine stops them); the busiest:", len(others), plural(len(others), "process", "processes"))
	for i, p := range others {
		if i == 5 {
			break
		}
		fmt.Fprintf(&b, "\n  pid %d, %.1f s of CPU: %s", p.PID, p.CPU.Seconds(), p.Command)
	}
	return b.String()
}
