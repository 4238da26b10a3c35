//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmcp-dev/vmcp/tools"
)

// downloadBudget is the server's default budget of a result's text.
const downloadBudget = 30000

// maxDownloadResponse is the most a download_file response may weigh.
const maxDownloadResponse = 2*downloadBudget + 4096

// rpcSize is the size of the JSON-RPC message that carried res.
func rpcSize(t *testing.T, res *mcp.CallToolResult) int {
	t.Helper()
	b, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "result": res})
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

// shaOfCommand is the sha256sum a shell command prints in the machine.
func shaOfCommand(t *testing.T, h *harness, command string) string {
	t.Helper()
	var out tools.ExecCommandOutput
	h.ok(t, "exec_command", map[string]any{"command": command}, &out)
	sum, _, _ := strings.Cut(out.Stdout, " ")
	return strings.TrimSpace(sum)
}

// readRes reads a resource; a protocol error is returned.
func readRes(h *harness, uri string) (*mcp.ResourceContents, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	res, err := h.cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri})
	if err != nil {
		return nil, err
	}
	if len(res.Contents) != 1 {
		return nil, fmt.Errorf("%d contents", len(res.Contents))
	}
	return res.Contents[0], nil
}

// metaInt is a number of a resource's _meta (-1: absent).
func metaInt(c *mcp.ResourceContents, key string) int64 {
	v, ok := c.Meta[key].(float64)
	if !ok {
		return -1
	}
	return int64(v)
}

// TestDownloadLargeBinaryAsResource: download_file of a 50 MiB binary file
// answers within the budget with a resource_link; resources/read of the
// link returns exactly the bytes of a range, and the whole file a part at a
// time; bad ranges and URIs are clear errors.
func TestDownloadLargeBinaryAsResource(t *testing.T) {
	t.Parallel()
	h := start(t)
	const size = 50 << 20
	h.ok(t, "exec_command", map[string]any{"command": "head -c 50M /dev/urandom > big.bin"}, nil)
	whole := shaOfCommand(t, h, "sha256sum big.bin")

	var down tools.DownloadFileOutput
	res := h.ok(t, "download_file", map[string]any{"path": "big.bin"}, &down)
	if n := rpcSize(t, res); n > maxDownloadResponse {
		t.Errorf("the download_file response has %d bytes, over %d", n, maxDownloadResponse)
	}
	if down.Encoding != "resource_link" || down.Bytes != size || down.SHA256 != whole || down.Length != 0 || down.NextOffset != 0 || down.ResourceURI == "" {
		t.Fatalf("download_file of 50 MiB: %+v", down)
	}
	var link *mcp.ResourceLink
	for _, c := range res.Content {
		if l, ok := c.(*mcp.ResourceLink); ok {
			link = l
		}
		if _, ok := c.(*mcp.EmbeddedResource); ok {
			t.Error("the file is embedded too")
		}
	}
	if link == nil || link.URI != down.ResourceURI || link.Size == nil || *link.Size != size {
		t.Fatalf("no resource_link to %s in %#v", down.ResourceURI, res.Content)
	}

	// The template is announced.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	templates, err := h.cs.ListResourceTemplates(ctx, nil)
	if err != nil || len(templates.ResourceTemplates) != 1 || templates.ResourceTemplates[0].URITemplate != tools.FileURITemplate ||
		!strings.Contains(templates.ResourceTemplates[0].Description, "?offset=N") {
		t.Errorf("resources/templates/list: %+v %v", templates, err)
	}

	// A range: exactly those bytes.
	c, err := readRes(h, link.URI+"?offset=12345678&length=1000")
	if err != nil {
		t.Fatalf("resources/read of a range: %v", err)
	}
	want := shaOfCommand(t, h, "tail -c +12345679 big.bin | head -c 1000 | sha256sum")
	if got := sha256.Sum256(c.Blob); len(c.Blob) != 1000 || hex.EncodeToString(got[:]) != want {
		t.Errorf("the range: %d bytes, sha256 %x; want 1000 bytes, %s", len(c.Blob), got, want)
	}
	if metaInt(c, "offset") != 12345678 || metaInt(c, "length") != 1000 || metaInt(c, "size") != size || metaInt(c, "next_offset") != 12346678 {
		t.Errorf("the range's _meta: %v", c.Meta)
	}

	// The whole file, a part at a time, following next_offset.
	all := sha256.New()
	var reads int
	for off := int64(0); off >= 0; reads++ {
		uri := link.URI
		if off > 0 {
			uri += "?offset=" + strconv.FormatInt(off, 10)
		}
		c, err := readRes(h, uri)
		if err != nil {
			t.Fatalf("resources/read at %d: %v", off, err)
		}
		if len(c.Blob) > 8<<20 || metaInt(c, "offset") != off || metaInt(c, "length") != int64(len(c.Blob)) {
			t.Fatalf("read at %d: %d bytes, _meta %v", off, len(c.Blob), c.Meta)
		}
		all.Write(c.Blob)
		off = metaInt(c, "next_offset")
	}
	if got := hex.EncodeToString(all.Sum(nil)); got != whole || reads != 7 {
		t.Errorf("the file read in %d parts has sha256 %s, want %s", reads, got, whole)
	}

	// Bad ranges and URIs: clear errors.
	for uri, want := range map[string]string{
		link.URI + "?offset=52428801":                                        "past the end of /workspace/big.bin, which has 52428800 bytes",
		link.URI + "?length=0":                                               "length is 0",
		link.URI + "?offset=-5":                                              "offset is \"-5\"",
		link.URI + "?offset=1&bytes=2":                                       "unknown parameter \"bytes\"",
		strings.Replace(link.URI, "/files/", "/dirs/", 1):                    "not found",
		strings.Replace(link.URI, down.Machine, "m-00000000000000000000", 1): "machine \"m-00000000000000000000\" not found",
	} {
		if _, err := readRes(h, uri); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("resources/read %s: %v, want an error saying %q", uri, err, want)
		}
	}
	// A part of it small enough is embedded.
	down = tools.DownloadFileOutput{}
	res = h.ok(t, "download_file", map[string]any{"path": "big.bin", "offset": 12345678, "length": 1000}, &down)
	var blob []byte
	for _, c := range res.Content {
		if e, ok := c.(*mcp.EmbeddedResource); ok {
			blob = e.Resource.Blob
		}
	}
	if got := sha256.Sum256(blob); down.Encoding != "base64" || hex.EncodeToString(got[:]) != want || down.NextOffset != 12346678 || !down.Truncated {
		t.Errorf("a 1000-byte part: %+v", down)
	}
	h.fails(t, "download_file", map[string]any{"path": "big.bin", "offset": size + 1}, "which has 52428800 bytes")
}

// TestDownloadTextWindow: a text file of a million lines comes back as a
// window within the budget with one marker line; offset and length give
// exact bytes; next_offset pages through it.
func TestDownloadTextWindow(t *testing.T) {
	t.Parallel()
	h := start(t)
	h.ok(t, "exec_command", map[string]any{"command": "seq 1 1000000 > s.txt"}, nil)
	var content strings.Builder
	for i := 1; i <= 1000000; i++ {
		content.WriteString(strconv.Itoa(i))
		content.WriteByte('\n')
	}
	file := content.String()

	var down tools.DownloadFileOutput
	res := h.ok(t, "download_file", map[string]any{"path": "s.txt"}, &down)
	if n := rpcSize(t, res); n > maxDownloadResponse {
		t.Errorf("the download_file response has %d bytes, over %d", n, maxDownloadResponse)
	}
	if down.Encoding != "utf-8" || !down.Truncated || down.Offset != 0 || down.Length == 0 || down.NextOffset != down.Length || down.Bytes != int64(len(file)) {
		t.Fatalf("download_file of 1,000,000 lines: %+v", down)
	}
	if n := utf8.RuneCountInString(text(res)); n > downloadBudget {
		t.Errorf("the result's text has %d characters, over the budget of %d", n, downloadBudget)
	}
	window := res.Content[1].(*mcp.TextContent).Text
	if window != file[:down.Length] {
		t.Errorf("the window is not the file's first %d bytes", down.Length)
	}
	markers := 0
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok && strings.Contains(tc.Text, "left out") {
			markers++
			if strings.Count(tc.Text, "\n") != 0 || !strings.Contains(tc.Text, fmt.Sprintf("offset=%d", down.NextOffset)) || !strings.Contains(tc.Text, "1,000,000 lines") {
				t.Errorf("the marker: %q", tc.Text)
			}
		}
	}
	if markers != 1 {
		t.Errorf("%d markers, want 1", markers)
	}

	// Lines 500000 to 500010, exactly.
	offset := strings.Index(file, "\n500000\n") + 1
	length := len("500000\n500001\n500002\n500003\n500004\n500005\n500006\n500007\n500008\n500009\n500010\n")
	res = h.ok(t, "download_file", map[string]any{"path": "s.txt", "offset": offset, "length": length}, &down)
	if got := res.Content[1].(*mcp.TextContent).Text; got != file[offset:offset+length] || !strings.HasPrefix(got, "500000\n") || !strings.HasSuffix(got, "\n500010\n") {
		t.Errorf("lines 500000-500010: %q", got)
	}
	if down.Offset != int64(offset) || down.Length != int64(length) || down.NextOffset != int64(offset+length) || !strings.Contains(text(res), "lines 500,000 to 500,010") {
		t.Errorf("lines 500000-500010: %+v\n%s", down, text(res))
	}

	// Paging from the start gives the file's bytes in order.
	var paged strings.Builder
	for off, i := int64(0), 0; i < 3; i++ {
		res := h.ok(t, "download_file", map[string]any{"path": "s.txt", "offset": off}, &down)
		if down.Offset != off {
			t.Fatalf("page %d starts at %d, asked %d", i, down.Offset, off)
		}
		paged.WriteString(res.Content[1].(*mcp.TextContent).Text)
		off = down.NextOffset
	}
	if !strings.HasPrefix(file, paged.String()) || paged.Len() < 3*20000 {
		t.Errorf("three pages: %d bytes, not the file's first", paged.Len())
	}
	// The end: the last lines, no next_offset.
	down = tools.DownloadFileOutput{}
	res = h.ok(t, "download_file", map[string]any{"path": "s.txt", "offset": len(file) - 8}, &down)
	if got := res.Content[1].(*mcp.TextContent).Text; got != "1000000\n" || down.NextOffset != 0 || !down.Truncated {
		t.Errorf("the end: %q %+v", got, down)
	}
	// max_bytes is still length.
	res = h.ok(t, "download_file", map[string]any{"path": "s.txt", "max_bytes": 10}, &down)
	if got := res.Content[1].(*mcp.TextContent).Text; got != "1\n2\n3\n4\n5\n" || down.Length != 10 {
		t.Errorf("max_bytes 10: %q %+v", got, down)
	}

	// Bad input.
	h.fails(t, "download_file", map[string]any{"path": "s.txt", "offset": len(file) + 1}, fmt.Sprintf("past the end of /workspace/s.txt, which has %d bytes", len(file)))
	h.fails(t, "download_file", map[string]any{"path": "s.txt", "offset": -1}, "offset")
	h.fails(t, "download_file", map[string]any{"path": "s.txt", "length": 0}, "length")
	h.fails(t, "download_file", map[string]any{"path": "s.txt", "length": -10}, "length")
}

// TestResourceReadOtherPrincipal: over the hosted endpoint, a file URI of
// alice's machine is "not found" for bob, exactly like a machine that does
// not exist.
func TestResourceReadOtherPrincipal(t *testing.T) {
	t.Parallel()
	tokens := tokensFile(t, map[string]string{"alice": "vmcp_alice-resources", "bob": "vmcp_bob-resources"})
	s := startHTTPServer(t, t.TempDir(), []string{"--tokens-file", tokens, "--enable-local-backend"})
	alice := s.connect(t, false, "vmcp_alice-resources")
	bob := s.connect(t, false, "vmcp_bob-resources")

	alice.ok(t, "exec_command", map[string]any{"command": "head -c 100000 /dev/urandom > b.bin"}, nil)
	var down tools.DownloadFileOutput
	alice.ok(t, "download_file", map[string]any{"path": "b.bin"}, &down)
	if down.Encoding != "resource_link" {
		t.Fatalf("100 kB of binary: %+v", down)
	}
	c, err := readRes(alice, down.ResourceURI+"?offset=10&length=20")
	if err != nil || len(c.Blob) != 20 {
		t.Fatalf("alice reads her file: %v", err)
	}
	_, foreign := readRes(bob, down.ResourceURI)
	_, none := readRes(bob, strings.Replace(down.ResourceURI, down.Machine, "m-00000000000000000000", 1))
	if foreign == nil || none == nil || !strings.Contains(foreign.Error(), "not found") ||
		strings.ReplaceAll(foreign.Error(), down.Machine, "ID") != strings.ReplaceAll(none.Error(), "m-00000000000000000000", "ID") {
		t.Errorf("bob reads alice's file: %v; a missing machine: %v", foreign, none)
	}
	var list tools.ListMachinesOutput
	bob.ok(t, "list_machines", map[string]any{}, &list)
	if len(list.Machines) != 0 {
		t.Errorf("bob has machines: %+v", list)
	}
}

// TestDownloadOnEveryBackend: paging text, a linked binary file and a range
// of it read with resources/read (a read that stops early) on the local
// engine and on both emulators.
func TestDownloadOnEveryBackend(t *testing.T) {
	t.Parallel()
	bin := make([]byte, 300000)
	for i := range bin {
		bin[i] = byte(i*7 + i/251)
	}
	lines := strings.Repeat("héllo wörld ✓\n", 5000) // 18 bytes a line: é at 1-2, ✓ at 14-16
	for _, cfg := range configurations() {
		if cfg.name == "forevervm+fastvm" {
			continue
		}
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			h := cfg.start(t, t.TempDir())
			h.ok(t, "upload_file", map[string]any{"path": "b.bin", "content_base64": base64Std(bin)}, nil)
			h.ok(t, "upload_file", map[string]any{"path": "t.txt", "content": lines}, nil)
			var down tools.DownloadFileOutput
			h.ok(t, "download_file", map[string]any{"path": "b.bin"}, &down)
			if down.Encoding != "resource_link" || down.Bytes != int64(len(bin)) {
				t.Fatalf("300 kB of binary: %+v", down)
			}
			c, err := readRes(h, down.ResourceURI+"?offset=1000&length=5000")
			if err != nil || string(c.Blob) != string(bin[1000:6000]) {
				t.Fatalf("a range: %v", err)
			}
			c, err = readRes(h, down.ResourceURI+"?offset=299990")
			if err != nil || string(c.Blob) != string(bin[299990:]) || metaInt(c, "next_offset") != -1 {
				t.Fatalf("the end: %v", err)
			}
			// A window in the middle of a character starts at the next one.
			down = tools.DownloadFileOutput{}
			res := h.ok(t, "download_file", map[string]any{"path": "t.txt", "offset": 2, "length": 30}, &down)
			if got := res.Content[1].(*mcp.TextContent).Text; down.Offset != 3 || got != lines[3:32] || down.NextOffset != 32 {
				t.Errorf("a window from the middle of é: %q %+v", got, down)
			}
			// The machine still works: a read stopped early left nothing behind.
			var out tools.ExecCommandOutput
			h.ok(t, "exec_command", map[string]any{"command": "wc -c < b.bin"}, &out)
			if strings.TrimSpace(out.Stdout) != "300000" {
				t.Errorf("after the reads: %+v", out)
			}
		})
	}
}

func base64Std(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
