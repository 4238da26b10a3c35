package forevervm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"time"
)

// StreamResult follows an instruction: every output chunk it has produced so
// far, then the live ones, then its result, which ends the sequence. An error
// ends it too. The request is made when the loop starts:
//
//	for ev, err := range c.StreamResult(ctx, machine, seq) {
//		if err != nil { ... }
//		if ev.Output != nil { fmt.Println(ev.Output.Data) }
//		if ev.Result != nil { ... }
//	}
func (c *Client) StreamResult(ctx context.Context, machine string, seq int64) iter.Seq2[StreamEvent, error] {
	return c.streamResult(ctx, machine, seq, MaxInstructionTimeout)
}

func (c *Client) streamResult(ctx context.Context, machine string, seq int64, instrTimeout time.Duration) iter.Seq2[StreamEvent, error] {
	return func(yield func(StreamEvent, error) bool) {
		if err := checkMachine(machine); err != nil {
			yield(StreamEvent{}, err)
			return
		}
		path := resultPath(machine, seq, "stream-result")
		resp, cancel, err := c.request(ctx, http.MethodGet, path, nil, longPollTimeout(instrTimeout))
		if err != nil {
			yield(StreamEvent{}, err)
			return
		}
		defer cancel()
		defer resp.Body.Close()
		for ev, err := range readNDJSON(resp.Body, c.maxMessageBytes) {
			if err != nil {
				yield(StreamEvent{}, fmt.Errorf("forevervm: GET %s: %w", path, stripURL(err)))
				return
			}
			if !yield(ev, nil) || ev.Result != nil {
				return
			}
		}
		yield(StreamEvent{}, fmt.Errorf("forevervm: GET %s: the stream ended before the instruction's result; get it with ExecResult", path))
	}
}

// readNDJSON yields the output and result messages of an NDJSON stream,
// whatever the HTTP chunks it arrived in: a message is complete only at its
// newline (spec §2.7). Unknown message types are skipped. A final line
// without a newline is still parsed, to be lenient; the sequence simply ends
// at EOF.
func readNDJSON(r io.Reader, maxLine int64) iter.Seq2[StreamEvent, error] {
	return func(yield func(StreamEvent, error) bool) {
		br := bufio.NewReaderSize(r, 64<<10)
		var line []byte
		for {
			frag, err := br.ReadSlice('\n')
			line = append(line, frag...)
			if int64(len(line)) > maxLine {
				yield(StreamEvent{}, fmt.Errorf("a stream line is longer than %d bytes (raise WithMaxMessageBytes)", maxLine))
				return
			}
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if err != nil && !errors.Is(err, io.EOF) {
				yield(StreamEvent{}, err)
				return
			}
			if ev, ok, perr := parseStreamLine(line); perr != nil {
				yield(StreamEvent{}, perr)
				return
			} else if ok && !yield(ev, nil) {
				return
			}
			if err != nil { // EOF
				return
			}
			line = line[:0]
		}
	}
}

func parseStreamLine(line []byte) (StreamEvent, bool, error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return StreamEvent{}, false, nil
	}
	var m serverMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return StreamEvent{}, false, fmt.Errorf("a stream line is not a JSON message (%w): %s", err, snippet(line))
	}
	ev := StreamEvent{}
	if m.InstructionID != nil {
		ev.InstructionID = *m.InstructionID
	}
	switch m.Type {
	case "output":
		if m.Chunk == nil {
			return ev, false, fmt.Errorf("an output message without its chunk: %s", snippet(line))
		}
		ev.Output = m.Chunk
	case "result":
		res, err := m.result()
		if err != nil {
			return ev, false, err
		}
		ev.Result = res
	default:
		return ev, false, nil
	}
	return ev, true, nil
}
