//go:build linux && !vmcp_nolocal

package local

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestRequestFraming: stdin data travels raw after its request's line, so
// any bytes (newlines, braces, invalid UTF-8) come through unchanged, and
// requests without data are plain JSON lines.
func TestRequestFraming(t *testing.T) {
	data := []byte("line 1\n{\"op\":\"kill\"}\n\xff\x00 end")
	var wire bytes.Buffer
	for _, req := range []request{
		{Op: opRun, ID: 1, Argv: []string{"cat"}, Stdin: true},
		{Op: opStdin, ID: 1, Data: data},
		{Op: opStdin, ID: 1, Data: bytes.Repeat([]byte{'\n'}, maxStdinChunk)},
		{Op: opStdinClose, ID: 1},
	} {
		b, err := encodeRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		wire.Write(b)
	}
	if !strings.HasPrefix(wire.String(), `{"op":"run","id":1,"argv":["cat"],"stdin":true}`+"\n") {
		t.Errorf("a request without data is not a plain JSON line: %q", wire.String()[:60])
	}
	br := bufio.NewReaderSize(&wire, 16)
	var got []request
	for {
		var req request
		err := readRequest(br, &req)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, req)
	}
	if len(got) != 4 || got[0].Op != opRun || got[3].Op != opStdinClose {
		t.Fatalf("got %d requests: %+v", len(got), got)
	}
	if !bytes.Equal(got[1].Data, data) || len(got[2].Data) != maxStdinChunk || got[0].Data != nil {
		t.Errorf("data changed on the way: %q", got[1].Data)
	}

	for name, in := range map[string]string{
		"too long":  `{"op":"stdin","id":1,"len":` + "2000000" + "}\n",
		"negative":  `{"op":"stdin","id":1,"len":-1}` + "\n",
		"cut short": `{"op":"stdin","id":1,"len":10}` + "\nabc",
		"no end":    `{"op":"kill","id":1}`,
		"not json":  "hello\n",
	} {
		var req request
		if err := readRequest(bufio.NewReader(strings.NewReader(in)), &req); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: %v, want an error", name, err)
		}
	}
}
