package tools

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"

	"github.com/invopop/jsonschema"

	"github.com/vmcp-dev/vmcp/internal/bigargs"
)

// Text is a string argument that may be large (a file's content, a
// command's stdin): it keeps the JSON text of the value where the request
// holds it, without a copy, and yields it as a stream. Arguments are
// decoded from the request's raw JSON (RawArguments), which outlives the
// call.
type Text struct {
	raw []byte // the JSON string, quotes included; nil when absent or null
}

// UnmarshalJSON keeps b, a slice of the request's raw arguments.
func (t *Text) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		t.raw = nil
		return nil
	}
	if len(b) < 2 || b[0] != '"' {
		return errors.New("want a string")
	}
	if bigargs.IsPlaceholder(b) {
		v, ok := bigargs.Lookup(b)
		if !ok {
			return errors.New("this request's large argument is no longer held by the server; send the call again")
		}
		b = v
	}
	t.raw = b
	return nil
}

// MarshalJSON writes the string back.
func (t Text) MarshalJSON() ([]byte, error) {
	if t.raw == nil {
		return []byte("null"), nil
	}
	return t.raw, nil
}

// JSONSchema makes Text a string in the tools' schemas.
func (Text) JSONSchema() *jsonschema.Schema { return &jsonschema.Schema{Type: "string"} }

// Set reports whether the argument was given.
func (t Text) Set() bool { return t.raw != nil }

// Empty reports whether the argument is absent or the empty string.
func (t Text) Empty() bool { return len(t.raw) <= 2 }

// Reader yields the string. Without escapes in it (base64, most text) it
// reads the request's own bytes; with escapes it decodes them first, which
// is a copy.
func (t Text) Reader() io.Reader {
	if t.raw == nil {
		return strings.NewReader("")
	}
	body := t.raw[1 : len(t.raw)-1]
	if bytes.IndexByte(body, '\\') < 0 {
		return bytes.NewReader(body)
	}
	var s string
	json.Unmarshal(t.raw, &s)
	return strings.NewReader(s)
}

// String is the whole string.
func (t Text) String() string {
	if t.raw == nil {
		return ""
	}
	var s string
	json.Unmarshal(t.raw, &s)
	return s
}

// NewText makes a Text of s (for callers that build arguments in Go).
func NewText(s string) Text {
	b, _ := json.Marshal(s)
	return Text{raw: b}
}

// textArguments holds "tool\x00argument" for every argument of type Text.
var textArguments sync.Map

// noteTextArguments records In's Text arguments under tool's name.
func noteTextArguments[In any](tool string) {
	for _, f := range reflect.VisibleFields(reflect.TypeFor[In]()) {
		if f.Type == reflect.TypeFor[Text]() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			textArguments.Store(tool+"\x00"+name, true)
		}
	}
}

// IsTextArgument reports whether argument of tool is a large string that
// the tool reads as a stream (a file's content, a command's stdin), which
// a transport may set aside from the message (package bigargs).
func IsTextArgument(tool, argument string) bool {
	_, ok := textArguments.Load(tool + "\x00" + argument)
	return ok
}
