// Package capture keeps what a result holds of an output stream: its first
// bytes up to a cap, and how much there was. The engine and the backends
// built on other services share it, so that every backend cuts output the
// same way and at the same default.
package capture

import "io"

// DefaultMax is how much of each stream a command's or an instruction's
// result keeps when the caller sets no limit; the tools cut what reaches
// the agent much shorter, and the whole stays in the machine.
const DefaultMax = 1 << 20

// Capped keeps the first Max bytes written to it (DefaultMax if Max is 0)
// and counts them all.
type Capped struct {
	Max       int
	Total     int64 // every byte written
	Truncated bool  // some were not kept
	buf       []byte
}

// Write keeps what fits and counts the rest; it never fails.
func (b *Capped) Write(p []byte) (int, error) {
	if b.Max == 0 {
		b.Max = DefaultMax
	}
	b.Total += int64(len(p))
	room := b.Max - len(b.buf)
	if room <= 0 {
		b.Truncated = b.Truncated || len(p) > 0
		return len(p), nil
	}
	kept := p
	if len(kept) > room {
		kept, b.Truncated = kept[:room], true
	}
	b.buf = append(b.buf, kept...)
	return len(p), nil
}

// Bytes is what was kept; the caller must not modify it.
func (b *Capped) Bytes() []byte { return b.buf }

// String is what was kept.
func (b *Capped) String() string { return string(b.buf) }

// Cut cuts s to max bytes, reporting whether it did.
func Cut(s string, max int) (string, bool) {
	if len(s) > max {
		return s[:max], true
	}
	return s, false
}

// CountingWriter counts what it passes to W.
type CountingWriter struct {
	W io.Writer
	N int64
}

func (c *CountingWriter) Write(p []byte) (int, error) {
	n, err := c.W.Write(p)
	c.N += int64(n)
	return n, err
}

// CountingReader counts what it reads from R.
type CountingReader struct {
	R io.Reader
	N int64
}

func (c *CountingReader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	return n, err
}
