// Package linesplit cuts an output stream into lines for live output
// callbacks: what the local engine and the REPL built on exec hand to
// OnOutput, alike.
package linesplit

import (
	"bytes"
	"unicode/utf8"
)

// MaxPiece is the longest piece of a line a Splitter emits: a longer line
// comes in pieces of at most this, each ending at the end of a UTF-8
// character (if the line is valid UTF-8).
const MaxPiece = 64 << 10

// Splitter cuts a stream into lines. The zero value is ready to use.
type Splitter struct{ partial []byte }

// Split takes the stream's next bytes and emits the lines they complete,
// without their newlines; emit must not keep the slice.
func (s *Splitter) Split(p []byte, emit func([]byte)) {
	for len(p) > 0 {
		room := MaxPiece - len(s.partial)
		if i := bytes.IndexByte(p[:min(len(p), room+1)], '\n'); i >= 0 {
			l := p[:i]
			if len(s.partial) > 0 {
				s.partial = append(s.partial, l...)
				l = s.partial
			}
			emit(l)
			s.partial = s.partial[:0]
			p = p[i+1:]
			continue
		}
		if len(p) < room {
			s.partial = append(s.partial, p...)
			return
		}
		s.partial = append(s.partial, p[:room]...)
		p = p[room:]
		cut := runeCut(s.partial)
		emit(s.partial[:cut])
		s.partial = append(s.partial[:0], s.partial[cut:]...)
	}
}

// Flush emits the last line, which had no newline, if any.
func (s *Splitter) Flush(emit func([]byte)) {
	if len(s.partial) > 0 {
		emit(s.partial)
		s.partial = nil
	}
}

// runeCut is where b may be cut without splitting its last character: an
// incomplete UTF-8 sequence at its end goes with the next piece.
func runeCut(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if i > 0 && !utf8.FullRune(b[i:]) {
				return i
			}
			break
		}
	}
	return len(b)
}
