//go:build linux

package forevervm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"
)

// instruction is one submitted piece of code, with the output it produced so
// far (kept so that stream-result and late readers can replay it) and, once
// it ends, its result.
type instruction struct {
	seq     int64
	code    string
	timeout time.Duration

	// Guarded by the machine's mu.
	interrupted bool               // an interrupt asked it to stop
	cancel      context.CancelFunc // set when it starts

	mu        sync.Mutex
	outputs   []chunk
	outBytes  int64
	maxBytes  int64 // negative: no cap
	truncated bool
	result    json.RawMessage // nil until it ends
	changed   chan struct{}   // closed (and replaced) when outputs or result change
	done      chan struct{}   // closed when result is set
}

// chunk is one line of output (spec §3.4: one chunk per line, newline
// stripped; seq counts from 0 within the instruction). Its data is the
// line's bytes; bytes that are not UTF-8 go out as U+FFFD.
type chunk struct {
	Stream string `json:"stream"`
	Data   string `json:"data"`
	Seq    int64  `json:"seq"`
}

func newInstruction(seq int64, code string, timeout time.Duration, maxBytes int64) *instruction {
	return &instruction{
		seq: seq, code: code, timeout: timeout, maxBytes: maxBytes,
		changed: make(chan struct{}), done: make(chan struct{}),
	}
}

// interrupt stops the instruction, or keeps it from starting; the machine's
// mu must be held.
func (in *instruction) interrupt() {
	in.interrupted = true
	if in.cancel != nil {
		in.cancel()
	}
}

// addOutput records a line of output. It runs on the local machine's
// reader, so it only appends and wakes the readers.
func (in *instruction) addOutput(stream, line string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.result != nil || in.truncated {
		return
	}
	if in.over(int64(len(line))) {
		return
	}
	in.outBytes += int64(len(line))
	in.outputs = append(in.outputs, chunk{Stream: stream, Data: line, Seq: int64(len(in.outputs))})
	in.wake()
}

// fits reports whether n more bytes of output are kept; when they are
// not, the output ends here, and says so.
func (in *instruction) fits(n int64) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.result == nil && !in.truncated && !in.over(n)
}

// over cuts the output if n more bytes would pass the cap; in.mu held.
func (in *instruction) over(n int64) bool {
	if in.maxBytes < 0 || in.outBytes+n <= in.maxBytes {
		return false
	}
	// Options.MaxOutputBytes bounds the memory one instruction can take;
	// say so in the output rather than drop lines silently.
	in.truncated = true
	line := fmt.Sprintf("[forevervm emulator: output beyond %d bytes dropped (Options.MaxOutputBytes)]", in.maxBytes)
	in.outBytes += int64(len(line))
	in.outputs = append(in.outputs, chunk{Stream: "stderr", Data: line, Seq: int64(len(in.outputs))})
	in.wake()
	return true
}

// lineWriter cuts one stream of an instruction's output, which the local
// machine passes on byte for byte, into chunks (spec §3.4): one per line,
// newline removed, a partial line gathered until its newline or the end of
// the instruction (flush), within the instruction's output cap.
type lineWriter struct {
	in      *instruction
	stream  string
	partial []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		seg := p
		if i >= 0 {
			seg = p[:i]
		}
		if !w.in.fits(int64(len(w.partial) + len(seg))) {
			w.partial = nil
			break // dropped, and said so; the code runs on
		}
		w.partial = append(w.partial, seg...)
		if i < 0 {
			break
		}
		w.flush()
		p = p[i+1:]
	}
	return n, nil
}

// flush sends the line gathered so far, if any.
func (w *lineWriter) flush() {
	if len(w.partial) == 0 {
		return
	}
	for _, piece := range framePieces(string(w.partial)) {
		w.in.addOutput(w.stream, piece)
	}
	w.partial = w.partial[:0]
}

// maxChunkJSON bounds a chunk's data as JSON, below the 64 MiB that
// clients take in one message (client/forevervm's default). A longer line
// is the only one sent in pieces: the spec (§3.4) leaves long lines open,
// and a message a client refuses would lose the whole line.
const maxChunkJSON = 48 << 20

// framePieces cuts line into pieces whose JSON fits maxChunkJSON: one
// piece, unless it is huge and full of characters JSON escapes.
func framePieces(line string) []string {
	var out []string
	for len(line) > maxChunkJSON/6 { // 6: the longest escape of one byte (\u001f, \ufffd)
		size, i := 0, 0
		for i < len(line) {
			r, n := utf8.DecodeRuneInString(line[i:])
			c := n
			switch {
			case r == utf8.RuneError && n == 1, r < 0x20, r == '\u2028', r == '\u2029':
				c = 6
			case r == '"', r == '\\':
				c = 2
			}
			if size+c > maxChunkJSON {
				break
			}
			size += c
			i += n
		}
		if i == len(line) {
			break
		}
		out = append(out, line[:i])
		line = line[i:]
	}
	return append(out, line)
}

// finish records the result; no output is accepted after it.
func (in *instruction) finish(result json.RawMessage) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.result = result
	close(in.done)
	in.wake()
}

// wake tells waiting readers that something changed; in.mu held.
func (in *instruction) wake() {
	close(in.changed)
	in.changed = make(chan struct{})
}

func (in *instruction) finished() bool {
	select {
	case <-in.done:
		return true
	default:
		return false
	}
}

// since returns the outputs from index next on, the result if it is set (in
// which case no more outputs will come) and a channel closed on the next change.
func (in *instruction) since(next int) ([]chunk, json.RawMessage, <-chan struct{}) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.outputs[next:len(in.outputs):len(in.outputs)], in.result, in.changed
}

// follow sends each output frame of the instruction, from the first, then
// its result frame, as they are produced; it returns after the result, or
// with the error of send or ctx.
func (in *instruction) follow(ctx context.Context, send func(frame []byte) error) error {
	next := 0
	for {
		chunks, result, changed := in.since(next)
		for _, c := range chunks {
			if err := send(outputFrame(in.seq, c)); err != nil {
				return err
			}
		}
		next += len(chunks)
		if result != nil {
			return send(resultFrame(in.seq, result))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Results (spec §4): a value result has no "error" key and an error result
// no "value" key, so they are distinct types.
type valueResultJSON struct {
	Value     *string    `json:"value"`
	Data      *valueData `json:"data"` // Spec §8 #10: null unless there is an image
	RuntimeMS int64      `json:"runtime_ms"`
}

type valueData struct {
	PNG string `json:"png"` // Spec §8 #10: the only data key
}

type errorResultJSON struct {
	Error     string `json:"error"`
	RuntimeMS int64  `json:"runtime_ms"`
}

func valueResult(value *string, png string, runtimeMS int64) json.RawMessage {
	r := valueResultJSON{Value: value, RuntimeMS: runtimeMS}
	if png != "" {
		r.Data = &valueData{PNG: png}
	}
	return mustJSON(r)
}

func errorResult(text string, runtimeMS int64) json.RawMessage {
	return mustJSON(errorResultJSON{Error: text, RuntimeMS: runtimeMS})
}

func encodePNG(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// Server messages shared by the WebSocket and stream-result (spec §3.2).
type outputMsg struct {
	Type          string `json:"type"` // "output"
	Chunk         chunk  `json:"chunk"`
	InstructionID int64  `json:"instruction_id"`
}

type resultMsg struct {
	Type          string          `json:"type"` // "result"
	InstructionID int64           `json:"instruction_id"`
	Result        json.RawMessage `json:"result"`
}

func outputFrame(seq int64, c chunk) []byte {
	return mustJSON(outputMsg{Type: "output", Chunk: c, InstructionID: seq})
}

func resultFrame(seq int64, result json.RawMessage) []byte {
	return mustJSON(resultMsg{Type: "result", InstructionID: seq, Result: result})
}

// mustJSON encodes values made only of strings, numbers and raw JSON that
// this package produced, which cannot fail to encode. It leaves <, > and &
// as they are: tracebacks read better without \u003c escapes.
func mustJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("forevervm emulator: encoding %T: %v", v, err))
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}
