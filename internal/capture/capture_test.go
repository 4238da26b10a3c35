package capture

import (
	"bytes"
	"strings"
	"testing"
)

func TestCappedKeepsTheHeadAndCountsAll(t *testing.T) {
	b := Capped{Max: 5}
	for _, p := range []string{"abc", "defg", "", "hi"} {
		if n, err := b.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	if b.String() != "abcde" || b.Total != 9 || !b.Truncated {
		t.Fatalf("kept %q of %d, truncated %v", b.String(), b.Total, b.Truncated)
	}
	var d Capped
	d.Write(bytes.Repeat([]byte("x"), DefaultMax))
	if d.Truncated || len(d.Bytes()) != DefaultMax {
		t.Fatalf("the default cap: %d kept, truncated %v", len(d.Bytes()), d.Truncated)
	}
	d.Write([]byte("y"))
	if !d.Truncated {
		t.Fatal("a byte past the default cap was not reported")
	}
}

func TestCutAndCounters(t *testing.T) {
	if s, cut := Cut("hello", 3); s != "hel" || !cut {
		t.Fatalf("Cut = %q, %v", s, cut)
	}
	if s, cut := Cut("hi", 3); s != "hi" || cut {
		t.Fatalf("Cut = %q, %v", s, cut)
	}
	var out strings.Builder
	w := &CountingWriter{W: &out}
	w.Write([]byte("abc"))
	r := &CountingReader{R: strings.NewReader("hello")}
	buf := make([]byte, 10)
	r.Read(buf)
	if w.N != 3 || r.N != 5 {
		t.Fatalf("counted %d written, %d read", w.N, r.N)
	}
}
