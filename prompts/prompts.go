// Package prompts holds vmcp's MCP prompts: ready-made instructions that
// put the sandbox tools to work on common jobs.
package prompts

import (
	"context"
	"fmt"
	"strings"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// Options tell the prompts what the server's machines can do.
type Options struct {
	// Snapshots reports whether the machine a prompt's flow launches can
	// take snapshots (nil: it can); the flows keep the original files
	// another way when it cannot.
	Snapshots func(ctx context.Context) bool
}

// All are every prompt with its handler.
func All(opts Options) []server.ServerPrompt {
	return []server.ServerPrompt{
		{
			Prompt: mcp.NewPrompt("analyse_data_file",
				mcp.WithPromptTitle("Analyse a data file"),
				mcp.WithPromptDescription("Upload a data file (CSV, JSON, Parquet, Excel...) into a sandbox and explore it with pandas and matplotlib."),
				mcp.WithArgument("local_path", mcp.RequiredArgument(), mcp.ArgumentDescription("The data file on the host (inside the server's allowed roots).")),
				mcp.WithArgument("question", mcp.ArgumentDescription("What you want to learn from the data; default: a general overview.")),
			),
			Handler: analyseDataFile,
		},
		{
			Prompt: mcp.NewPrompt("fix_failing_script",
				mcp.WithPromptTitle("Reproduce and fix a failing script"),
				mcp.WithPromptDescription("Copy a failing script into a sandbox, reproduce the failure, find the cause and propose a verified fix."),
				mcp.WithArgument("local_path", mcp.RequiredArgument(), mcp.ArgumentDescription("The script (or its project directory) on the host, inside the server's allowed roots.")),
				mcp.WithArgument("command", mcp.ArgumentDescription("The command that fails, e.g. 'python3 main.py'; default: run the script with python3.")),
				mcp.WithArgument("error", mcp.ArgumentDescription("The error message or symptom seen, if known.")),
			),
			Handler: func(ctx context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
				return fixFailingScript(req, opts.Snapshots == nil || opts.Snapshots(ctx))
			},
		},
	}
}

// Register adds every prompt to srv.
func Register(srv *server.MCPServer, opts Options) { srv.AddPrompts(All(opts)...) }

func required(req mcp.GetPromptRequest, name string) (string, error) {
	v := strings.TrimSpace(req.Params.Arguments[name])
	if v == "" {
		return "", fmt.Errorf("prompt %s needs the argument %q", req.Params.Name, name)
	}
	return v, nil
}

// baseName is the last element of a host path, whatever its separators.
func baseName(p string) string {
	p = strings.TrimRight(p, `/\`)
	if i := strings.LastIndexAny(p, `/\`); i >= 0 {
		return p[i+1:]
	}
	return p
}

func analyseDataFile(_ context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	path, err := required(req, "local_path")
	if err != nil {
		return nil, err
	}
	question := strings.TrimSpace(req.Params.Arguments["question"])
	if question == "" {
		question = "Give an overview: what the data holds, its quality problems, and its most notable patterns."
	}
	name := baseName(path)
	text := fmt.Sprintf(`Analyse the data file %[1]s in a vmcp sandbox.

1. Call upload_file with local_path=%[1]q and path=%[2]q.
2. With run_python, load it with pandas (pick the reader from the extension or the first bytes) and show its shape, columns, dtypes, head and missing values.
3. Answer this question with further run_python calls, keeping the DataFrame in a global between calls: %[3]s
4. Draw one or two matplotlib charts that support the answer (they come back as images).
5. Finish with a short summary of findings and state any caveats about the data.

If a step fails, read the traceback in the tool result and fix the code rather than guessing.`, path, name, question)
	return mcp.NewGetPromptResult("Analyse "+name,
		[]mcp.PromptMessage{mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent(text))}), nil
}

func fixFailingScript(req mcp.GetPromptRequest, snapshots bool) (*mcp.GetPromptResult, error) {
	path, err := required(req, "local_path")
	if err != nil {
		return nil, err
	}
	name := baseName(path)
	command := strings.TrimSpace(req.Params.Arguments["command"])
	if command == "" {
		command = "python3 " + name
	}
	symptom := strings.TrimSpace(req.Params.Arguments["error"])
	if symptom == "" {
		symptom = "(not given: find it by running the command)"
	}
	keep := "Snapshot the machine with snapshot_vm before you change anything, so that you can start over with launch_vm snapshot_id."
	if !snapshots {
		keep = fmt.Sprintf("Keep a copy of the original before you change anything (exec_command: cp -a %[1]s %[1]s.orig), so that you can start over.", shellQuote(name))
	}
	text := fmt.Sprintf(`Reproduce and fix a failing script in a vmcp sandbox.

Script: %[1]s
Command: %[2]s
Reported error: %[3]s

1. Call launch_vm to get a clean machine, then upload_file with local_path=%[1]q and path=%[4]q.
2. Run the command with exec_command (workdir: the uploaded directory if it is one) and confirm the failure; quote the exact error.
3. %[5]s
4. Find the root cause: read the code (download_file or exec_command cat), add prints or run small experiments with run_python.
5. Fix it in the sandbox with upload_file and rerun the command until it passes; check that nothing else broke.
6. Report the cause, the minimal diff, and the output of the passing run. Do not change files on the host.`, path, command, symptom, name, keep)
	return mcp.NewGetPromptResult("Fix "+name,
		[]mcp.PromptMessage{mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent(text))}), nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
