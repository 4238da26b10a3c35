package tools

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/vmcp-dev/vmcp/backend"
)

// Results are sized for an agent's context: all the text of one result
// (what the agent reads) fits a budget of characters, by default
// DefaultMaxOutputChars. Output past it keeps its head and tail, with one
// marker line where text was left out saying how much and where the whole
// of it is: the full streams of a call that was cut are saved in the
// machine, under outputDir, for download_file (offset, length) or a
// command to read.

const (
	// DefaultMaxOutputChars is the budget of a result's text unless the
	// server or the call says otherwise.
	DefaultMaxOutputChars = 30_000
	// DefaultMaxOutputCharsLimit is the most a call may ask for unless the
	// server says otherwise.
	DefaultMaxOutputCharsLimit = 400_000
	// outputDir holds the saved output of calls, one directory per call,
	// named so that they sort oldest first.
	outputDir = ".vmcp/output"
	// keepOutputs and keepOutputBytes bound what outputDir holds: older
	// calls' output is deleted past either (the newest call's is kept).
	keepOutputs     = 16
	keepOutputBytes = 256 << 20
	// maxSaved is the most of one stream saved in the machine; past it the
	// saved file is cut too, and the marker says so.
	maxSaved = 256 << 20
)

// OutputArg is the budget argument of the tools whose output can be large.
type OutputArg struct {
	MaxOutputChars *int `json:"max_output_chars,omitempty" jsonschema:"description=Most characters of text this result may carry (default: the server's\\, normally 30000). Longer output keeps its head and tail with a marker saying where the whole of it was saved in the machine."`
}

// outputBudget is the budget of a call that asked for perCall characters
// (nil: the server's default).
func (s *Service) outputBudget(perCall *int) (int, error) {
	switch {
	case perCall == nil:
		return s.maxOutputChars, nil
	case *perCall <= 0:
		return 0, fmt.Errorf("max_output_chars is %d; give a positive number of characters (at most %d), or leave it out for %d", *perCall, s.maxOutputCharsLimit, s.maxOutputChars)
	case *perCall > s.maxOutputCharsLimit:
		return 0, fmt.Errorf("max_output_chars %d is above this server's limit of %d; ask for at most that, and read the rest of a long output from the file the result names", *perCall, s.maxOutputCharsLimit)
	}
	return *perCall, nil
}

// spool takes a stream as it comes: it keeps the head and the tail in
// memory, counts bytes and lines, and keeps the whole of it (up to
// maxSaved) in a host file once it outgrows the head, to be saved in the
// machine if the result cuts it.
type spool struct {
	name string // stdout, stderr
	dir  string // where the host file goes

	mu      sync.Mutex
	keep    int // bytes of head, and of tail, kept in memory
	head    []byte
	tail    []byte // ring of the last keep bytes, from tailAt
	tailAt  int
	total   int64
	lines   int64
	last    byte
	invalid bool   // not UTF-8
	carry   []byte // an incomplete UTF-8 sequence at the end of the last write
	file    *os.File
	saved   int64 // bytes in file
	fileErr error
	cut     bool // the result shows only head and tail
	// ext is what the backend tells of a stream it kept in the machine
	// itself: head holds its first bytes, ext the rest (see setSaved).
	ext *backend.SavedStream
}

// setSaved takes what the backend tells of a stream it kept in the
// machine; the spool then holds only its head.
func (s *spool) setSaved(ss backend.SavedStream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss.Total < int64(len(s.head)) || (ss.Total > int64(len(s.head)) && len(ss.Tail) == 0) {
		return // not a whole account of the stream: go by what came
	}
	s.ext = &ss
	s.total, s.lines = ss.Total, ss.Lines
	if len(ss.Tail) > 0 {
		s.last = ss.Tail[len(ss.Tail)-1]
		t := ss.Tail
		for len(t) > 0 && !utf8.RuneStart(t[0]) {
			t = t[1:] // a character cut by the start of the tail
		}
		if !utf8.Valid(t) {
			s.invalid = true
		}
	}
}

func newSpool(name, dir string, keep int) *spool {
	return &spool{name: name, dir: dir, keep: keep}
}

// Write takes the next bytes of the stream; it fails only when the host
// file cannot be written, and then keeps counting.
func (s *spool) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(p)
	s.total += int64(n)
	s.lines += int64(bytes.Count(p, []byte{'\n'}))
	if n > 0 {
		s.last = p[n-1]
	}
	s.checkUTF8(p)
	if len(s.head) < s.keep {
		k := min(s.keep-len(s.head), len(p))
		s.head = append(s.head, p[:k]...)
		if s.total <= int64(s.keep) {
			return n, nil
		}
	}
	s.addTail(p)
	s.toFile(p)
	return n, nil
}

func (s *spool) checkUTF8(p []byte) {
	if s.invalid || len(p) == 0 {
		return
	}
	if len(s.carry) > 0 {
		// Complete the sequence the last write ended in.
		k := min(len(p), utf8.UTFMax)
		b := append(append([]byte(nil), s.carry...), p[:k]...)
		_, size := utf8.DecodeRune(b)
		if size <= len(s.carry) {
			if !utf8.FullRune(b) {
				s.carry = b
				return
			}
			s.invalid = true
			return
		}
		p = p[size-len(s.carry):]
		s.carry = nil
	}
	// An incomplete sequence at the end may complete in the next write.
	cut := len(p)
	for i := len(p) - 1; i >= 0 && i >= len(p)-utf8.UTFMax; i-- {
		if utf8.RuneStart(p[i]) {
			if !utf8.FullRune(p[i:]) {
				cut = i
			}
			break
		}
	}
	if !utf8.Valid(p[:cut]) {
		s.invalid = true
		return
	}
	s.carry = append(s.carry[:0], p[cut:]...)
}

func (s *spool) addTail(p []byte) {
	if len(p) >= s.keep {
		s.tail = append(s.tail[:0], p[len(p)-s.keep:]...)
		s.tailAt = 0
		return
	}
	if len(s.tail) < s.keep {
		room := s.keep - len(s.tail)
		k := min(room, len(p))
		s.tail = append(s.tail, p[:k]...)
		p = p[k:]
	}
	for len(p) > 0 {
		k := copy(s.tail[s.tailAt:], p)
		p = p[k:]
		s.tailAt = (s.tailAt + k) % s.keep
	}
}

// toFile keeps the stream in the host file; the first time, with the head
// that came before.
func (s *spool) toFile(p []byte) {
	if s.fileErr != nil || s.saved >= maxSaved {
		return
	}
	if s.file == nil {
		f, err := os.CreateTemp(s.dir, "vmcp-output-*")
		if err != nil {
			s.fileErr = err
			return
		}
		os.Remove(f.Name()) // gone with the descriptor, whatever happens
		s.file = f
		before := s.total - int64(len(p)) // bytes before p, all in head
		if _, err := f.Write(s.head[:before]); err != nil {
			s.fileErr = err
			return
		}
		s.saved = before
	}
	p = p[:min(int64(len(p)), maxSaved-s.saved)]
	k, err := s.file.Write(p)
	s.saved += int64(k)
	if err != nil {
		s.fileErr = err
	}
}

// tailBytes is the last keep bytes (or fewer) in order.
func (s *spool) tailBytes() []byte {
	if s.ext != nil {
		return s.ext.Tail
	}
	if len(s.tail) < s.keep {
		return s.tail
	}
	return append(append([]byte(nil), s.tail[s.tailAt:]...), s.tail[:s.tailAt]...)
}

// lineCount is the stream's lines: its newlines, and a last line without
// one.
func (s *spool) lineCount() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total > 0 && s.last != '\n' {
		return s.lines + 1
	}
	return s.lines
}

// whole reports whether the stream is all in memory (in head).
func (s *spool) whole() bool { return s.total <= int64(len(s.head)) }

// close frees the host file.
func (s *spool) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file != nil {
		s.file.Close()
		s.file = nil
	}
}

// reader gives what the spool holds of the whole stream: the host file,
// or the head when it all fitted.
func (s *spool) reader() io.Reader {
	if s.file != nil {
		return io.NewSectionReader(s.file, 0, s.saved)
	}
	return bytes.NewReader(s.head)
}

// size is the stream's length in characters as the budget counts them
// (see cost), as far as known: bytes past what is in memory count one
// each.
func (s *spool) size() int {
	if s.whole() {
		return cost(s.head)
	}
	return int(min(s.total, 1<<40))
}

// cost is what text takes of a budget: a character each, but two for
// those JSON escapes in two (a newline, a tab, a quote, a backslash) and
// six for other control characters, so that a result's JSON stays within
// twice its budget (text and structured content) whatever the output.
func cost(b []byte) int {
	n := 0
	for _, r := range string(b) {
		n += runeCost(r)
	}
	return n
}

func runeCost(r rune) int {
	switch {
	case r == '\n' || r == '\t' || r == '"' || r == '\\' || r == '\r':
		return 2
	case r < 0x20:
		return 6
	}
	return 1
}

// render is the stream's text within chars characters: whole, or head and
// tail with a marker line between (where names the saved file; "" when
// the output was not saved). It reports whether it cut.
func (s *spool) render(chars int, where string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.whole() && cost(s.head) <= chars {
		return strings.ToValidUTF8(string(s.head), "\uFFFD"), false
	}
	tail := s.tailBytes()
	if s.whole() {
		tail = s.head
	}
	return cutMiddle(s.head, tail, s.total, s.lines, chars, s.name, where), true
}

// cutMiddle is the first and last of a stream of total bytes (head and
// tail are its first and last bytes in memory) within chars characters,
// with one marker line where the rest was left out.
func cutMiddle(head, tail []byte, total, lines int64, chars int, name, where string) string {
	marker := func(left int64) string {
		m := fmt.Sprintf("\n[… %s bytes of %s left out here (%s in all, %s lines)", commas(left), name, commas(total), commas(lines))
		if where != "" {
			m += "; the whole of it is in the machine at " + where + ": read it with download_file (offset, length) or a command such as sed -n"
		} else {
			m += "; it could not be saved"
		}
		return m + " …]\n"
	}
	room := max(chars-cost([]byte(marker(total))), 0)
	h := firstChars(head, room*2/3)
	t := lastChars(tail, room-cost(h))
	left := total - int64(len(h)) - int64(len(t))
	if left < 0 { // head and tail overlap: the stream is in memory whole
		t = t[min(int64(len(t)), -left):]
		left = 0
	}
	return strings.ToValidUTF8(string(h), "\uFFFD") + marker(left) + strings.ToValidUTF8(string(t), "\uFFFD")
}

// firstChars is the longest prefix of b that costs at most n, cut after
// a newline when one is near the end.
func firstChars(b []byte, n int) []byte {
	i, k := 0, 0
	for i < len(b) {
		r, size := utf8.DecodeRune(b[i:])
		if k+runeCost(r) > n {
			break
		}
		i += size
		k += runeCost(r)
	}
	if j := bytes.LastIndexByte(b[:i], '\n'); j >= 0 && i-j < 200 && i < len(b) {
		i = j + 1
	}
	return b[:i]
}

// lastChars is the longest suffix of b that costs at most n, cut after a
// newline when one is near its start.
func lastChars(b []byte, n int) []byte {
	i, k := len(b), 0
	for i > 0 {
		r, size := utf8.DecodeLastRune(b[:i])
		if k+runeCost(r) > n {
			break
		}
		i -= size
		k += runeCost(r)
	}
	if i > 0 {
		if j := bytes.IndexByte(b[i:], '\n'); j >= 0 && j < 200 {
			i += j + 1
		}
	}
	return b[i:]
}

// commas writes n with thousands separators.
func commas(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[0] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// share divides budget characters among texts of the given sizes: each
// gets what it needs if all fit; otherwise the small ones get theirs and
// the rest is split evenly among the large ones.
func share(budget int, sizes []int) []int {
	out := make([]int, len(sizes))
	left, open := budget, 0
	for _, s := range sizes {
		if s > 0 {
			open++
		}
	}
	done := make([]bool, len(sizes))
	for open > 0 {
		even := left / open
		progressed := false
		for i, s := range sizes {
			if !done[i] && s > 0 && s <= even {
				out[i], done[i] = s, true
				left -= s
				open--
				progressed = true
			}
		}
		if !progressed {
			for i, s := range sizes {
				if !done[i] && s > 0 {
					out[i], done[i] = even, true
				}
			}
			break
		}
	}
	return out
}

// newOutputDir names the directory of a call's saved output: by time, so
// that they sort oldest first, and unique.
func newOutputDir() string {
	var r [3]byte
	rand.Read(r[:])
	return outputDir + "/" + time.Now().UTC().Format("20060102-150405.000") + "-" + hex.EncodeToString(r[:])
}

// save writes r to name in the call's directory of the machine.
func saveOutput(ctx context.Context, m backend.Machine, dir, name string, r io.Reader) (string, error) {
	fsm, ok := m.(backend.FileStore)
	if !ok {
		return "", &backend.UnsupportedError{Backend: m.Backend(), Capability: backend.Files}
	}
	p := dir + "/" + name
	if _, err := fsm.WriteFile(ctx, p, r, 0o600); err != nil {
		return "", err
	}
	return p, nil
}

// pruneOutputs deletes older calls' saved output past keepOutputs calls or
// keepOutputBytes, oldest first, always keeping dir (the newest).
func pruneOutputs(ctx context.Context, m backend.Machine) {
	sh, ok := m.(backend.CommandRunner)
	if !ok {
		return
	}
	script := fmt.Sprintf(`cd %s 2>/dev/null || exit 0
n=0; kb=0
for d in $(ls -1 | sort -r); do
  n=$((n+1)); kb=$((kb + $(du -sk -- "$d" | cut -f1)))
  if [ $n -gt 1 ] && { [ $n -gt %d ] || [ $kb -gt %d ]; }; then rm -rf -- "$d"; fi
done`, outputDir, keepOutputs, keepOutputBytes>>10)
	_, _ = sh.Run(ctx, backend.Command{Shell: script, Timeout: 30 * time.Second, MaxOutput: 4096})
}

// callOutput is the text of one call's result: its streams (stdout,
// stderr, and for Python the value and the error), sized together to the
// call's budget.
type callOutput struct {
	budget  int
	keep    int // bytes of each stream's head and tail kept on the host
	streams []*spool
	dir     string // in the machine, when the output was saved
	// saveDir is where the backend was asked to keep the streams itself
	// (backend.Command.SaveOutput).
	saveDir string
}

// savedBy takes what the backend tells of the streams it kept in the
// machine (nil: it kept none).
func (o *callOutput) savedBy(saved *[2]backend.SavedStream, names ...string) {
	if saved == nil {
		return
	}
	for i, n := range names {
		o.stream(n).setSaved(saved[i])
	}
}

// newCallOutput makes spools of the given names for a call with budget
// characters of text.
func (s *Service) newCallOutput(budget int, names ...string) *callOutput {
	// Four bytes a character at most: the head and tail kept in memory
	// always hold the characters the result shows.
	o := &callOutput{budget: budget, keep: 4*budget + 1024, saveDir: newOutputDir()}
	for _, n := range names {
		o.streams = append(o.streams, newSpool(n, s.spoolDir, o.keep))
	}
	return o
}

// stream is the spool of that name.
func (o *callOutput) stream(name string) *spool {
	for _, sp := range o.streams {
		if sp.name == name {
			return sp
		}
	}
	panic("no stream " + name)
}

// close frees the spools' host files.
func (o *callOutput) close() {
	for _, sp := range o.streams {
		sp.close()
	}
}

// finish renders every stream within its share of chars characters
// (chars: the budget less the result's other text). When any is cut, the
// whole of every stream is saved in the machine first, so that the marker
// can say where; a stream that could not be saved says so.
func (o *callOutput) finish(ctx context.Context, m backend.Machine, chars int, log func(error)) map[string]string {
	sizes := make([]int, len(o.streams))
	for i, sp := range o.streams {
		sizes[i] = sp.size()
	}
	shares := share(max(chars, 0), sizes)
	cut := false
	for i := range sizes {
		cut = cut || sizes[i] > shares[i]
	}
	where := map[string]string{}
	if cut {
		dir := o.saveDir
		for _, sp := range o.streams {
			sp.mu.Lock()
			empty, r, fileErr, partial := sp.total == 0, sp.reader(), sp.fileErr, sp.saved < sp.total && !sp.whole()
			ext, whole := sp.ext, sp.whole()
			sp.mu.Unlock()
			if empty {
				continue
			}
			if ext != nil && ext.Path != "" {
				// Kept in the machine by the backend already.
				p := ext.Path
				if ext.Partial {
					p += fmt.Sprintf(" (its first %s bytes", commas(maxSaved))
					if ext.Err != "" {
						p += "; " + ext.Err
					}
					p += ")"
				}
				where[sp.name], o.dir = p, dir
				continue
			}
			if ext != nil && !whole {
				log(fmt.Errorf("the machine could not keep the %s of a call: %s", sp.name, ext.Err))
				continue
			}
			if fileErr != nil {
				log(fmt.Errorf("keep the %s of a call on the host: %w", sp.name, fileErr))
				continue
			}
			p, err := saveOutput(ctx, m, dir, sp.name, r)
			if err != nil {
				log(fmt.Errorf("save the %s of a call in machine %s: %w", sp.name, m.ID(), err))
				continue
			}
			if partial {
				p += fmt.Sprintf(" (its first %d MiB)", maxSaved>>20)
			}
			where[sp.name] = p
			o.dir = dir
		}
		if o.dir != "" {
			pruneOutputs(ctx, m)
		}
	}
	out := map[string]string{}
	for i, sp := range o.streams {
		out[sp.name], sp.cut = sp.render(shares[i], where[sp.name])
	}
	return out
}

// facts are the structured fields of a stream: bytes, lines, whether it
// was cut and whether it was UTF-8.
type streamFacts struct {
	total, lines int64
	cut, notUTF8 bool
}

func (o *callOutput) facts(name string) streamFacts {
	sp := o.stream(name)
	lines := sp.lineCount()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	return streamFacts{total: sp.total, lines: lines, cut: sp.cut, notUTF8: sp.invalid || len(sp.carry) > 0}
}
