package tools

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
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
	TimeoutSeconds int    `json:"timeout_seconds,omitempty" jsonschema:"description=Interrupt the code after this many seconds (default 15; leave it out for that); the interpreter state survives.,minimum=1,maximum=3600"`
	OutputArg
	SessionArg
}

// RunPythonOutput is run_python's result.
type RunPythonOutput struct {
	SessionResult
	Machine          string  `json:"machine" jsonschema:"description=The machine the code ran in."`
	Value            *string `json:"value,omitempty" jsonschema:"description=repr() of the final expression; absent for statements and None. A long one keeps its head and tail (see value_truncated)."`
	Stdout           string  `json:"stdout" jsonschema:"description=What the code printed: all of it\\, or its head and tail with a marker line where the rest was left out (see stdout_truncated)."`
	Stderr           string  `json:"stderr" jsonschema:"description=What the code wrote to stderr\\, likewise."`
	Error            string  `json:"error,omitempty" jsonschema:"description=The exception with its traceback or 'Timed out'; absent on success."`
	StdoutTruncated  bool    `json:"stdout_truncated" jsonschema:"description=stdout did not fit the result's budget (max_output_chars): only its head and tail are here; the whole of it is in full_output_path."`
	StderrTruncated  bool    `json:"stderr_truncated" jsonschema:"description=stderr did not fit the result's budget\\, likewise."`
	ValueTruncated   bool    `json:"value_truncated,omitempty" jsonschema:"description=The value did not fit the result's budget\\, likewise."`
	ErrorTruncated   bool    `json:"error_truncated,omitempty" jsonschema:"description=The error did not fit the result's budget\\, likewise."`
	StdoutTotalBytes int64   `json:"stdout_total_bytes" jsonschema:"description=How many bytes the code wrote to stdout in all."`
	StderrTotalBytes int64   `json:"stderr_total_bytes" jsonschema:"description=How many bytes the code wrote to stderr in all."`
	StdoutLines      int64   `json:"stdout_lines" jsonschema:"description=How many lines the code wrote to stdout in all."`
	StderrLines      int64   `json:"stderr_lines" jsonschema:"description=How many lines the code wrote to stderr in all."`
	StdoutNotUTF8    bool    `json:"stdout_not_utf8,omitempty" jsonschema:"description=stdout had bytes that are not UTF-8: they show as U+FFFD here; the saved file has them as written."`
	StderrNotUTF8    bool    `json:"stderr_not_utf8,omitempty" jsonschema:"description=stderr had bytes that are not UTF-8\\, likewise."`
	FullOutputPath   string  `json:"full_output_path,omitempty" jsonschema:"description=When output was cut or figures left out: the directory in the machine that holds the whole of it (files stdout\\, stderr\\, value\\, error\\, figure-N.png)\\, for download_file (offset\\, length) or a command. Older calls' saved output is deleted as newer is saved."`
	Images           int     `json:"images" jsonschema:"description=How many matplotlib figures are returned as image content."`
	ImagesLeftOut    int     `json:"images_left_out,omitempty" jsonschema:"description=Figures not returned (past the most a result carries\\, or too large): saved as PNG files in full_output_path."`
	StateReset       string  `json:"state_reset,omitempty" jsonschema:"description=Set when the code ran in a fresh interpreter that lost earlier state\\, with the reason."`
	StateRestored    string  `json:"state_restored,omitempty" jsonschema:"description=Set when the code ran in a fresh interpreter into which the variables of the previous one (saved when the machine stopped) were restored first: which\\, and those that could not be."`
	RuntimeMS        int64   `json:"runtime_ms" jsonschema:"description=How long the code ran\\, in milliseconds."`
}

// A result carries at most maxImages figures, each at most maxImageBytes
// of PNG; the others are saved in the machine.
const (
	maxImages     = 8
	maxImageBytes = 1 << 20
)

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
	budget, err := s.outputBudget(in.MaxOutputChars)
	if err != nil {
		return nil, err
	}
	m, py, err := machineAs[backend.PythonRunner](ctx, s, in.Machine, backend.Python)
	if err != nil {
		return nil, err
	}
	output := s.newCallOutput(budget, "stdout", "stderr", "value", "error")
	defer output.close()
	p := startProgress(ctx, req)
	res, err := py.RunPython(ctx, in.Code, backend.PythonOptions{
		Timeout:  time.Duration(in.TimeoutSeconds) * time.Second,
		OnOutput: p.onOutput(),
		Stdout:   output.stream("stdout"),
		Stderr:   output.stream("stderr"),
	})
	p.stop()
	if err != nil {
		return nil, err
	}
	if res.Value != nil {
		output.stream("value").Write([]byte(*res.Value))
	}
	if res.TimedOut && res.Error == "Timed out" {
		timeout := 15 * time.Second
		if in.TimeoutSeconds > 0 {
			timeout = time.Duration(in.TimeoutSeconds) * time.Second
		}
		res.Error = fmt.Sprintf("Timed out after %s; the interpreter was interrupted and your variables are kept (give a larger timeout_seconds for longer work)", timeout)
	}
	output.stream("error").Write([]byte(res.Error))
	out := RunPythonOutput{
		Machine:       m.ID(),
		StateReset:    res.StateReset,
		StateRestored: res.StateRestored,
		RuntimeMS:     ms(res.Runtime),
	}
	logErr := func(err error) {
		s.log.Warn().Err(err).Str("machine", m.ID()).Msg("the whole output of Python code could not be kept")
	}
	text := output.finish(ctx, m, budget-len(pythonText(out))-60, logErr)
	out.Stdout, out.Stderr, out.Error = text["stdout"], text["stderr"], text["error"]
	if res.Value != nil {
		v := text["value"]
		out.Value = &v
	}
	so, se := output.facts("stdout"), output.facts("stderr")
	out.StdoutTruncated, out.StdoutTotalBytes, out.StdoutLines, out.StdoutNotUTF8 = so.cut, so.total, so.lines, so.notUTF8
	out.StderrTruncated, out.StderrTotalBytes, out.StderrLines, out.StderrNotUTF8 = se.cut, se.total, se.lines, se.notUTF8
	out.ValueTruncated, out.ErrorTruncated = output.facts("value").cut, output.facts("error").cut
	out.FullOutputPath = output.dir

	var images []mcp.Content
	var leftOut [][]byte
	for _, img := range res.Images {
		if len(images) < maxImages && len(img) <= maxImageBytes {
			images = append(images, mcp.NewImageContent(base64.StdEncoding.EncodeToString(img), "image/png"))
		} else {
			leftOut = append(leftOut, img)
		}
	}
	out.Images, out.ImagesLeftOut = len(images), len(leftOut)
	note := ""
	if len(leftOut) > 0 {
		dir := out.FullOutputPath
		if dir == "" {
			dir = newOutputDir()
		}
		saved := 0
		for i, img := range leftOut {
			if _, err := saveOutput(ctx, m, dir, fmt.Sprintf("figure-%d.png", i+1), bytes.NewReader(img)); err != nil {
				logErr(err)
				continue
			}
			saved++
		}
		if saved > 0 {
			out.FullOutputPath = dir
			if output.dir == "" {
				pruneOutputs(ctx, m)
			}
		}
		note = fmt.Sprintf("%d figure(s) not returned (a result carries at most %d, each at most %d KiB of PNG); %d saved in the machine at %s/figure-N.png",
			len(leftOut), maxImages, maxImageBytes>>10, saved, dir)
	}
	t := pythonText(out)
	if note != "" {
		t += "\n" + note
	}
	if out.Error != "" {
		if n := noNetworkNote(m, out.Error, out.Stderr); n != "" {
			t += "\n" + n
		}
	}
	content := append([]mcp.Content{mcp.NewTextContent(t)}, images...)
	return structured(out, res.Error != "", content...), nil
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
	if o.StateRestored != "" {
		add("Note: the machine had stopped; ", o.StateRestored)
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
