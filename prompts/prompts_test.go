package prompts

import (
	"context"
	"strings"
	"testing"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

func get(t *testing.T, name string, args map[string]string) (*mcp.GetPromptResult, error) {
	t.Helper()
	for _, p := range All(Options{}) {
		if p.Prompt.Name == name {
			var req mcp.GetPromptRequest
			req.Params.Name = name
			req.Params.Arguments = args
			return p.Handler(context.Background(), req)
		}
	}
	t.Fatalf("no prompt %s", name)
	return nil, nil
}

func text(t *testing.T, res *mcp.GetPromptResult) string {
	t.Helper()
	if len(res.Messages) != 1 || res.Messages[0].Role != mcp.RoleUser {
		t.Fatalf("messages: %+v", res.Messages)
	}
	tc, ok := res.Messages[0].Content.(mcp.TextContent)
	if !ok {
		t.Fatalf("content %T", res.Messages[0].Content)
	}
	return tc.Text
}

func TestAnalyseDataFile(t *testing.T) {
	res, err := get(t, "analyse_data_file", map[string]string{"local_path": "/data/sales.csv", "question": "Which region grew fastest?"})
	if err != nil {
		t.Fatal(err)
	}
	s := text(t, res)
	for _, want := range []string{"upload_file", `local_path="/data/sales.csv"`, `path="sales.csv"`, "run_python", "Which region grew fastest?", "matplotlib"} {
		if !strings.Contains(s, want) {
			t.Errorf("prompt lacks %q:\n%s", want, s)
		}
	}
	res, err = get(t, "analyse_data_file", map[string]string{"local_path": "x.parquet"})
	if err != nil || !strings.Contains(text(t, res), "overview") {
		t.Errorf("default question: %v", err)
	}
	if _, err := get(t, "analyse_data_file", nil); err == nil || !strings.Contains(err.Error(), "local_path") {
		t.Errorf("missing local_path: %v", err)
	}
}

func TestFixFailingScript(t *testing.T) {
	res, err := get(t, "fix_failing_script", map[string]string{"local_path": "/src/tool/", "command": "python3 tool/main.py --fast", "error": "KeyError: 'id'"})
	if err != nil {
		t.Fatal(err)
	}
	s := text(t, res)
	for _, want := range []string{"launch_vm", "upload_file", `path="tool"`, "exec_command", "snapshot_vm", "python3 tool/main.py --fast", "KeyError: 'id'"} {
		if !strings.Contains(s, want) {
			t.Errorf("prompt lacks %q:\n%s", want, s)
		}
	}
	// On a backend without snapshots, the flow keeps a copy instead.
	for _, p := range All(Options{Snapshots: func(context.Context) bool { return false }}) {
		if p.Prompt.Name == "fix_failing_script" {
			var req mcp.GetPromptRequest
			req.Params.Arguments = map[string]string{"local_path": "/src/it's.py"}
			res, err := p.Handler(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			if s := text(t, res); strings.Contains(s, "snapshot_vm") || !strings.Contains(s, `cp -a 'it'\''s.py' 'it'\''s.py'.orig`) {
				t.Errorf("without snapshots:\n%s", s)
			}
		}
	}
	res, err = get(t, "fix_failing_script", map[string]string{"local_path": "/src/job.py"})
	if err != nil || !strings.Contains(text(t, res), "Command: python3 job.py") {
		t.Errorf("default command: %v", err)
	}
	if _, err := get(t, "fix_failing_script", map[string]string{"local_path": "  "}); err == nil {
		t.Error("blank local_path accepted")
	}
}

func TestRegister(t *testing.T) {
	srv := server.NewMCPServer("t", "1")
	Register(srv, Options{})
	got := srv.ListPrompts()
	if len(got) != 2 || got["analyse_data_file"] == nil || got["fix_failing_script"] == nil {
		t.Fatalf("registered prompts: %v", got)
	}
	for name, p := range got {
		if p.Prompt.Description == "" || len(p.Prompt.Arguments) == 0 || !p.Prompt.Arguments[0].Required {
			t.Errorf("%s: %+v", name, p.Prompt)
		}
	}
}
