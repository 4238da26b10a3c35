//go:build linux

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// budgetConfigurations are the backends a result's budget must hold on:
// the local engine and both emulators.
func budgetConfigurations() []configuration {
	var out []configuration
	for _, c := range configurations() {
		if c.name != "forevervm+fastvm" {
			out = append(out, c)
		}
	}
	return out
}

// responseSize is the size of the JSON-RPC message that carried res.
func responseSize(t *testing.T, res *mcp.CallToolResult) int {
	t.Helper()
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "result": res})
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

// sha256In is the sha256 of a file in the conversation's machine.
func sha256In(t *testing.T, h *harness, path string) string {
	t.Helper()
	var out struct {
		Stdout string `json:"stdout"`
	}
	h.ok(t, "exec_command", map[string]any{"argv": []string{"sha256sum", path}}, &out)
	sum, _, _ := strings.Cut(out.Stdout, " ")
	return sum
}

func sha256Hex(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

const budget = 30000

// TestOutputBudget: a command's or code's output larger than the budget
// comes back as head and tail with one marker naming the saved file, the
// whole response within twice the budget; the saved file holds every byte.
func TestOutputBudget(t *testing.T) {
	t.Parallel()
	for _, cfg := range budgetConfigurations() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			h := cfg.start(t, t.TempDir())

			// A million lines from a command.
			var out struct {
				Stdout           string `json:"stdout"`
				StdoutTruncated  bool   `json:"stdout_truncated"`
				StdoutTotalBytes int64  `json:"stdout_total_bytes"`
				StdoutLines      int64  `json:"stdout_lines"`
				FullOutputPath   string `json:"full_output_path"`
			}
			res := h.ok(t, "exec_command", map[string]any{"command": "seq 1 1000000", "timeout_seconds": 300}, &out)
			var whole strings.Builder
			for i := 1; i <= 1000000; i++ {
				whole.WriteString(strconv.Itoa(i) + "\n")
			}
			if n := responseSize(t, res); n > 2*budget+4096 {
				t.Errorf("seq 1 1000000: a response of %d bytes; want at most %d", n, 2*budget+4096)
			}
			if !strings.HasPrefix(out.Stdout, "1\n2\n3\n") || !strings.HasSuffix(out.Stdout, "999999\n1000000\n") {
				t.Errorf("seq 1 1000000: head or tail missing: %.40q … %.40q", out.Stdout, out.Stdout[max(len(out.Stdout)-40, 0):])
			}
			if !out.StdoutTruncated || out.StdoutTotalBytes != int64(whole.Len()) || out.StdoutLines != 1000000 || out.FullOutputPath == "" {
				t.Errorf("seq 1 1000000: truncated %v, %d bytes, %d lines, saved in %q", out.StdoutTruncated, out.StdoutTotalBytes, out.StdoutLines, out.FullOutputPath)
			}
			saved := out.FullOutputPath + "/stdout"
			if strings.Count(text(res), "left out here") != 1 || !strings.Contains(text(res), saved) {
				t.Errorf("seq 1 1000000: want one marker naming %s: %s", saved, text(res))
			}
			if got := sha256In(t, h, saved); got != sha256Hex(whole.String()) {
				t.Errorf("the saved stdout's sha256 is %s; want %s", got, sha256Hex(whole.String()))
			}

			// One 10 MB line from Python: nothing lost, no empty line added.
			var py struct {
				Stdout           string `json:"stdout"`
				StdoutTotalBytes int64  `json:"stdout_total_bytes"`
				StdoutTruncated  bool   `json:"stdout_truncated"`
				FullOutputPath   string `json:"full_output_path"`
			}
			res = h.ok(t, "run_python", map[string]any{"code": "print('x'*10_000_000); print('tail')", "timeout_seconds": 120}, &py)
			want := strings.Repeat("x", 10_000_000) + "\ntail\n"
			if n := responseSize(t, res); n > 2*budget+4096 {
				t.Errorf("a 10 MB line: a response of %d bytes", n)
			}
			if !py.StdoutTruncated || py.StdoutTotalBytes != int64(len(want)) || !strings.HasSuffix(py.Stdout, "xxx\ntail\n") || py.FullOutputPath == "" {
				t.Errorf("a 10 MB line: truncated %v, %d bytes (want %d), ends %q, saved in %q", py.StdoutTruncated, py.StdoutTotalBytes, len(want), py.Stdout[max(len(py.Stdout)-20, 0):], py.FullOutputPath)
			} else if got := sha256In(t, h, py.FullOutputPath+"/stdout"); got != sha256Hex(want) {
				t.Errorf("the saved stdout of a 10 MB line has sha256 %s; want %s", got, sha256Hex(want))
			}

			// A 3 MB value.
			var val struct {
				Value          *string `json:"value"`
				ValueTruncated bool    `json:"value_truncated"`
				FullOutputPath string  `json:"full_output_path"`
			}
			res = h.ok(t, "run_python", map[string]any{"code": "'z'*3_000_000"}, &val)
			if n := responseSize(t, res); n > 2*budget+4096 {
				t.Errorf("a 3 MB value: a response of %d bytes", n)
			}
			if val.Value == nil || !val.ValueTruncated || !strings.HasPrefix(*val.Value, "'zzz") || !strings.HasSuffix(*val.Value, "zzz'") || !strings.Contains(*val.Value, "left out here") {
				t.Errorf("a 3 MB value: truncated %v, %.60q", val.ValueTruncated, fmt.Sprint(val.Value))
			} else if got := sha256In(t, h, val.FullOutputPath+"/value"); got != sha256Hex("'"+strings.Repeat("z", 3_000_000)+"'") {
				t.Errorf("the saved value has sha256 %s", got)
			}

			// Small output is whole, and says nothing of a cut.
			var small struct {
				Stdout          string `json:"stdout"`
				StdoutTruncated bool   `json:"stdout_truncated"`
				FullOutputPath  string `json:"full_output_path"`
			}
			res = h.ok(t, "exec_command", map[string]any{"command": "echo hello"}, &small)
			if small.Stdout != "hello\n" || small.StdoutTruncated || small.FullOutputPath != "" || strings.Contains(text(res), "left out") {
				t.Errorf("echo hello: %+v", small)
			}
			// A budget of the call's own.
			res = h.ok(t, "exec_command", map[string]any{"command": "seq 1 100000", "max_output_chars": 2000}, &out)
			if n := len(text(res)); n > 2000+200 || !out.StdoutTruncated {
				t.Errorf("max_output_chars 2000: %d characters of text", n)
			}
			for _, bad := range []any{-1, 0, 10_000_000} {
				h.fails(t, "exec_command", map[string]any{"command": "true", "max_output_chars": bad}, "max_output_chars")
			}
		})
	}
}

// TestTypeScriptClientSeesBudgetedSizes: the official TypeScript client
// (Node, from npm) receives results within the budget: the sizes seen from
// outside Go.
func TestTypeScriptClientSeesBudgetedSizes(t *testing.T) {
	t.Parallel()
	if os.Getenv("VMCP_SKIP_TS_CLIENT") != "" {
		t.Skip("VMCP_SKIP_TS_CLIENT is set")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Fatal("this test installs the TypeScript MCP SDK with npm, which is missing: apt-get install -y npm (or set VMCP_SKIP_TS_CLIENT=1)")
	}
	script, err := filepath.Abs("../scripts/ts-client")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, serverBin, t.TempDir())
	cmd.Dir = t.TempDir()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/ts-client: %v\n%s", err, stderr.String())
	}
	var got map[string]struct {
		Bytes      int            `json:"bytes"`
		TextChars  int            `json:"textChars"`
		Markers    int            `json:"markers"`
		IsError    bool           `json:"isError"`
		Structured map[string]any `json:"structured"`
	}
	if err := json.Unmarshal(stdout, &got); err != nil {
		t.Fatalf("the client's report %q: %v", stdout, err)
	}
	for _, name := range []string{"seq", "value", "line"} {
		r := got[name]
		t.Logf("%s: %d bytes, %d characters of text, %d markers", name, r.Bytes, r.TextChars, r.Markers)
		if r.Bytes == 0 || r.Bytes > 2*budget+4096 || r.TextChars > budget || r.Markers != 1 || r.IsError {
			t.Errorf("%s as the TypeScript client got it: %d bytes (want at most %d), %d characters of text, %d markers, error %v",
				name, r.Bytes, 2*budget+4096, r.TextChars, r.Markers, r.IsError)
		}
	}
	if got["seq"].Structured["stdout_total_bytes"] != float64(6888896) {
		t.Errorf("seq: stdout_total_bytes %v; want 6888896", got["seq"].Structured["stdout_total_bytes"])
	}
}
