package bigargs

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func contentOnly(tool, argument string) bool {
	return tool == "upload_file" && (argument == "content" || argument == "content_base64")
}

// restore puts the values set aside back in place of their placeholders.
func restore(t *testing.T, small []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	for {
		i := bytes.Index(small, []byte(`"`+prefix))
		if i < 0 {
			out.Write(small)
			return out.Bytes()
		}
		end := i + 1 + bytes.IndexByte(small[i+1:], '"') + 1
		v, ok := Lookup(small[i:end])
		if !ok {
			t.Fatalf("placeholder %s is unknown", small[i:end])
		}
		out.Write(small[:i])
		out.Write(v)
		small = small[end:]
	}
}

func sameJSON(t *testing.T, a, b []byte) {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(x, y) {
		t.Fatalf("the message changed:\n%.200s\n%.200s", a, b)
	}
}

func TestSetAsideLargeArguments(t *testing.T) {
	big := strings.Repeat("QUJD", MinSize/4+10)
	msg := []byte(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"upload_file","arguments":{"path":"a.bin","content_base64":"` + big + `","note":"` + big + `","nested":{"content":"` + big + `"}},"_meta":{"progressToken":1}}}`)
	small, drop, ok := SetAside(msg, contentOnly)
	if !ok {
		t.Fatal("nothing set aside")
	}
	if len(small) > len(msg)-len(big)+200 {
		t.Fatalf("the message shrank from %d to %d bytes only", len(msg), len(small))
	}
	if n := bytes.Count(small, []byte(prefix)); n != 1 {
		t.Fatalf("%d placeholders; want 1 (only content_base64 of upload_file, at the top of arguments)", n)
	}
	sameJSON(t, restore(t, small), msg)
	var req struct {
		Params struct {
			Arguments map[string]json.RawMessage `json:"arguments"`
		} `json:"params"`
	}
	if err := json.Unmarshal(small, &req); err != nil {
		t.Fatal(err)
	}
	placeholder := req.Params.Arguments["content_base64"]
	v, ok := Lookup(placeholder)
	if !ok || &v[0] != &msg[bytes.Index(msg, []byte(big))-1] {
		t.Fatal("the value is not the message's own bytes")
	}
	drop()
	if _, ok := Lookup(placeholder); ok {
		t.Fatal("a dropped value is still found")
	}
	if !IsPlaceholder(placeholder) {
		t.Fatal("a dropped placeholder no longer looks like one")
	}
}

// TestSetAsideLeavesWhatItCannotReadPlainly: messages that are not a tool
// call, or that the scanner could read differently from encoding/json, go
// to the library whole.
func TestSetAsideLeavesWhatItCannotReadPlainly(t *testing.T) {
	big := strings.Repeat("x", MinSize+1)
	for name, msg := range map[string]string{
		"small value":         `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"short","pad":"` + big + `"}}}`,
		"other tool":          `{"method":"tools/call","params":{"name":"run_python","arguments":{"content":"` + big + `"}}}`,
		"other method":        `{"method":"tools/list","params":{"name":"upload_file","arguments":{"content":"` + big + `"}}}`,
		"escaped key":         `{"method":"tools/call","params":{"name":"upload_file","arguments":{"con\u0074ent":"` + big + `"}}}`,
		"escaped method":      `{"method":"tools\/call","params":{"name":"upload_file","arguments":{"content":"` + big + `"}}}`,
		"duplicate arguments": `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `"},"arguments":{}}}`,
		"duplicate argument":  `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `","content":"x"}}}`,
		"duplicate params":    `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `"}},"params":{}}`,
		"not a string":        `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":["` + big + `"]}}}`,
		"trailing garbage":    `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `"}}}}`,
		"unterminated":        `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big,
		"control character":   `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + "\x01" + `"}}}`,
		"bad escape":          `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `\q"}}}`,
		"deep":                `{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `","x":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			small, _, ok := SetAside([]byte(msg), contentOnly)
			if ok || string(small) != msg {
				t.Fatal("the message was changed")
			}
		})
	}
}

func TestForgedPlaceholderIsUnknown(t *testing.T) {
	big := strings.Repeat("x", MinSize+1)
	msg := []byte(`{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `"}}}`)
	small, drop, ok := SetAside(msg, contentOnly)
	if !ok {
		t.Fatal("nothing set aside")
	}
	defer drop()
	i := bytes.Index(small, []byte(prefix))
	key := string(small[i+len(prefix) : i+len(prefix)+32])
	for _, forged := range []string{
		`"` + prefix + strings.Repeat("0", 32) + `:0"`,
		`"` + prefix + key + `:1"`,
		`"` + prefix + key + `:-1"`,
		`"` + prefix + key + `"`,
	} {
		if _, ok := Lookup([]byte(forged)); ok {
			t.Errorf("%s was found", forged)
		}
	}
}

// FuzzSetAside: whatever the message, putting the values back gives the
// message that came in, and a message set aside is valid JSON.
func FuzzSetAside(f *testing.F) {
	big := strings.Repeat("A", MinSize)
	f.Add(`{"method":"tools/call","params":{"name":"upload_file","arguments":{"content":"` + big + `"}}}`)
	f.Add(`{"method":"tools/call","params":{"arguments":{"content":"` + big + `\n\u00e9"},"name":"upload_file"},"id":1}`)
	f.Add(` { "params" : { "name" : "upload_file" , "arguments" : { "content_base64" : "` + big + `" , "n" : -1.5e3 } } , "method" : "tools/call" } `)
	f.Fuzz(func(t *testing.T, msg string) {
		if len(msg) < MinSize {
			msg += strings.Repeat(" ", MinSize-len(msg))
		}
		small, drop, ok := SetAside([]byte(msg), contentOnly)
		if !ok {
			return
		}
		defer drop()
		if !json.Valid(small) {
			t.Fatalf("invalid JSON set aside from %.200q", msg)
		}
		if got := restore(t, small); !bytes.Equal(got, []byte(msg)) {
			t.Fatalf("restored %.200q, want %.200q", got, msg)
		}
	})
}
