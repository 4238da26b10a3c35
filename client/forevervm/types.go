package forevervm

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Machine is one machine of the account, as ListMachines reports it.
type Machine struct {
	// Name identifies the machine (16 letters and digits).
	Name string `json:"name"`
	// CreatedAt is when it was created (UTC).
	CreatedAt time.Time `json:"created_at"`
	// Running: the machine is loaded on a worker rather than saved to disk.
	Running bool `json:"running"`
	// HasPendingInstruction: an instruction is queued or running.
	HasPendingInstruction bool `json:"has_pending_instruction"`
	// ExpiresAt is nil for machines that never expire (all of them today).
	ExpiresAt *time.Time `json:"expires_at"`
	// Tags are the labels it was created with; never nil.
	Tags map[string]string `json:"tags"`
}

// UnmarshalJSON accepts has_pending_instructions (plural) too: the JS and
// Python SDKs spell it that way.
func (m *Machine) UnmarshalJSON(b []byte) error {
	type plain Machine
	var w struct {
		plain
		Plural *bool `json:"has_pending_instructions"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*m = Machine(w.plain)
	if w.Plural != nil && *w.Plural {
		m.HasPendingInstruction = true
	}
	if m.Tags == nil {
		m.Tags = map[string]string{}
	}
	return nil
}

// ExecResponse is the answer to Client.Exec.
type ExecResponse struct {
	// InstructionSeq numbers the instruction on its machine (from 0); nil
	// means it was not accepted because the machine is busy.
	InstructionSeq *int64 `json:"instruction_seq"`
	// Machine is the machine that runs it.
	Machine string `json:"machine"`
	// Interrupted: an earlier instruction was interrupted to run this one.
	Interrupted bool `json:"interrupted"`
}

// OutputChunk is one line of output (its newline removed).
type OutputChunk struct {
	Stream string `json:"stream"` // "stdout" or "stderr"
	Data   string `json:"data"`
	// Seq numbers the chunks of one instruction from 0.
	Seq int64 `json:"seq"`
}

// Result is how an instruction ended: a value result or an error result.
type Result struct {
	// Value is the repr of the final expression (e.g. "2", "'done'"); nil
	// for statements, None, and error results.
	Value *string
	// Data holds rich display output of value results, keyed by kind; see
	// PNG. Nil when there is none.
	Data map[string]json.RawMessage
	// IsError: the code raised an exception, timed out ("Timed out") or was
	// interrupted; Error says which.
	IsError bool
	// Error is the error text (the traceback ends with "ExcType: message").
	Error string
	// RuntimeMS is how long the instruction ran, in milliseconds.
	RuntimeMS int64
}

// UnmarshalJSON tells the two kinds of result apart by the presence of a
// string "error" key, as the official Rust client does.
func (r *Result) UnmarshalJSON(b []byte) error {
	var w struct {
		Value     *string                    `json:"value"`
		Data      map[string]json.RawMessage `json:"data"`
		Error     *string                    `json:"error"`
		RuntimeMS *json.Number               `json:"runtime_ms"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.RuntimeMS == nil {
		return errors.New("a result without runtime_ms")
	}
	ms, err := w.RuntimeMS.Int64()
	if err != nil {
		// Tolerate a float; the field is an integer by contract.
		f, ferr := w.RuntimeMS.Float64()
		if ferr != nil {
			return fmt.Errorf("runtime_ms %q is not a number", w.RuntimeMS.String())
		}
		ms = int64(f)
	}
	*r = Result{RuntimeMS: ms}
	if w.Error != nil {
		r.IsError, r.Error = true, *w.Error
		return nil
	}
	r.Value, r.Data = w.Value, w.Data
	return nil
}

// MarshalJSON writes the wire form: a value result never has an "error" key
// and an error result never has "value" or "data", as clients expect.
func (r Result) MarshalJSON() ([]byte, error) {
	if r.IsError {
		return json.Marshal(struct {
			Error     string `json:"error"`
			RuntimeMS int64  `json:"runtime_ms"`
		}{r.Error, r.RuntimeMS})
	}
	return json.Marshal(struct {
		Value     *string                    `json:"value"`
		Data      map[string]json.RawMessage `json:"data"`
		RuntimeMS int64                      `json:"runtime_ms"`
	}{r.Value, r.Data, r.RuntimeMS})
}

// PNG returns the decoded image of data.png (a matplotlib figure), or nil
// when the result has none.
func (r *Result) PNG() ([]byte, error) {
	raw, ok := r.Data["png"]
	if !ok || string(raw) == "null" {
		return nil, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("forevervm: data.png is not a string: %w", err)
	}
	img, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("forevervm: data.png is not base64: %w", err)
	}
	return img, nil
}

// StreamEvent is one message of StreamResult: an output chunk, or the
// result that ends the stream.
type StreamEvent struct {
	// InstructionID is the instruction's seq.
	InstructionID int64
	// Output is set for output messages.
	Output *OutputChunk
	// Result is set for the final message.
	Result *Result
}

// serverMessage is any message of the WebSocket REPL or of a stream-result
// line; fields absent from a type stay zero.
type serverMessage struct {
	Type          string          `json:"type"`
	MachineName   string          `json:"machine_name"`
	Seq           *int64          `json:"seq"`
	RequestID     *uint32         `json:"request_id"`
	InstructionID *int64          `json:"instruction_id"`
	Chunk         *OutputChunk    `json:"chunk"`
	Result        json.RawMessage `json:"result"`
	Code          string          `json:"code"`
	ID            *string         `json:"id"`
	Message       string          `json:"message"`
	Level         string          `json:"level"`
}

// result decodes the result of a result message.
func (m *serverMessage) result() (*Result, error) {
	if len(m.Result) == 0 || string(m.Result) == "null" {
		return nil, errors.New("a result message without its result")
	}
	var r Result
	if err := json.Unmarshal(m.Result, &r); err != nil {
		return nil, fmt.Errorf("a malformed result (%w): %s", err, snippet(m.Result))
	}
	return &r, nil
}
