//go:build linux

package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// configuration is a set of backends the server is started with, and the
// backend that a conversation's machine must then run on.
type configuration struct {
	name    string
	backend string
	start   func(t *testing.T, root string) *harness
}

// configurations are the ones a user may have: the local engine alone, or
// with ForeverVM, FastVM, or both (through the emulators).
func configurations() []configuration {
	return []configuration{
		{"local", "local", func(t *testing.T, root string) *harness { return startIn(t, t.TempDir(), root) }},
		{"forevervm", "forevervm", func(t *testing.T, root string) *harness {
			url, token := forevervmEmulator(t)
			return startWith(t, t.TempDir(), root, clientOptions{serverArgs: []string{"--forevervm-url", url}, serverEnv: []string{"FOREVERVM_TOKEN=" + token}})
		}},
		{"fastvm", "fastvm", func(t *testing.T, root string) *harness {
			_, url, key := fastvmEmulator(t)
			return startFastVM(t, root, url, key)
		}},
		{"forevervm+fastvm", "fastvm", func(t *testing.T, root string) *harness {
			furl, token := forevervmEmulator(t)
			_, url, key := fastvmEmulator(t)
			return startWith(t, t.TempDir(), root, clientOptions{
				serverArgs: []string{"--forevervm-url", furl, "--fastvm-url", url},
				serverEnv:  []string{"FOREVERVM_TOKEN=" + token, "FASTVM_API_KEY=" + key},
			})
		}},
	}
}

// sameMachine checks that a result ran on machine (of backend): its
// structured content and the first line of its text say so.
func sameMachine(t *testing.T, step string, res *mcp.CallToolResult, machine, backend string) {
	t.Helper()
	var out struct {
		Machine string `json:"machine"`
	}
	decode(t, res, &out)
	if out.Machine != machine {
		t.Errorf("%s ran on machine %q, the conversation's machine is %q", step, out.Machine, machine)
	}
	first, _, _ := strings.Cut(text(res), "\n")
	if want := "[machine " + machine + " (" + backend + ")]"; first != want {
		t.Errorf("%s: the text starts %q, want %q", step, first, want)
	}
}

const salesCSV = "region,value\nnorth,10\nsouth,20\neast,30\n"

// TestOneMachinePerConversation: whatever the backends, a conversation's
// calls without machine all act on one machine: a file uploaded is read by
// Python, whose output a command reads, and which comes back down.
func TestOneMachinePerConversation(t *testing.T) {
	t.Parallel()
	for _, cfg := range configurations() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			h := cfg.start(t, t.TempDir())
			var up struct {
				Machine string `json:"machine"`
			}
			res := h.ok(t, "upload_file", map[string]any{"path": "data.csv", "content": salesCSV}, &up)
			machine := up.Machine
			sameMachine(t, "upload_file", res, machine, cfg.backend)
			res = h.ok(t, "run_python", map[string]any{"code": "import pandas as pd\ndf = pd.read_csv('data.csv')\nopen('out.txt', 'w').write(str(df['value'].sum()))\ndf.shape"}, nil)
			sameMachine(t, "run_python", res, machine, cfg.backend)
			if !strings.Contains(text(res), "(3, 2)") {
				t.Errorf("run_python: %s", text(res))
			}
			var cat struct {
				Stdout string `json:"stdout"`
			}
			res = h.ok(t, "exec_command", map[string]any{"command": "cat out.txt"}, &cat)
			sameMachine(t, "exec_command", res, machine, cfg.backend)
			if cat.Stdout != "60" {
				t.Errorf("exec_command cat out.txt: %q", cat.Stdout)
			}
			res = h.ok(t, "download_file", map[string]any{"path": "out.txt"}, nil)
			sameMachine(t, "download_file", res, machine, cfg.backend)
			if !strings.Contains(text(res), "\n60\n") {
				t.Errorf("download_file: %q", text(res))
			}
			var info struct {
				Machines []struct {
					ID      string `json:"id"`
					Backend string `json:"backend"`
					Default bool   `json:"default"`
				} `json:"machines"`
			}
			h.ok(t, "session_info", map[string]any{}, &info)
			if len(info.Machines) != 1 || info.Machines[0].ID != machine || !info.Machines[0].Default || info.Machines[0].Backend != cfg.backend {
				t.Errorf("session_info: %+v; want the one machine %s, default", info.Machines, machine)
			}
		})
	}
}

// TestPromptFlows: the shipped prompts, followed step by step as a model
// would, work in every configuration.
func TestPromptFlows(t *testing.T) {
	t.Parallel()
	for _, cfg := range configurations() {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			h := cfg.start(t, root)
			t.Run("analyse_data_file", func(t *testing.T) { analyseFlow(t, h, root, cfg.backend) })
			t.Run("fix_failing_script", func(t *testing.T) { fixFlow(t, h, root, cfg.backend) })
		})
	}
}

func prompt(t *testing.T, h *harness, name string, args map[string]string) string {
	t.Helper()
	res, err := h.cs.GetPrompt(context.Background(), &mcp.GetPromptParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("prompts/get %s: %v", name, err)
	}
	return res.Messages[0].Content.(*mcp.TextContent).Text
}

func analyseFlow(t *testing.T, h *harness, root, backend string) {
	if err := os.WriteFile(filepath.Join(root, "sales.csv"), []byte(salesCSV), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := prompt(t, h, "analyse_data_file", map[string]string{"local_path": "sales.csv", "question": "Which region sells most?"})
	if !strings.Contains(steps, `path="sales.csv"`) {
		t.Fatalf("the prompt: %s", steps)
	}
	var up struct {
		Machine string `json:"machine"`
	}
	h.ok(t, "upload_file", map[string]any{"local_path": "sales.csv", "path": "sales.csv"}, &up)
	res := h.ok(t, "run_python", map[string]any{"code": "import pandas as pd\ndf = pd.read_csv('sales.csv')\nprint(df.dtypes)\ndf.shape"}, nil)
	sameMachine(t, "run_python (load)", res, up.Machine, backend)
	res = h.ok(t, "run_python", map[string]any{"code": "df.loc[df['value'].idxmax(), 'region']"}, nil)
	if !strings.Contains(text(res), "'east'") {
		t.Errorf("the answer: %s", text(res))
	}
	res = h.ok(t, "run_python", map[string]any{"code": "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\ndf.plot.bar(x='region', y='value')\nplt.show()"}, nil)
	sameMachine(t, "run_python (chart)", res, up.Machine, backend)
	images := 0
	for _, c := range res.Content {
		if _, ok := c.(*mcp.ImageContent); ok {
			images++
		}
	}
	if images != 1 {
		t.Errorf("the chart came back as %d images", images)
	}
}

func fixFlow(t *testing.T, h *harness, root, backend string) {
	project := filepath.Join(root, "tool")
	os.MkdirAll(project, 0o755)
	os.WriteFile(filepath.Join(project, "main.py"), []byte("data = {'name': 'x'}\nprint(data['id'])\n"), 0o644)
	steps := prompt(t, h, "fix_failing_script", map[string]string{"local_path": "tool", "command": "python3 main.py"})
	var launched struct {
		Machine string `json:"machine"`
	}
	h.ok(t, "launch_vm", map[string]any{}, &launched)
	machine := launched.Machine
	res := h.ok(t, "upload_file", map[string]any{"local_path": "tool", "path": "tool"}, nil)
	sameMachine(t, "upload_file", res, machine, backend)
	var run struct {
		ExitCode int    `json:"exit_code"`
		Stderr   string `json:"stderr"`
		Stdout   string `json:"stdout"`
	}
	res = h.ok(t, "exec_command", map[string]any{"command": "python3 main.py", "workdir": "tool"}, &run)
	sameMachine(t, "exec_command (reproduce)", res, machine, backend)
	if run.ExitCode == 0 || !strings.Contains(run.Stderr, "KeyError: 'id'") {
		t.Fatalf("the failure was not reproduced: %+v", run)
	}
	// Step 3 keeps the original as the prompt says: a snapshot where the
	// backend has them, a copy where it does not.
	if strings.Contains(steps, "snapshot_vm") {
		res = h.ok(t, "snapshot_vm", map[string]any{}, nil)
	} else {
		if !strings.Contains(steps, "cp -a") {
			t.Fatalf("the prompt keeps no original: %s", steps)
		}
		res = h.ok(t, "exec_command", map[string]any{"command": "cp -a tool tool.orig"}, nil)
	}
	sameMachine(t, "keeping the original", res, machine, backend)
	res = h.ok(t, "download_file", map[string]any{"path": "tool/main.py"}, nil)
	sameMachine(t, "download_file", res, machine, backend)
	res = h.ok(t, "run_python", map[string]any{"code": "data = {'name': 'x'}\ndata.get('id', 'no id')"}, nil)
	sameMachine(t, "run_python (experiment)", res, machine, backend)
	h.ok(t, "upload_file", map[string]any{"path": "tool/main.py", "content": "data = {'name': 'x'}\nprint(data.get('id', 'no id'))\n"}, nil)
	h.ok(t, "exec_command", map[string]any{"command": "python3 main.py", "workdir": "tool"}, &run)
	if run.ExitCode != 0 || run.Stdout != "no id\n" {
		t.Errorf("the fixed script: %+v", run)
	}
}

// TestBadInputLeavesTheMachineAsItWas: in every configuration, a capability
// the machine's backend lacks, a path that leads outside the machine's home
// and a file larger than the machine's disk each get an error that says
// what to do, and the machine keeps the files it had.
func TestBadInputLeavesTheMachineAsItWas(t *testing.T) {
	t.Parallel()
	const disk = 16 << 20
	type config struct {
		name, backend string
		start         func(t *testing.T, root string) *harness
	}
	for _, cfg := range []config{
		{"local", "local", func(t *testing.T, root string) *harness {
			return startWith(t, t.TempDir(), root, clientOptions{serverArgs: []string{"--disk-mb", "16"}})
		}},
		{"forevervm", "forevervm", func(t *testing.T, root string) *harness {
			url, token := forevervmEmulatorWithDisk(t, disk)
			return startWith(t, t.TempDir(), root, clientOptions{serverArgs: []string{"--forevervm-url", url}, serverEnv: []string{"FOREVERVM_TOKEN=" + token}})
		}},
		{"fastvm", "fastvm", func(t *testing.T, root string) *harness {
			_, url, key := fastvmEmulator(t)
			return startFastVM(t, root, url, key)
		}},
	} {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			root := t.TempDir()
			h := cfg.start(t, root)
			var up struct {
				Machine string `json:"machine"`
			}
			h.ok(t, "upload_file", map[string]any{"path": "keep.txt", "content": "original\n"}, &up)
			unchanged := func(step string) {
				t.Helper()
				res := h.ok(t, "download_file", map[string]any{"path": "keep.txt"}, nil)
				sameMachine(t, step, res, up.Machine, cfg.backend)
				if !strings.Contains(text(res), "\noriginal\n") {
					t.Errorf("after %s, keep.txt is %q", step, text(res))
				}
			}

			h.fails(t, "upload_file", map[string]any{"path": "../../escape.txt", "content": "x"}, "outside the machine's home")
			h.fails(t, "download_file", map[string]any{"path": "work/../../keep.txt"}, "outside the machine's home")
			unchanged("a path outside the home")

			if cfg.backend == "forevervm" {
				// ForeverVM keeps no snapshots: the error names a backend
				// that does.
				res := h.fails(t, "snapshot_vm", map[string]any{"machine": up.Machine}, "forevervm")
				if !strings.Contains(text(res), "local") && !strings.Contains(text(res), "fastvm") {
					t.Errorf("the error names no backend that keeps snapshots: %s", text(res))
				}
				unchanged("snapshot_vm")
			}

			if cfg.backend != "fastvm" { // a FastVM VM's disk is gigabytes
				big := filepath.Join(root, "big.bin")
				if err := os.WriteFile(big, bytes.Repeat([]byte("0123456789abcdef"), 2*disk/16), 0o644); err != nil {
					t.Fatal(err)
				}
				h.ok(t, "upload_file", map[string]any{"path": "data.bin", "content": "old data\n"}, nil)
				res := h.call(t, "upload_file", map[string]any{"local_path": "big.bin", "path": "data.bin"})
				if !res.IsError || !strings.Contains(text(res), "disk") {
					t.Fatalf("an upload of twice the machine's disk: %s", text(res))
				}
				res = h.ok(t, "download_file", map[string]any{"path": "data.bin"}, nil)
				if !strings.Contains(text(res), "\nold data\n") {
					t.Errorf("after a failed upload, data.bin is %q", text(res))
				}
				unchanged("an upload larger than the disk")
				// And the machine still takes a file that fits.
				h.ok(t, "upload_file", map[string]any{"path": "small.txt", "content": "fits\n"}, nil)
			}
		})
	}
}
