package wire

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
	var stream bytes.Buffer
	for _, req := range []Request{
		{Op: OpRun, ID: 1, Argv: []string{"cat"}, Stdin: true},
		{Op: OpStdin, ID: 1, Data: data},
		{Op: OpStdin, ID: 1, Data: bytes.Repeat([]byte{'\n'}, MaxStdinChunk)},
		{Op: OpStdinClose, ID: 1},
	} {
		b, err := EncodeRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		stream.Write(b)
	}
	if !strings.HasPrefix(stream.String(), `{"op":"run","id":1,"argv":["cat"],"stdin":true}`+"\n") {
		t.Errorf("a request without data is not a plain JSON line: %q", stream.String()[:60])
	}
	br := bufio.NewReaderSize(&stream, 16)
	var got []Request
	for {
		var req Request
		err := ReadRequest(br, &req)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, req)
	}
	if len(got) != 4 || got[0].Op != OpRun || got[3].Op != OpStdinClose {
		t.Fatalf("got %d requests: %+v", len(got), got)
	}
	if !bytes.Equal(got[1].Data, data) || len(got[2].Data) != MaxStdinChunk || got[0].Data != nil {
		t.Errorf("data changed on the way: %q", got[1].Data)
	}

	for name, in := range map[string]string{
		"too long":  `{"op":"stdin","id":1,"len":` + "2000000" + "}\n",
		"negative":  `{"op":"stdin","id":1,"len":-1}` + "\n",
		"cut short": `{"op":"stdin","id":1,"len":10}` + "\nabc",
		"no end":    `{"op":"kill","id":1}`,
		"not json":  "hello\n",
	} {
		var req Request
		if err := ReadRequest(bufio.NewReader(strings.NewReader(in)), &req); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("%s: %v, want an error", name, err)
		}
	}
}
