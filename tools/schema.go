package tools

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/invopop/jsonschema"
	"github.com/mark3labs/mcp-go/mcp"
	validator "github.com/santhosh-tekuri/jsonschema/v6"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

var reflector = jsonschema.Reflector{
	DoNotReference: true,
	ExpandedStruct: true,
	Anonymous:      true,
}

// schemaFor generates the JSON schema of T: an object whose fields without
// omitempty are required.
func schemaFor[T any]() json.RawMessage {
	var zero T
	sc := reflector.Reflect(&zero)
	sc.Version = ""
	sc.ID = ""
	if sc.Properties == nil || sc.Properties.Len() == 0 {
		sc.Properties = nil
	}
	sc.Type = "object"
	b, err := json.Marshal(sc)
	if err != nil {
		panic(err)
	}
	if string(b) == `{"type":"object"}` || strings.Contains(string(b), `"additionalProperties":false`) && sc.Properties == nil {
		b = []byte(`{"type":"object","properties":{},"additionalProperties":false}`)
	}
	return b
}

// compileSchema compiles a tool's input schema once, when the tool is
// defined, so that checking a call's arguments costs only the check (mcp-go's
// own validation hashes the schema and converts the arguments on every
// call). The schemas are generated from Go types: one that does not compile
// is a programming error.
func compileSchema(tool string, schema json.RawMessage) *validator.Schema {
	doc, err := validator.UnmarshalJSON(bytes.NewReader(schema))
	if err != nil {
		panic(fmt.Sprintf("tool %s: input schema: %v", tool, err))
	}
	url := "urn:vmcp:tool:" + tool
	c := validator.NewCompiler()
	if err := c.AddResource(url, doc); err != nil {
		panic(fmt.Sprintf("tool %s: input schema: %v", tool, err))
	}
	compiled, err := c.Compile(url)
	if err != nil {
		panic(fmt.Sprintf("tool %s: input schema: %v", tool, err))
	}
	return compiled
}

var printer = message.NewPrinter(language.English)

// longString is the length past which shortStrings replaces a string.
const longString = 4 << 10

// shortStrings is the JSON text raw with every string longer than
// longString bytes replaced by a short one, for the schema check: the
// schemas say nothing of long strings but that they are strings, and
// decoding them into values to check would copy every file's content.
// raw must be valid JSON; what is not is returned as it is, for the
// decoder to reject.
func shortStrings(raw []byte) []byte {
	if len(raw) <= longString {
		return raw
	}
	out := make([]byte, 0, 1024)
	for i := 0; i < len(raw); {
		if raw[i] != '"' {
			out = append(out, raw[i])
			i++
			continue
		}
		end := i + 1
		for end < len(raw) && raw[end] != '"' {
			if raw[end] == '\\' {
				end++
			}
			end++
		}
		if end >= len(raw) {
			return raw
		}
		if end-i > longString {
			out = append(out, `"(long)"`...)
		} else {
			out = append(out, raw[i:end+1]...)
		}
		i = end + 1
	}
	return out
}

// checkArguments validates a call's arguments against the tool's compiled
// input schema; the error lists every violation with where it is.
func checkArguments(schema *validator.Schema, req mcp.CallToolRequest) error {
	raw, decoded := req.Params.RawArguments, req.Params.Arguments
	if r, ok := decoded.(json.RawMessage); ok {
		if len(raw) == 0 {
			raw = r
		}
		decoded = nil
	}
	var args any = map[string]any{} // absent or null arguments are none
	switch raw = bytes.TrimSpace(raw); {
	case len(raw) > 0:
		if string(raw) == "null" {
			break
		}
		v, err := validator.UnmarshalJSON(bytes.NewReader(shortStrings(raw)))
		if err != nil {
			return fmt.Errorf("the arguments are not valid JSON: %v", err)
		}
		args = v
	case decoded != nil:
		b, err := json.Marshal(decoded)
		if err != nil {
			return err
		}
		if v, err := validator.UnmarshalJSON(bytes.NewReader(b)); err != nil {
			return err
		} else if v != nil {
			args = v
		}
	}
	err := schema.Validate(args)
	if err == nil {
		return nil
	}
	verr, ok := err.(*validator.ValidationError)
	if !ok {
		return err
	}
	var problems []string
	var walk func(*validator.ValidationError)
	walk = func(e *validator.ValidationError) {
		if len(e.Causes) == 0 {
			at := "the arguments"
			if len(e.InstanceLocation) > 0 {
				at = strings.Join(e.InstanceLocation, ".")
			}
			problems = append(problems, at+": "+e.ErrorKind.LocalizedString(printer))
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(verr)
	return fmt.Errorf("%s (the tool's input schema in tools/list describes every argument)", strings.Join(problems, "; "))
}
