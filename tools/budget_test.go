package tools

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestShare(t *testing.T) {
	for _, c := range []struct {
		budget int
		sizes  []int
		want   []int
	}{
		{100, []int{10, 20}, []int{10, 20}},
		{100, []int{10, 500}, []int{10, 90}},
		{100, []int{500, 500}, []int{50, 50}},
		{100, []int{0, 500, 30, 0}, []int{0, 70, 30, 0}},
		{0, []int{5}, []int{0}},
	} {
		got := share(c.budget, c.sizes)
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("share(%d, %v) = %v; want %v", c.budget, c.sizes, got, c.want)
				break
			}
		}
	}
}

// write feeds a spool in pieces of n bytes.
func write(s *spool, b []byte, n int) {
	for len(b) > 0 {
		k := min(n, len(b))
		s.Write(b[:k])
		b = b[k:]
	}
}

func TestSpoolKeepsHeadTailAndEverything(t *testing.T) {
	var whole bytes.Buffer
	for i := 0; i < 100000; i++ {
		whole.WriteString(strings.Repeat("é", i%7) + "line\n")
	}
	for _, piece := range []int{1, 7, 4096, 1 << 20} {
		s := newSpool("stdout", t.TempDir(), 4*1000+1024)
		write(s, whole.Bytes(), piece)
		text, cut := s.render(1000, ".vmcp/output/x/stdout")
		if !cut || utf8.RuneCountInString(text) > 1000 || !utf8.ValidString(text) {
			t.Fatalf("pieces of %d: cut %v, %d characters, valid %v", piece, cut, utf8.RuneCountInString(text), utf8.ValidString(text))
		}
		if !strings.HasPrefix(text, "line\néline\n") || !strings.HasSuffix(text, "line\n") || strings.Count(text, "left out here") != 1 || !strings.Contains(text, ".vmcp/output/x/stdout") {
			t.Fatalf("pieces of %d: %q", piece, text)
		}
		got, _ := io.ReadAll(s.reader())
		if !bytes.Equal(got, whole.Bytes()) || s.lineCount() != 100000 {
			t.Fatalf("pieces of %d: the spool kept %d bytes of %d, %d lines", piece, len(got), whole.Len(), s.lineCount())
		}
		s.close()
	}
}

func TestSpoolSmallIsWhole(t *testing.T) {
	s := newSpool("stdout", t.TempDir(), 5000)
	s.Write([]byte("hello\nworld"))
	text, cut := s.render(100, "")
	if cut || text != "hello\nworld" || s.lineCount() != 2 || s.file != nil {
		t.Fatalf("%q cut=%v lines=%d file=%v", text, cut, s.lineCount(), s.file)
	}
	// Whole in memory but over the budget: head and tail of it.
	s = newSpool("value", t.TempDir(), 50000)
	s.Write([]byte("'" + strings.Repeat("z", 20000) + "'"))
	text, cut = s.render(1000, "v")
	if !cut || !strings.HasPrefix(text, "'zz") || !strings.HasSuffix(text, "zz'") || utf8.RuneCountInString(text) > 1000 {
		t.Fatalf("%q", text)
	}
}

func TestSpoolFlagsNotUTF8(t *testing.T) {
	s := newSpool("stdout", t.TempDir(), 5000)
	// A character split across writes is UTF-8.
	write(s, []byte("naïve ✓ done\n"), 1)
	if s.invalid || len(s.carry) != 0 {
		t.Fatal("valid UTF-8 in pieces was flagged")
	}
	s.Write([]byte{0xff, 0xfe, 'a', '\n'})
	text, _ := s.render(100, "")
	if !s.invalid || !strings.Contains(text, "\uFFFD") {
		t.Fatalf("invalid bytes: flagged %v, %q", s.invalid, text)
	}
}

func TestOutputBudgetArgument(t *testing.T) {
	s := &Service{maxOutputChars: 30000, maxOutputCharsLimit: 400000}
	n := func(v int) *int { return &v }
	if b, err := s.outputBudget(nil); b != 30000 || err != nil {
		t.Errorf("default: %d %v", b, err)
	}
	if b, err := s.outputBudget(n(5000)); b != 5000 || err != nil {
		t.Errorf("5000: %d %v", b, err)
	}
	for _, bad := range []int{-1, 0, 400001} {
		if _, err := s.outputBudget(n(bad)); err == nil || !strings.Contains(err.Error(), "max_output_chars") {
			t.Errorf("%d: %v", bad, err)
		}
	}
}
