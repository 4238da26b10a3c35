package tools

import (
	"context"
	"encoding/base64"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
)

// RunPythonInput is run_python's arguments.
type RunPythonInput struct {
	Code           string `json:"code" jsonschema:"description=Python code to run. Globals persist between calls; the value of a final expression is returned."`
	Machine        string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	TimeoutSeconds int    `json:"timeout_seconds,omitempty" jsonschema:"description=Interrupt the code after this many seconds (default 15); the interpreter state survives.,minimum=0,maximum=3600"`
	SessionArg
}

// RunPythonOutput is run_python's result.
type RunPythonOutput struct {
	SessionResult
	Machine    string  `json:"machine" jsonschema:"description=The machine the code ran in."`
	Value      *string `json:"value,omitempty" jsonschema:"description=repr() of the final expression; absent for statements and None."`
	Stdout     string  `json:"stdout" jsonschema:"description=What the code printed."`
	Stderr     string  `json:"stderr" jsonschema:"description=What the code wrote to stderr."`
	Error      string  `json:"error,omitempty" jsonschema:"description=The exception with its traceback or 'Timed out'; absent on success."`
	Images     int     `json:"images" jsonschema:"description=How many matplotlib figures are returned as image content."`
	StateReset string  `json:"state_reset,omitempty" jsonschema:"description=Set when the code ran in a fresh interpreter that lost earlier state\\, with the reason."`
	RuntimeMS  int64   `json:"runtime_ms" jsonschema:"description=How long the code ran\\, in milliseconds."`
}

func (in RunPythonInput) timeout() int { return in.TimeoutSeconds }

func (s *Service) pythonTools() []server.ServerTool {
	return []server.ServerTool{newTool[RunPythonInput, RunPythonOutput](s, toolSpec{
		name:    "run_python",
		timeout: 15 * time.Second,
		title:   "Run Python",
		description: "Run Python code in a machine's persistent interpreter (like a notebook cell: globals survive between calls). " +
			"Returns the repr of the final expression as value, stdout and stderr, and each open matplotlib figure as a PNG image. " +
			"A Python exception is a tool error with the traceback. With a progress token, output lines are streamed as progress notifications.",
		destructive: true,
	}, s.runPython)}
}

func (s *Service) runPython(ctx context.Context, req mcp.CallToolRequest, in RunPythonInput) (*mcp.CallToolResult, error) {
	m, py, err := machineAs[backend.PythonRunner](ctx, s, in.Machine, backend.Python)
	if err != nil {
		return nil, err
	}
	p := startProgress(ctx, req)
	res, err := py.RunPython(ctx, in.Code, backend.PythonOptions{
		Timeout:  time.Duration(in.TimeoutSeconds) * time.Second,
		OnOutput: p.onOutput(),
	})
	p.stop()
	if err != nil {
		return nil, err
	}
	out := RunPythonOutput{
		Machine:    m.ID(),
		Value:      res.Value,
		Stdout:     res.Stdout,
		Stderr:     res.Stderr,
		Error:      res.Error,
		Images:     len(res.Images),
		StateReset: res.StateReset,
		RuntimeMS:  ms(res.Runtime),
	}
	content := []mcp.Content{mcp.NewTextContent(pythonText(out))}
	for _, img := range res.Images {
		content = append(content, mcp.NewImageContent(base64.StdEncoding.EncodeToString(img), "image/png"))
	}
	return structured(out, out.Error != "", content...), nil
}

// pythonText is the text content of a run_python result.
func pythonText(o RunPythonOutput) string {
	var b strings.Builder
	add := func(label, s string) {
		if s == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		b.WriteString(label)
		b.WriteString(s)
	}
	if o.StateReset != "" {
		add("Note: the interpreter state was reset: ", o.StateReset)
	}
	add("stdout:\n", strings.TrimRight(o.Stdout, "\n"))
	add("stderr:\n", strings.TrimRight(o.Stderr, "\n"))
	if o.Value != nil {
		add("value: ", *o.Value)
	}
	add("error:\n", o.Error)
	if b.Len() == 0 {
		b.WriteString("(no output)")
	}
	return b.String()
}
