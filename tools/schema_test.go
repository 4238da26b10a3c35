package tools

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mark3labs/mcp-go/mcp"
)

var update = flag.Bool("update", false, "rewrite the tool definition snapshots in testdata")

// TestToolDefinitionSnapshots fails when a tool's definition (description,
// schemas, annotations) changes without its snapshot in testdata; run
// go test ./tools -update to accept a change.
func TestToolDefinitionSnapshots(t *testing.T) {
	defs := Definitions()
	seen := map[string]bool{}
	for _, tool := range defs {
		got, err := json.MarshalIndent(tool, "", "  ")
		if err != nil {
			t.Fatalf("%s: %v", tool.Name, err)
		}
		got = append(got, '\n')
		path := filepath.Join("testdata", tool.Name+".json")
		seen[filepath.Base(path)] = true
		if *update {
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%s: no snapshot (%v); run go test ./tools -update", tool.Name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: definition changed without its snapshot %s; review and run go test ./tools -update\n got: %s", tool.Name, path, got)
		}
	}
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") && !seen[e.Name()] {
			t.Errorf("testdata/%s belongs to no tool; delete it", e.Name())
		}
	}
}

// TestToolDefinitions checks what every tool must have.
func TestToolDefinitions(t *testing.T) {
	want := []string{"run_python", "exec_command", "upload_file", "download_file", "launch_vm", "snapshot_vm", "list_machines", "delete_vm", "delete_snapshot", "reset_machine", "build_image", "set_firewall", "session_info"}
	defs := Definitions()
	if len(defs) != len(want) {
		t.Fatalf("%d tools, want %d", len(defs), len(want))
	}
	for i, tool := range defs {
		if tool.Name != want[i] {
			t.Errorf("tool %d is %s, want %s", i, tool.Name, want[i])
		}
		if tool.Description == "" {
			t.Errorf("%s: no description", tool.Name)
		}
		a := tool.Annotations
		if a.ReadOnlyHint == nil || a.DestructiveHint == nil || a.IdempotentHint == nil || a.OpenWorldHint == nil {
			t.Errorf("%s: missing annotations: %+v", tool.Name, a)
		}
		if *a.ReadOnlyHint && *a.DestructiveHint {
			t.Errorf("%s: read-only and destructive", tool.Name)
		}
		for _, raw := range [][]byte{tool.RawInputSchema, tool.RawOutputSchema} {
			var sc struct {
				Type       string                    `json:"type"`
				Properties map[string]map[string]any `json:"properties"`
				Required   []string                  `json:"required"`
			}
			if err := json.Unmarshal(raw, &sc); err != nil {
				t.Fatalf("%s: %v", tool.Name, err)
			}
			if sc.Type != "object" {
				t.Errorf("%s: schema type %q", tool.Name, sc.Type)
			}
			for _, r := range sc.Required {
				if _, ok := sc.Properties[r]; !ok {
					t.Errorf("%s: required %s is not a property", tool.Name, r)
				}
			}
		}
		// Every tool takes a session and names it in its result; every tool
		// about one machine names it in and out.
		machineless := tool.Name == "list_machines" || tool.Name == "session_info" || tool.Name == "build_image" || tool.Name == "delete_snapshot"
		var in, out struct {
			Properties map[string]map[string]any `json:"properties"`
		}
		json.Unmarshal(tool.RawInputSchema, &in)
		json.Unmarshal(tool.RawOutputSchema, &out)
		if in.Properties["session"] == nil || out.Properties["session"] == nil {
			t.Errorf("%s: no session argument or no session in the result", tool.Name)
		}
		if !machineless && tool.Name != "launch_vm" && in.Properties["machine"] == nil {
			t.Errorf("%s: no machine argument", tool.Name)
		}
		if !machineless && out.Properties["machine"] == nil {
			t.Errorf("%s: no machine in the result", tool.Name)
		}
		for name, p := range in.Properties {
			if p["description"] == nil {
				t.Errorf("%s: argument %s has no description", tool.Name, name)
			}
			if d, _ := p["description"].(string); d != "" && !strings.HasSuffix(d, ".") {
				t.Errorf("%s: argument %s description looks cut: %q", tool.Name, name, d)
			}
		}
	}
}

// TestArgumentsAreCheckedAgainstTheSchema: every tool's schema compiles, and
// arguments that break it are refused with every violation named, whether
// they arrive raw (vmcp's stdio fast path, mcp-go's decoding) or decoded.
func TestArgumentsAreCheckedAgainstTheSchema(t *testing.T) {
	for _, tool := range Definitions() {
		compileSchema(tool.Name, tool.RawInputSchema) // panics if it does not compile
	}
	schema := compileSchema("run_python", schemaFor[RunPythonInput]())
	for _, tc := range []struct {
		args string
		want []string // in the error; none: valid
	}{
		{`{"code":"1+1"}`, nil},
		{`{"code":"1","timeout_seconds":3600}`, nil},
		{``, []string{"the arguments: missing property 'code'"}},
		{`null`, []string{"missing property 'code'"}},
		{` null `, []string{"missing property 'code'"}},
		{`{"code":5}`, []string{"code: got number, want string"}},
		{`{"code":"1","timeout_seconds":3601}`, []string{"timeout_seconds: maximum"}},
		{`{"code":"1","timeout_seconds":"soon","bogus":true}`, []string{"timeout_seconds: got string, want integer", "bogus", "tools/list"}},
		{`[1]`, []string{"got array, want object"}},
	} {
		for _, asRaw := range []bool{true, false} {
			var req mcp.CallToolRequest
			if asRaw {
				req.Params.RawArguments = json.RawMessage(tc.args)
				req.Params.Arguments = json.RawMessage(tc.args) // as vmcp's stdio transport passes them
			} else if tc.args != "" {
				var v any
				json.Unmarshal([]byte(tc.args), &v)
				req.Params.Arguments = v
			}
			err := checkArguments(schema, req)
			if len(tc.want) == 0 {
				if err != nil {
					t.Errorf("%s: %v", tc.args, err)
				}
				continue
			}
			if err == nil {
				t.Errorf("%s (raw %v): accepted", tc.args, asRaw)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s (raw %v): %q does not say %q", tc.args, asRaw, err, w)
				}
			}
		}
	}
}
