//go:build linux

package forevervm

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
)

// TestLongLinesWhole: a 10 MB line reaches the official-shaped client
// whole, as one chunk, over the WebSocket and over stream-result, with the
// lines around it; bytes that are not UTF-8 arrive as U+FFFD, a partial
// line as the last chunk.
func TestLongLinesWhole(t *testing.T) {
	e := newEmu(t, nil, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := forevervmclient.New(testToken, forevervmclient.WithBaseURL(e.url))
	name, err := c.CreateMachine(ctx, forevervmclient.CreateMachineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	code := "import sys\nprint('head')\nprint('x' * 10_000_000)\nsys.stderr.buffer.write(b'\\xff\\xfeerr\\n')\nprint('tail', end='')"
	check := func(how string, chunks []forevervmclient.OutputChunk) {
		t.Helper()
		var got []string
		for i, ch := range chunks {
			if ch.Seq != int64(i) {
				t.Fatalf("%s: chunk %d has seq %d", how, i, ch.Seq)
			}
			got = append(got, ch.Stream+":"+ch.Data)
		}
		want := []string{"stdout:head", "stdout:" + strings.Repeat("x", 10_000_000), "stderr:\uFFFD\uFFFDerr", "stdout:tail"}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			for i := range got {
				got[i] = got[i][:min(len(got[i]), 40)]
			}
			t.Fatalf("%s: %d chunks %q, want 4: head, the 10 MB line whole, err, tail", how, len(got), got)
		}
	}

	repl, err := c.REPL(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close()
	var chunks []forevervmclient.OutputChunk
	res, err := repl.Exec(ctx, code, forevervmclient.ExecOptions{Timeout: time.Minute, OnOutput: func(ch forevervmclient.OutputChunk) { chunks = append(chunks, ch) }})
	if err != nil || res.Error != "" {
		t.Fatalf("WebSocket: %+v, %v", res, err)
	}
	check("WebSocket", chunks)

	sub, err := c.Exec(ctx, name, code, forevervmclient.ExecOptions{Timeout: time.Minute})
	if err != nil || sub.InstructionSeq == nil {
		t.Fatalf("exec: %+v, %v", sub, err)
	}
	chunks = nil
	for ev, err := range c.StreamResult(ctx, name, *sub.InstructionSeq) {
		if err != nil {
			t.Fatal(err)
		}
		if ev.Output != nil {
			chunks = append(chunks, *ev.Output)
		}
	}
	check("stream-result", chunks)
}

// TestHugeEscapedLineInPieces: a line whose chunk would pass what a client
// takes in one message as JSON goes in pieces that do not, all of it.
func TestHugeEscapedLineInPieces(t *testing.T) {
	line := strings.Repeat("\x01", 10<<20) + strings.Repeat("é", 1000)
	pieces := framePieces(line)
	if len(pieces) < 2 || strings.Join(pieces, "") != line {
		t.Fatalf("%d pieces, joined %v", len(pieces), strings.Join(pieces, "") == line)
	}
	for i, p := range pieces {
		b, _ := json.Marshal(chunk{Stream: "stdout", Data: p})
		if len(b) > maxChunkJSON+100 {
			t.Fatalf("piece %d is %d bytes as JSON", i, len(b))
		}
	}
	if p := framePieces(strings.Repeat("x", 10_000_000)); len(p) != 1 {
		t.Fatalf("a plain 10 MB line in %d pieces", len(p))
	}
}
