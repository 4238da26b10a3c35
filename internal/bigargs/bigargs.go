// Package bigargs keeps the large string arguments of a tool call (a file's
// content, a command's stdin) out of the MCP library's decoding, which
// copies every argument several times: the transport sets them aside,
// hands the library a message with a short placeholder in their place, and
// the tool's argument type takes the original bytes back by the
// placeholder. A placeholder carries a random key of its request, so a
// client cannot name another request's values; an unknown placeholder is
// an ordinary string.
package bigargs

import (
	"crypto/rand"
	"encoding/hex"
	"strconv"
	"strings"
	"sync"
)

// MinSize is the length (in bytes of JSON text) from which a string
// argument is set aside.
const MinSize = 64 << 10

// prefix starts every placeholder; the key and the value's index follow.
const prefix = "vmcp-bigarg:"

var (
	mu   sync.Mutex
	held = map[string][][]byte{} // by request key: the JSON strings set aside
)

// IsPlaceholder reports whether the JSON string v has the form of a
// placeholder (which Lookup may no longer know).
func IsPlaceholder(v []byte) bool {
	return len(v) <= 200 && strings.HasPrefix(string(v), `"`+prefix) && strings.HasSuffix(string(v), `"`)
}

// Lookup returns the JSON string (quotes included) that placeholder, a JSON
// string as it appears in the message, stands for.
func Lookup(placeholder []byte) ([]byte, bool) {
	if !IsPlaceholder(placeholder) {
		return nil, false
	}
	s := string(placeholder)
	key, index, ok := strings.Cut(s[1+len(prefix):len(s)-1], ":")
	if !ok {
		return nil, false
	}
	i, err := strconv.Atoi(index)
	if err != nil {
		return nil, false
	}
	mu.Lock()
	defer mu.Unlock()
	values := held[key]
	if i < 0 || i >= len(values) {
		return nil, false
	}
	return values[i], true
}

// SetAside returns msg, a JSON-RPC tools/call, with each string argument
// that large(tool, argument) accepts and that is at least MinSize long
// replaced by a placeholder; drop forgets the values (once the call has
// decoded its arguments or ended). When msg is not such a call, has no such
// argument or is not JSON it can read plainly, it returns msg itself and ok
// false (and the library then decodes, or rejects, the whole message).
// The values set aside are slices of msg, not copies.
func SetAside(msg []byte, large func(tool, argument string) bool) (small []byte, drop func(), ok bool) {
	if len(msg) < MinSize {
		return msg, nil, false
	}
	call, ok := scanCall(msg)
	if !ok || call.method != "tools/call" || call.name == "" {
		return msg, nil, false
	}
	var spans []span
	for _, a := range call.args {
		if a.end-a.start >= MinSize && msg[a.start] == '"' && large(call.name, a.key) {
			spans = append(spans, span{a.start, a.end})
		}
	}
	if len(spans) == 0 {
		return msg, nil, false
	}
	var k [16]byte
	rand.Read(k[:])
	key := hex.EncodeToString(k[:])
	values := make([][]byte, len(spans))
	size := len(msg)
	for i, s := range spans {
		values[i] = msg[s.start:s.end:s.end]
		size -= s.end - s.start
	}
	small = make([]byte, 0, size+len(spans)*(len(prefix)+len(key)+16))
	at := 0
	for i, s := range spans {
		small = append(small, msg[at:s.start]...)
		small = append(small, '"')
		small = append(small, prefix...)
		small = append(small, key...)
		small = append(small, ':')
		small = strconv.AppendInt(small, int64(i), 10)
		small = append(small, '"')
		at = s.end
	}
	small = append(small, msg[at:]...)
	mu.Lock()
	held[key] = values
	mu.Unlock()
	var once sync.Once
	return small, func() {
		once.Do(func() {
			mu.Lock()
			delete(held, key)
			mu.Unlock()
		})
	}, true
}

type span struct{ start, end int }

// argument is one member of params.arguments: its key and where its value
// lies in the message.
type argument struct {
	key        string
	start, end int
}

// call is what scanCall reads of a JSON-RPC request.
type call struct {
	method, name string
	args         []argument
}

// scanCall reads msg's method, params.name and the members of
// params.arguments without copying values. It gives up (ok false) on
// anything it does not read plainly: invalid JSON, escapes in keys, a key
// given twice.
func scanCall(msg []byte) (c call, ok bool) {
	s := scanner{b: msg}
	ok = s.object(func(key string) bool {
		switch key {
		case "method":
			v, ok := s.plainString()
			c.method = v
			return ok
		case "params":
			return s.params(&c)
		}
		return s.skip()
	})
	if !ok || !s.end() {
		return call{}, false
	}
	return c, true
}

// params reads the params object.
func (s *scanner) params(c *call) bool {
	return s.object(func(key string) bool {
		switch key {
		case "name":
			v, ok := s.plainString()
			c.name = v
			return ok
		case "arguments":
			return s.object(func(key string) bool {
				s.space()
				start := s.i
				if !s.skip() {
					return false
				}
				c.args = append(c.args, argument{key: key, start: start, end: s.i})
				return true
			})
		}
		return s.skip()
	})
}

// scanner walks JSON text; each method leaves i after what it read.
type scanner struct {
	b     []byte
	i     int
	depth int
}

const maxDepth = 1000

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// object reads an object, calling member with each key (read plainly)
// positioned before its value, which member must consume. A key given
// twice fails it: decoders differ on which one counts.
func (s *scanner) object(member func(key string) bool) bool {
	if !s.eat('{') {
		return false
	}
	if s.eat('}') {
		return true
	}
	var seen map[string]bool
	for {
		key, ok := s.plainString()
		if !ok || seen[key] {
			return false
		}
		if seen == nil {
			seen = map[string]bool{}
		}
		seen[key] = true
		if !s.eat(':') || !member(key) {
			return false
		}
		if s.eat('}') {
			return true
		}
		if !s.eat(',') {
			return false
		}
	}
}

// eat skips space and then c, if c is next.
func (s *scanner) eat(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// plainString reads a string without escapes.
func (s *scanner) plainString() (string, bool) {
	s.space()
	start := s.i
	if !s.str() {
		return "", false
	}
	v := s.b[start+1 : s.i-1]
	for _, c := range v {
		if c == '\\' {
			return "", false
		}
	}
	return string(v), true
}

// str skips a string, checking its escapes and that it holds no control
// characters, as the JSON grammar wants.
func (s *scanner) str() bool {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return false
	}
	for s.i++; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return true
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return false
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if s.i+4 >= len(s.b) {
					return false
				}
				for _, h := range s.b[s.i+1 : s.i+5] {
					if !isHex(h) {
						return false
					}
				}
				s.i += 4
			default:
				return false
			}
		case c < 0x20:
			return false
		}
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// skip skips any value. Numbers and literals are checked loosely: the
// library's decoder rejects what is wrong in them, and they are never set
// aside.
func (s *scanner) skip() bool {
	s.space()
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		return s.str()
	case c == '{':
		if s.depth++; s.depth > maxDepth {
			return false
		}
		defer func() { s.depth-- }()
		return s.object(func(string) bool { return s.skip() })
	case c == '[':
		if s.depth++; s.depth > maxDepth {
			return false
		}
		defer func() { s.depth-- }()
		s.i++
		if s.eat(']') {
			return true
		}
		for {
			if !s.skip() {
				return false
			}
			if s.eat(']') {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	default:
		start := s.i
		for s.i < len(s.b) && strings.IndexByte("+-.0123456789eEtruefalsn", s.b[s.i]) >= 0 {
			s.i++
		}
		return s.i > start
	}
}
