//go:build linux

package e2e

import (
	"os"
	"strings"
	"testing"

	"github.com/vmcp-dev/vmcp/tools"
)

// withoutEngine reports whether serverBin was built without the local
// engine (VMCP_E2E_SERVER_TAGS=vmcp_nolocal), as it is for macOS and
// Windows.
func withoutEngine() bool {
	return strings.Contains(os.Getenv("VMCP_E2E_SERVER_TAGS"), "vmcp_nolocal")
}

// TestServerWithoutLocalEngine is the server as built for macOS and
// Windows: the local backend answers that it needs Linux and what to
// configure instead, and with a ForeverVM token the same calls run there.
func TestServerWithoutLocalEngine(t *testing.T) {
	if !withoutEngine() {
		t.Skip("the server has its local engine (make cross runs this with VMCP_E2E_SERVER_TAGS=vmcp_nolocal)")
	}
	h := start(t)
	res, err := h.callErr("run_python", map[string]any{"code": "6*7"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"not available on this operating system", "FOREVERVM_TOKEN", "FASTVM_API_KEY"} {
		if !res.IsError || !strings.Contains(text(res), want) {
			t.Fatalf("run_python without a cloud backend: %q does not say %q", text(res), want)
		}
	}

	url, token := forevervmEmulator(t)
	h = startWith(t, t.TempDir(), t.TempDir(), clientOptions{serverArgs: []string{"--forevervm-url", url}, serverEnv: []string{"FOREVERVM_TOKEN=" + token}})
	var out tools.RunPythonOutput
	h.ok(t, "run_python", map[string]any{"code": "6*7"}, &out)
	if out.Value == nil || *out.Value != "42" || !forevervmName.MatchString(out.Machine) {
		t.Fatalf("run_python with a ForeverVM token: %+v", out)
	}
	var list tools.ListMachinesOutput
	h.ok(t, "list_machines", nil, &list)

	// Streamable HTTP and legacy SSE.
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-portable"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--forevervm-url", url}, "FOREVERVM_TOKEN="+token)
	for _, sse := range []bool{false, true} {
		s.connect(t, sse, "vmcp_alice-portable").ok(t, "run_python", map[string]any{"code": "6*7"}, &out)
		if out.Value == nil || *out.Value != "42" || !forevervmName.MatchString(out.Machine) {
			t.Fatalf("run_python over http (sse=%v): %+v", sse, out)
		}
	}
}
