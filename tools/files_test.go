//go:build linux

package tools

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/internal/principal"
	"github.com/vmcp-dev/vmcp/local"
)

// mixedText is text of one-, two-, three- and four-byte characters and
// newlines.
func mixedText(n int) []byte {
	var b bytes.Buffer
	parts := []string{"a", "é", "漢", "😀", "\n", "line ", "ß\n"}
	for i := 0; b.Len() < n; i++ {
		b.WriteString(parts[(i*7+i/3)%len(parts)])
	}
	return b.Bytes()
}

// TestTextWindowPagesThroughAFile: following next offsets from 0, the
// windows are on character boundaries, within room characters, and
// together are the file, whatever the room.
func TestTextWindowPagesThroughAFile(t *testing.T) {
	file := mixedText(20000)
	size := int64(len(file))
	for _, room := range []int{1, 2, 7, 100, 999, 30000} {
		plan := windowPlan{room: room}
		var got []byte
		for off, pages := int64(0), 0; off < size; pages++ {
			if pages > len(file) {
				t.Fatalf("room %d: no progress at %d", room, off)
			}
			win, ok := textWindow(file[off:min(off+plan.keep(0), size)], off, size, 0, room)
			if !ok {
				t.Fatalf("room %d: window at %d is not text", room, off)
			}
			if win.start != off || len(win.text) == 0 {
				t.Fatalf("room %d: window at %d starts at %d with %d bytes", room, off, win.start, len(win.text))
			}
			if n := cost(win.text); n > room && utf8.RuneCount(win.text) > 1 || !utf8.Valid(win.text) {
				t.Fatalf("room %d: costs %d, valid %v", room, n, utf8.Valid(win.text))
			}
			got = append(got, win.text...)
			off += int64(len(win.text))
		}
		if !bytes.Equal(got, file) {
			t.Errorf("room %d: the windows are not the file", room)
		}
	}
}

func TestTextWindowBoundaries(t *testing.T) {
	file := []byte("ab€cd\nef😀gh\n") // € is 3 bytes at 2..4, 😀 4 bytes at 10..13
	size := int64(len(file))
	for _, tc := range []struct {
		offset, length int64
		room           int
		start          int64
		want           string
	}{
		{0, 0, 100, 0, string(file)},
		{3, 0, 100, 5, "cd\nef😀gh\n"},         // in the middle of €: from the next character
		{0, 4, 100, 0, "ab"},                  // length ends inside €: cut before it
		{0, 5, 100, 0, "ab€"},                 // exactly
		{12, 3, 100, 14, "g"},                 // inside 😀, and the window ends before the next character
		{10, 4, 100, 10, "😀"},                 // exactly the emoji
		{0, 0, 8, 0, "ab€cd\n"},               // room: cut after the newline near the end
		{size, 0, 100, size, ""},              // at the end: nothing
		{8, 0, 2, 8, "ef"},                    // room without a newline near
		{0, 1000, 100, 0, string(file)},       // length past the end
		{8, 2, 100, 8, "ef"},                  // a line
		{2, 3, 1, 2, "€"},                     // one character
		{0, 0, 3, 0, "ab€"},                   // room in characters, not bytes
		{5, 0, 100, 5, "cd\nef😀gh\n"},         // on a boundary
		{13, 0, 100, 14, "gh\n"},              // two bytes into the emoji
		{11, 2, 100, 14, ""},                  // a window inside the emoji
		{0, size - 1, 100, 0, "ab€cd\nef😀gh"}, // all but the last newline
	} {
		end := min(tc.offset+windowPlan{room: tc.room}.keep(tc.length), size)
		win, ok := textWindow(file[tc.offset:end], tc.offset, size, tc.length, tc.room)
		if !ok || win.start != tc.start || string(win.text) != tc.want {
			t.Errorf("offset %d length %d room %d: %v start %d %q; want start %d %q", tc.offset, tc.length, tc.room, ok, win.start, win.text, tc.start, tc.want)
		}
	}
	// Not text: invalid UTF-8, or a character cut by the end of the file.
	for _, b := range [][]byte{{0xff, 'a'}, []byte("ab\xe2\x82"), {'a', 0x80, 'b'}, []byte("a\x00b"), make([]byte, 100)} {
		if _, ok := textWindow(b, 0, int64(len(b)), 0, 100); ok {
			t.Errorf("%q is text", b)
		}
	}
	// A character cut by the window (not the file's end) is not a reason.
	if win, ok := textWindow([]byte("ab\xe2\x82"), 0, 10, 0, 100); !ok || string(win.text) != "ab" {
		t.Errorf("cut by the window: %v %q", ok, win.text)
	}
}

func TestFileWindow(t *testing.T) {
	for text, lines := range map[string]int64{"": 0, "a": 1, "a\n": 1, "a\nb": 2, "\n\n": 2} {
		w := &fileWindow{}
		w.Write([]byte(text))
		if w.lines() != lines {
			t.Errorf("%q: %d lines, want %d", text, w.lines(), lines)
		}
	}
	file := []byte(strings.Repeat("0123456\n", 1000))
	for _, tc := range []struct{ from, keep int64 }{{0, 10}, {5, 100}, {7999, 1}, {8000, 0}, {100, 7900}, {4000, 4000}} {
		for _, chunk := range []int{1, 3, 64, 8000} {
			for _, stop := range []bool{false, true} {
				w := &fileWindow{from: tc.from, keep: tc.keep, stop: stop}
				var err error
				for i := 0; i < len(file) && err == nil; i += chunk {
					_, err = w.Write(file[i:min(i+chunk, len(file))])
				}
				if !bytes.Equal(w.buf, file[tc.from:tc.from+tc.keep]) {
					t.Errorf("from %d keep %d chunk %d: kept %d bytes", tc.from, tc.keep, chunk, len(w.buf))
				}
				if stop && !errors.Is(err, errWindowDone) || !stop && err != nil {
					t.Errorf("from %d keep %d chunk %d stop %v: %v", tc.from, tc.keep, chunk, stop, err)
				}
				if !stop && (w.lines() != 1000 || w.linesBefore != (tc.from)/8) {
					t.Errorf("from %d chunk %d: %d lines, %d before", tc.from, chunk, w.lines(), w.linesBefore)
				}
			}
		}
	}
}

func TestWindowMarker(t *testing.T) {
	m := windowMarker("out/s.txt", 100, 30000, 6888896, 15, 4300, 1000000)
	for _, want := range []string{"6,888,896 bytes", "1,000,000 lines", "100 bytes before", "6,858,896 bytes after", "left out", "offset=30000", "sed -n '4301,4500p' out/s.txt", "tail -c +30001"} {
		if !strings.Contains(m, want) {
			t.Errorf("marker %q does not say %q", m, want)
		}
	}
	if strings.Contains(m, "\n") {
		t.Errorf("marker is more than one line: %q", m)
	}
	m = windowMarker("my file's.txt", 500, 1000, 1000, 10, 20, 20)
	if !strings.Contains(m, "offset=0") || !strings.Contains(m, `head -c 500 'my file'\''s.txt'`) || !strings.Contains(m, "0 bytes after") {
		t.Errorf("marker at the end: %q", m)
	}
}

func TestDownloadWindowArguments(t *testing.T) {
	for _, tc := range []struct {
		in   DownloadFileInput
		want int64
		err  string
	}{
		{DownloadFileInput{}, 0, ""},
		{DownloadFileInput{Length: 10}, 10, ""},
		{DownloadFileInput{MaxBytes: 7}, 7, ""},
		{DownloadFileInput{Length: 7, MaxBytes: 7}, 7, ""},
		{DownloadFileInput{Length: 7, MaxBytes: 8}, 0, "give only length"},
		{DownloadFileInput{Offset: -1}, 0, "offset is -1"},
		{DownloadFileInput{Length: -5}, 0, "length is -5; give a positive number"},
	} {
		got, err := tc.in.window()
		if tc.err == "" && (err != nil || got != tc.want) || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %d %v; want %d %q", tc.in, got, err, tc.want, tc.err)
		}
	}
	if err := checkOffset(11, 10, "f"); err == nil || !strings.Contains(err.Error(), "past the end of f, which has 10 bytes") {
		t.Errorf("offset past the end: %v", err)
	}
	if checkOffset(10, 10, "f") != nil || checkOffset(0, 0, "f") != nil {
		t.Error("offset at the end refused")
	}
	p := planWindow(DefaultMaxOutputChars, 10)
	if p.room <= 25000 || p.room > DefaultMaxOutputChars-windowReserve || p.blobBytes != DefaultMaxOutputChars/4*3 {
		t.Errorf("default plan: %+v", p)
	}
	if p := planWindow(400000, 10); p.blobBytes != maxBlobChars/4*3 {
		t.Errorf("blob cap: %+v", p)
	}
	if p := planWindow(10, 5000); p.room < 1 {
		t.Errorf("tiny budget: %+v", p)
	}
}

func TestFileURI(t *testing.T) {
	for _, p := range []string{"/workspace/big.bin", "notes/a b?c&d=e%f#g.txt", "ünï/😀", "x"} {
		uri := fileURI("m-123", p, 5, 7)
		if !strings.HasPrefix(uri, "vmcp://machines/m-123/files/") || strings.Count(uri, "/") != 5 {
			t.Errorf("%q: %s", p, uri)
		}
		ref, err := parseFileURI(uri)
		if err != nil || ref.machine != "m-123" || ref.path != p || ref.offset != 5 || ref.length != 7 {
			t.Errorf("%s: %+v %v", uri, ref, err)
		}
	}
	if uri := fileURI("m-1", "a", 0, 0); uri != "vmcp://machines/m-1/files/a" {
		t.Errorf("no range: %s", uri)
	}
	// Slashes need not be encoded.
	if ref, err := parseFileURI("vmcp://machines/m-1/files/dir/sub/f.bin?length=3"); err != nil || ref.path != "dir/sub/f.bin" || ref.length != 3 || ref.offset != 0 {
		t.Errorf("literal slashes: %+v %v", ref, err)
	}
	for uri, want := range map[string]string{
		"file:///etc/passwd":                                      "not a vmcp://machines/ URI",
		"vmcp://other/m-1/files/a":                                "not a vmcp://machines/ URI",
		"vmcp://machines/m-1/a":                                   "names no machine and file",
		"vmcp://machines/m-1/files/":                              "names no machine and file",
		"vmcp://machines//files/a":                                "names no machine and file",
		"vmcp://machines/m-1/dirs/a":                              "names no machine and file",
		"vmcp://machines/m-1/files/a?offset=-1":                   "offset is \"-1\"",
		"vmcp://machines/m-1/files/a?length=0":                    "length is 0",
		"vmcp://machines/m-1/files/a?length=x":                    "length is \"x\"",
		"vmcp://machines/m-1/files/a?offset=1&offset=2":           "offset is given 2 times",
		"vmcp://machines/m-1/files/a?range=1-2":                   "unknown parameter \"range\"",
		"vmcp://machines/m-1/files/a%zz":                          "does not parse",
		"vmcp://machines/m-1/files/a#frag":                        "fragment",
		"vmcp://u@machines/m-1/files/a":                           "not a vmcp://machines/ URI",
		"vmcp://machines/m-1/files/a?offset=99999999999999999999": "give a number of bytes",
	} {
		_, err := parseFileURI(uri)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "malformed resource URI") {
			t.Errorf("%s: %v; want %q", uri, err, want)
		}
	}
}

// rpc sends one JSON-RPC request to srv as principal and returns its
// result, or its error's message.
func rpc(t *testing.T, srv *server.MCPServer, who, method string, params any) (json.RawMessage, string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	raw, _ := json.Marshal(srv.HandleMessage(principal.With(context.Background(), who), b))
	var r struct {
		Result json.RawMessage           `json:"result"`
		Error  *struct{ Message string } `json:"error"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("%s: %s", method, raw)
	}
	if r.Error != nil {
		return nil, r.Error.Message
	}
	return r.Result, ""
}

// readResource reads a resource as principal: its blob and _meta, or the
// error's message.
func readResource(t *testing.T, srv *server.MCPServer, principal, uri string) ([]byte, map[string]any, string) {
	t.Helper()
	res, msg := rpc(t, srv, principal, "resources/read", map[string]any{"uri": uri})
	if msg != "" {
		return nil, nil, msg
	}
	var r struct {
		Contents []struct {
			URI  string         `json:"uri"`
			Blob string         `json:"blob"`
			Meta map[string]any `json:"_meta"`
		} `json:"contents"`
	}
	if err := json.Unmarshal(res, &r); err != nil || len(r.Contents) != 1 || r.Contents[0].URI != uri {
		t.Fatalf("resources/read %s: %s", uri, res)
	}
	blob, err := base64.StdEncoding.DecodeString(r.Contents[0].Blob)
	if err != nil {
		t.Fatal(err)
	}
	return blob, r.Contents[0].Meta, ""
}

// TestDownloadAndResourcesInProcess drives download_file and resources/read
// through the MCP server on the local engine: windows of a large text
// file within the budget, a large binary file linked and read in ranges,
// and bad input (offsets, URIs, another principal's machine).
func TestDownloadAndResourcesInProcess(t *testing.T) {
	engine, err := local.New(local.Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer engine.Close()
	store, err := conversations.OpenBolt(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	svc, err := NewService(Config{Backends: []backend.Backend{localbackend.New(engine)}, Conversations: conversations.NewManager(store, conversations.Limits{}), Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := svc.NewMCPServer("test")

	// The resource template is announced, with its ranges.
	res, msg := rpc(t, srv, "alice", "resources/templates/list", map[string]any{})
	if msg != "" || !strings.Contains(string(res), `"uriTemplate":"vmcp://machines/{machine}/files/{+path}"`) || !strings.Contains(string(res), "offset") {
		t.Errorf("resources/templates/list: %s %s", res, msg)
	}

	text := mixedText(200000)
	_, up, isErr := call(t, srv, "alice", "upload_file", map[string]any{"path": "t.txt", "content": string(text)})
	if isErr {
		t.Fatalf("upload: %v", up)
	}
	machine := up["machine"].(string)
	all, out, isErr := call(t, srv, "alice", "download_file", map[string]any{"path": "t.txt"})
	if isErr || out["truncated"] != true || out["encoding"] != "utf-8" || out["offset"] != 0.0 || out["next_offset"] != out["length"] {
		t.Fatalf("download of a large text file: %v %s", out, all)
	}
	if n := utf8.RuneCountInString(all); n > DefaultMaxOutputChars {
		t.Errorf("the result's text has %d characters, over the budget", n)
	}
	if strings.Count(all, "left out") != 1 {
		t.Errorf("want one marker: %s", all[len(all)-800:])
	}
	// A smaller budget asked for, from an offset.
	all, out, _ = call(t, srv, "alice", "download_file", map[string]any{"path": "t.txt", "offset": 1000, "max_output_chars": 2000})
	start, length := int64(out["offset"].(float64)), int64(out["length"].(float64))
	if utf8.RuneCountInString(all) > 2000 || start < 1000 || start > 1003 || !strings.Contains(all, string(text[start:start+length])) {
		t.Errorf("offset 1000 within 2000 characters: %v", out)
	}

	// Bad input.
	for _, tc := range []struct {
		args map[string]any
		want string
	}{
		{map[string]any{"path": "t.txt", "offset": len(text) + 1}, fmt.Sprintf("past the end of /workspace/t.txt, which has %d bytes", len(text))},
		{map[string]any{"path": "t.txt", "offset": -1}, "offset"},
		{map[string]any{"path": "t.txt", "length": 0}, "length"},
		{map[string]any{"path": "t.txt", "length": -3}, "length"},
		{map[string]any{"path": "t.txt", "length": 3, "max_bytes": 4}, "give only length"},
		{map[string]any{"path": "t.txt", "offset": 3, "local_path": "x"}, "with local_path the whole file is saved"},
		{map[string]any{"path": "t.txt", "max_output_chars": 0}, "max_output_chars"},
	} {
		got, _, isErr := call(t, srv, "alice", "download_file", tc.args)
		if !isErr || !strings.Contains(got, tc.want) {
			t.Errorf("%v: %q, want an error saying %q", tc.args, got, tc.want)
		}
	}

	// A binary file too large to embed is linked, and read in ranges.
	bin := make([]byte, 100000)
	rand.Read(bin)
	call(t, srv, "alice", "upload_file", map[string]any{"path": "d/b.bin", "content_base64": base64.StdEncoding.EncodeToString(bin)})
	all, out, _ = call(t, srv, "alice", "download_file", map[string]any{"path": "d/b.bin"})
	uri, _ := out["resource_uri"].(string)
	if out["encoding"] != "resource_link" || uri != fileURI(machine, "/workspace/d/b.bin", 0, 0) || len(all) > 2000 {
		t.Fatalf("large binary: %v %s", out, all)
	}
	blob, meta, msg := readResource(t, srv, "alice", uri)
	if msg != "" || !bytes.Equal(blob, bin) || meta["size"] != 100000.0 || meta["next_offset"] != nil {
		t.Errorf("read whole: %d bytes %v %s", len(blob), meta, msg)
	}
	blob, meta, msg = readResource(t, srv, "alice", uri+"?offset=12345&length=1000")
	if msg != "" || !bytes.Equal(blob, bin[12345:13345]) || meta["offset"] != 12345.0 || meta["length"] != 1000.0 || meta["next_offset"] != 13345.0 {
		t.Errorf("read a range: %d bytes %v %s", len(blob), meta, msg)
	}
	blob, _, msg = readResource(t, srv, "alice", uri+"?offset=99990&length=1000")
	if msg != "" || !bytes.Equal(blob, bin[99990:]) {
		t.Errorf("read a range past the end: %d bytes %s", len(blob), msg)
	}
	// A small part of it is embedded.
	_, out, _ = call(t, srv, "alice", "download_file", map[string]any{"path": "d/b.bin", "offset": 10, "length": 20})
	if out["encoding"] != "base64" || out["length"] != 20.0 || out["next_offset"] != 30.0 || out["truncated"] != true {
		t.Errorf("a part of a binary file: %v", out)
	}

	// Bad reads: nothing of alice's is found by bob, exactly as nothing.
	missing := fileURI("m-00000000000000000000", "/workspace/d/b.bin", 0, 0)
	_, _, foreign := readResource(t, srv, "bob", uri)
	_, _, none := readResource(t, srv, "bob", missing)
	if !strings.Contains(foreign, "not found") || strings.ReplaceAll(foreign, machine, "ID") != strings.ReplaceAll(none, "m-00000000000000000000", "ID") {
		t.Errorf("bob reading alice's file: %q; a missing machine: %q", foreign, none)
	}
	for u, want := range map[string]string{
		uri + "?offset=100001":                                   "past the end of /workspace/d/b.bin, which has 100000 bytes",
		uri + "?length=0":                                        "length is 0",
		"vmcp://machines/" + machine + "/nope":                   "resource not found", // not of the template's shape: mcp-go's answer
		"vmcp://machines/" + machine + "/files/d/b.bin?offset=x": "malformed resource URI",
		"vmcp://machines/" + machine + "/files//workspace/d/b.bin?offset=3&length=1": "", // slashes as they are
		"vmcp://machines/" + machine + "/files/..%2F..%2Fetc%2Fpasswd":               "outside the machine's home",
		fileURI(machine, "d", 0, 0):                "is a directory",
		fileURI(machine, "../../etc/passwd", 0, 0): "outside the machine's home",
		fileURI(machine, "nope.bin", 0, 0):         "nope.bin",
	} {
		if _, _, msg := readResource(t, srv, "alice", u); !strings.Contains(msg, want) || want == "" && msg != "" {
			t.Errorf("%s: %q, want %q", u, msg, want)
		}
	}
	// Nothing was made for bob by his attempts.
	if _, list, _ := call(t, srv, "bob", "list_machines", map[string]any{}); fmt.Sprint(list["machines"]) != "[]" {
		t.Errorf("bob has machines: %v", list)
	}
}
