package tools

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/internal/openflag"
	"github.com/vmcp-dev/vmcp/internal/tarfs"
)

// UploadFileInput is upload_file's arguments.
type UploadFileInput struct {
	Path          string `json:"path" jsonschema:"description=Destination in the machine (relative paths start in the workspace). For a directory upload: the directory that receives its contents."`
	Content       Text   `json:"content,omitempty" jsonschema:"description=Text content of the file. Give exactly one of content / content_base64 / local_path."`
	ContentBase64 Text   `json:"content_base64,omitempty" jsonschema:"description=Binary content of the file\\, base64-encoded."`
	LocalPath     string `json:"local_path,omitempty" jsonschema:"description=A file or directory on the host to copy in; it must be inside the server's allowed roots (relative paths start at the first root)."`
	Machine       string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	CallTimeout
	SessionArg
}

// UploadFileOutput is upload_file's result.
type UploadFileOutput struct {
	SessionResult
	Machine string `json:"machine" jsonschema:"description=The machine the file was written to."`
	Path    string `json:"path" jsonschema:"description=The path written\\, as the machine sees it."`
	Bytes   int64  `json:"bytes" jsonschema:"description=Bytes written (for a directory: of all its files)."`
	SHA256  string `json:"sha256" jsonschema:"description=Hex SHA-256 of the file; for a directory\\, of its manifest (one 'path NUL sha256' line per file\\, sorted)."`
	Files   int    `json:"files,omitempty" jsonschema:"description=For a directory: how many files were copied."`
}

// DownloadFileInput is download_file's arguments.
type DownloadFileInput struct {
	Path           string `json:"path" jsonschema:"description=File (or\\, with local_path\\, directory) in the machine."`
	Machine        string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	LocalPath      string `json:"local_path,omitempty" jsonschema:"description=Save to this host path instead of returning the content. It must not exist yet and must be inside the server's allowed roots. Directories need it."`
	Offset         int64  `json:"offset,omitempty" jsonschema:"description=Byte offset in the file where the content returned starts (default 0). A result that does not reach the end of the file gives next_offset to continue from.,minimum=0"`
	Length         int64  `json:"length,omitempty" jsonschema:"description=Bytes to return from offset (default: what fits the result's budget). Text is never returned past the budget: the result says where it stopped (next_offset). Binary content that does not fit comes back as a resource_link to read with resources/read.,minimum=1"`
	MaxBytes       int64  `json:"max_bytes,omitempty" jsonschema:"description=Deprecated alias of length (0: not given).,minimum=0"`
	MaxOutputChars *int   `json:"max_output_chars,omitempty" jsonschema:"description=Most characters of text this result may carry (default: the server's\\, normally 30000). A text file's window is cut to fit; binary content is embedded only when its base64 fits (and is at most 256 KiB)\\, else linked."`
	CallTimeout
	SessionArg
}

// DownloadFileOutput is download_file's result.
type DownloadFileOutput struct {
	SessionResult
	Machine     string `json:"machine" jsonschema:"description=The machine the file came from."`
	Path        string `json:"path" jsonschema:"description=The path read."`
	Bytes       int64  `json:"bytes" jsonschema:"description=Size of the whole file (for a directory: of all its files)."`
	SHA256      string `json:"sha256" jsonschema:"description=Hex SHA-256 of the whole file; for a directory\\, of its manifest as upload_file computes it."`
	Offset      int64  `json:"offset" jsonschema:"description=Byte offset in the file of the first byte returned."`
	Length      int64  `json:"length" jsonschema:"description=Bytes of the file returned in the content (saved\\, with local_path; 0 for a resource_link)."`
	NextOffset  int64  `json:"next_offset,omitempty" jsonschema:"description=Where the next part of the file starts: pass it as offset to read on. Absent when the content reaches the end of the file."`
	Truncated   bool   `json:"truncated" jsonschema:"description=The content is only part of the file (a window from offset); false when it is the whole file or a resource_link to it."`
	Encoding    string `json:"encoding,omitempty" jsonschema:"description=How the content item carries the file: utf-8 (text)\\, base64 (an embedded blob) or resource_link (a link to read with resources/read).,enum=utf-8,enum=base64,enum=resource_link"`
	ResourceURI string `json:"resource_uri,omitempty" jsonschema:"description=The resource_link's URI: resources/read returns the file's bytes\\, at most 8 MiB per read; add ?offset=N&length=M for a range."`
	LocalPath   string `json:"local_path,omitempty" jsonschema:"description=Where the file or directory was saved on the host."`
	Files       int    `json:"files,omitempty" jsonschema:"description=For a directory: how many files were saved."`
}

const (
	// maxBlobChars is the most base64 a result embeds (within the
	// result's budget too); larger binary content is linked.
	maxBlobChars = 256 << 10
	// windowReserve is the part of the budget a text window leaves for the
	// marker, the summary and the notes (plus some per byte of the path,
	// which they name).
	windowReserve = 640
)

func (s *Service) fileTools() []server.ServerTool {
	return []server.ServerTool{
		newTool[UploadFileInput, UploadFileOutput](s, toolSpec{
			name:    "upload_file",
			timeout: 600 * time.Second,
			title:   "Upload a file",
			description: "Write a file into a machine from text (content), base64 (content_base64), or a host file or directory (local_path, only inside the server's allowed roots). " +
				"Replaces an existing file. Returns the bytes written and their SHA-256. Gives up after timeout_seconds (default 600).",
			destructive: true,
			idempotent:  true,
		}, s.uploadFile),
		newTool[DownloadFileInput, DownloadFileOutput](s, toolSpec{
			name:    "download_file",
			timeout: 600 * time.Second,
			title:   "Download a file",
			description: "Read a file from a machine. UTF-8 text comes back as text: past the result's budget (max_output_chars), a window of it with a marker line saying what was left out; offset and length choose the window, next_offset continues. " +
				"Anything else comes back as a base64 embedded blob when it fits, else as a resource_link to read with resources/read (at most 8 MiB per read; ?offset=N&length=M for a range). " +
				"With local_path, the file or directory is saved on the host instead (inside the allowed roots, never overwriting). Returns the file's size and SHA-256. Gives up after timeout_seconds (default 600).",
			idempotent: true,
		}, s.downloadFile),
	}
}

func (s *Service) uploadFile(ctx context.Context, req mcp.CallToolRequest, in UploadFileInput) (*mcp.CallToolResult, error) {
	given := 0
	for _, set := range []bool{in.Content.Set(), in.ContentBase64.Set(), in.LocalPath != ""} {
		if set {
			given++
		}
	}
	if given != 1 {
		return nil, errors.New("give exactly one of content, content_base64 or local_path")
	}
	if in.Path == "" {
		return nil, errors.New("missing path")
	}
	in.Path = homePath(in.Path)
	if err := backend.CheckPath(in.Path); err != nil {
		return nil, err
	}
	var src io.Reader
	var host *hostSource
	switch {
	case in.Content.Set():
		src = in.Content.Reader()
	case in.ContentBase64.Set():
		// Decoded as it is written: never a second copy of the content. A
		// first pass checks it, so that bad input writes nothing.
		if err := checkBase64(in.ContentBase64.Reader()); err != nil {
			return nil, err
		}
		src = base64Of(in.ContentBase64)
	default:
		access, ask := s.hostAccess(ctx, req, in.LocalPath)
		if ask != nil {
			return ask, nil
		}
		var err error
		if host, err = access.openSource(in.LocalPath); err != nil {
			return nil, err
		}
		defer host.Close()
		src = host.file
	}
	m, files, err := machineAs[backend.FileStore](ctx, s, in.Machine, backend.Files)
	if err != nil {
		return nil, err
	}
	if host != nil && host.dir != nil {
		return s.uploadDir(ctx, m.ID(), files, in.Path, host.dir)
	}
	res, err := files.WriteFile(ctx, in.Path, src, 0o644)
	if err != nil {
		return nil, err
	}
	out := UploadFileOutput{Machine: m.ID(), Path: res.Path, Bytes: res.Bytes, SHA256: res.SHA256}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Wrote %d bytes to %s (sha256 %s).", out.Bytes, out.Path, out.SHA256))), nil
}

func (s *Service) uploadDir(ctx context.Context, machine string, m backend.FileStore, dst string, hostDir *os.Root) (*mcp.CallToolResult, error) {
	files, size, digest, err := dirDigest(hostDir)
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarfs.Write(ctx, pw, hostDir, ".", tarfs.WriteOptions{Contents: true})) }()
	err = m.CopyIn(ctx, dst, pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return nil, err
	}
	out := UploadFileOutput{Machine: machine, Path: dst, Bytes: size, SHA256: digest, Files: files}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Copied %d %s (%d bytes) into %s (manifest sha256 %s).", files, plural(files, "file", "files"), size, dst, digest))), nil
}

// checkBase64 reads standard, padded base64 (line breaks allowed, as the
// decoder allows them) and says where it is not.
func checkBase64(r io.Reader) error {
	buf := make([]byte, 64<<10)
	var at, chars, pad int64 // bytes read, base64 characters, '=' seen
	for {
		n, err := r.Read(buf)
		for _, c := range buf[:n] {
			switch {
			case c == '\r' || c == '\n':
			case c == '=':
				pad++
				chars++
			case pad == 0 && ('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '+' || c == '/'):
				chars++
			default:
				return fmt.Errorf("content_base64 is not valid base64 (%q at byte %d); nothing was written", c, at)
			}
			at++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if chars%4 != 0 || pad > 2 {
		return errors.New("content_base64 is not valid base64 (it ends in the middle of a 4-character group: padding missing?); nothing was written")
	}
	return nil
}

// base64Of decodes content_base64 as it is read.
func base64Of(t Text) io.Reader {
	return &base64Reader{r: base64.NewDecoder(base64.StdEncoding, t.Reader())}
}

// base64Reader says which argument a base64 error is about.
type base64Reader struct{ r io.Reader }

func (b *base64Reader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	var ce base64.CorruptInputError
	if errors.As(err, &ce) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = errors.New("content_base64 is not valid base64")
	}
	return n, err
}

// dirDigest hashes a host directory's manifest: one "path NUL sha256 LF"
// line per regular file, in lexical order of the paths. Everything is read
// through dir, so nothing outside it is; special files are left out, as the
// tar of the directory leaves them out.
func dirDigest(dir *os.Root) (files int, size int64, digest string, err error) {
	manifest := sha256.New()
	err = fs.WalkDir(dir.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		f, err := dir.OpenFile(p, os.O_RDONLY|openflag.NonBlock, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
			return nil // swapped for something else since it was listed
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return err
		}
		files++
		size += n
		fmt.Fprintf(manifest, "%s\x00%x\n", p, h.Sum(nil))
		return nil
	})
	return files, size, hex.EncodeToString(manifest.Sum(nil)), err
}

func (s *Service) downloadFile(ctx context.Context, req mcp.CallToolRequest, in DownloadFileInput) (*mcp.CallToolResult, error) {
	if in.Path == "" {
		return nil, errors.New("missing path")
	}
	in.Path = homePath(in.Path)
	if err := backend.CheckPath(in.Path); err != nil {
		return nil, err
	}
	length, err := in.window()
	if err != nil {
		return nil, err
	}
	budget, err := s.outputBudget(in.MaxOutputChars)
	if err != nil {
		return nil, err
	}
	if budget <= 0 { // a Service made without NewService (a test)
		budget = DefaultMaxOutputChars
	}
	var target *hostTarget
	if in.LocalPath != "" {
		if in.Offset != 0 || in.Length != 0 {
			return nil, errors.New("offset and length choose the part of the file returned in the result; with local_path the whole file is saved: leave them out, or leave out local_path")
		}
		access, ask := s.hostAccess(ctx, req, in.LocalPath)
		if ask != nil {
			return ask, nil
		}
		t, err := access.openTarget(in.LocalPath)
		if err != nil {
			return nil, err
		}
		defer t.Close()
		target = t
	}
	m, files, err := machineAs[backend.FileStore](ctx, s, in.Machine, backend.Files)
	if err != nil {
		return nil, err
	}
	fi, err := files.Stat(ctx, in.Path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir {
		if target == nil {
			return nil, fmt.Errorf("%s is a directory: give local_path to save it on the host, or list it with exec_command", in.Path)
		}
		return s.downloadDir(ctx, m.ID(), files, in.Path, target)
	}
	if fi.Mode&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice) != 0 {
		return nil, fmt.Errorf("%s is not a regular file (%s): only files and directories can be downloaded", fi.Path, describeMode(fi.Mode))
	}
	if target != nil {
		return s.downloadToHost(ctx, m.ID(), files, in.Path, target)
	}
	if err := checkOffset(in.Offset, fi.Size, fi.Path); err != nil {
		return nil, err
	}
	plan := planWindow(budget, len(fi.Path))
	w := &fileWindow{from: in.Offset, keep: plan.keep(length), hash: sha256.New()}
	n, err := files.ReadFile(ctx, in.Path, w)
	if err != nil {
		return nil, err
	}
	if err := checkOffset(in.Offset, n, fi.Path); err != nil {
		return nil, fmt.Errorf("%w (it shrank while it was read)", err)
	}
	out := DownloadFileOutput{Machine: m.ID(), Path: fi.Path, Bytes: n, SHA256: hex.EncodeToString(w.hash.Sum(nil)), Offset: in.Offset}
	summary := fmt.Sprintf("%s: %d bytes, sha256 %s", out.Path, out.Bytes, out.SHA256)
	if win, ok := textWindow(w.buf, in.Offset, n, length, plan.room); ok {
		out.Encoding = "utf-8"
		out.Offset, out.Length = win.start, int64(len(win.text))
		end := win.start + out.Length
		out.Truncated = win.start > 0 || end < n
		if end < n {
			out.NextOffset = end
		}
		items := []mcp.Content{mcp.NewTextContent(string(win.text))}
		if out.Truncated {
			first := w.linesBefore + 1
			items = append(items, mcp.NewTextContent(windowMarker(out.Path, win.start, end, n, first, lastLine(first, win.text), w.lines())))
		}
		return structured(out, false, append(items, mcp.NewTextContent(summary))...), nil
	}
	// Binary: embedded when the part asked for fits, else linked.
	want := n - in.Offset
	if length > 0 {
		want = min(want, length)
	}
	if want > plan.blobBytes {
		out.Encoding = "resource_link"
		var rangeLength int64
		if length > 0 && in.Offset+length < n {
			rangeLength = length
		}
		out.ResourceURI = fileURI(m.ID(), fi.Path, in.Offset, rangeLength)
		mime := "application/octet-stream"
		if in.Offset == 0 {
			mime = http.DetectContentType(w.buf)
		}
		link := mcp.NewResourceLink(out.ResourceURI, path.Base(fi.Path),
			fmt.Sprintf("%s in machine %s (%d bytes); read it with resources/read, at most %d bytes per read: add ?offset=N&length=M to the URI for a range", fi.Path, m.ID(), n, maxResourceRead), mime)
		link.Size = &want
		summary += fmt.Sprintf(". The %s bytes asked for are binary and too large to embed in the result (at most %s bytes fit): they are linked as %s. Read them with resources/read (at most %s bytes per read; ?offset=N&length=M for a range), save the file on the host with local_path, or ask for a smaller part with offset and length.",
			commas(want), commas(plan.blobBytes), out.ResourceURI, commas(maxResourceRead))
		return structured(out, false, link, mcp.NewTextContent(summary)), nil
	}
	data := w.buf[:min(want, int64(len(w.buf)))] // shorter if it shrank
	want = int64(len(data))
	out.Encoding = "base64"
	out.Length = want
	end := in.Offset + want
	out.Truncated = in.Offset > 0 || end < n
	if end < n {
		out.NextOffset = end
	}
	mime := "application/octet-stream"
	if in.Offset == 0 {
		mime = http.DetectContentType(data)
	}
	item := mcp.NewEmbeddedResource(mcp.BlobResourceContents{
		URI:      "file://" + fi.Path,
		MIMEType: mime,
		Blob:     base64.StdEncoding.EncodeToString(data),
	})
	if out.Truncated {
		summary += fmt.Sprintf(" (bytes %d to %d are returned", in.Offset, end)
		if end < n {
			summary += fmt.Sprintf("; continue with offset=%d", end)
		}
		summary += ")"
	}
	return structured(out, false, item, mcp.NewTextContent(summary)), nil
}

// window is the length asked for (0: what fits), from length or its
// deprecated alias max_bytes.
func (in DownloadFileInput) window() (int64, error) {
	switch {
	case in.Offset < 0:
		return 0, fmt.Errorf("offset is %d; give a byte offset from 0 to the file's size", in.Offset)
	case in.Length < 0:
		return 0, fmt.Errorf("length is %d; give a positive number of bytes, or leave it out for what fits the result", in.Length)
	case in.MaxBytes < 0:
		return 0, fmt.Errorf("max_bytes is %d; give a positive number of bytes, or leave it out", in.MaxBytes)
	case in.Length > 0 && in.MaxBytes > 0 && in.Length != in.MaxBytes:
		return 0, fmt.Errorf("length is %d and max_bytes is %d; give only length (max_bytes is its old name)", in.Length, in.MaxBytes)
	case in.Length > 0:
		return in.Length, nil
	}
	return in.MaxBytes, nil
}

// checkOffset refuses an offset past the end of a file of size bytes.
func checkOffset(offset, size int64, p string) error {
	if offset > size {
		return fmt.Errorf("offset %d is past the end of %s, which has %d bytes; give an offset from 0 to %d", offset, p, size, size)
	}
	return nil
}

// windowPlan is how much of a file a result can carry.
type windowPlan struct {
	room      int   // characters of a text window
	blobBytes int64 // bytes of an embedded blob
}

// planWindow divides a budget of characters: a text window gets what the
// marker, summary and notes leave (those name the path, of pathLen bytes);
// a blob's base64 gets the budget, up to maxBlobChars.
func planWindow(budget, pathLen int) windowPlan {
	room := budget - windowReserve - 4*pathLen
	room = max(room, budget/4, 1)
	return windowPlan{room: room, blobBytes: int64(min(budget, maxBlobChars) / 4 * 3)}
}

// keep is how many bytes the result may need of length bytes (0: the
// rest of the file): a text window of room characters (up to 4 bytes each,
// and 3 more to find a character's start; an escaped character costs more
// than its bytes) or a blob.
func (p windowPlan) keep(length int64) int64 {
	k := max(4*int64(p.room)+utf8.UTFMax, p.blobBytes+1)
	if length > 0 {
		k = min(k, length+utf8.UTFMax-1)
	}
	return k
}

// fileWindow takes a whole file as it is read: it hashes it (when hash is
// set), counts its lines and those before from, and keeps the bytes
// [from, from+keep). With stop, it ends the read once it has them.
type fileWindow struct {
	from, keep  int64
	stop        bool
	hash        hash.Hash
	at          int64 // bytes seen
	buf         []byte
	newlines    int64 // in the file
	linesBefore int64 // newlines before from
	last        byte  // the last byte seen
}

// errWindowDone ends a read that has all it needs.
var errWindowDone = errors.New("the range was read")

func (w *fileWindow) Write(p []byte) (int, error) {
	if w.hash != nil {
		w.hash.Write(p)
	}
	n := int64(len(p))
	if n == 0 {
		return 0, nil
	}
	nl := int64(bytes.Count(p, []byte{'\n'}))
	w.newlines += nl
	w.last = p[n-1]
	switch {
	case w.at+n <= w.from:
		w.linesBefore += nl
	case w.at < w.from:
		w.linesBefore += int64(bytes.Count(p[:w.from-w.at], []byte{'\n'}))
	}
	if lo, hi := max(w.from-w.at, 0), min(w.from+w.keep-w.at, n); lo < hi {
		w.buf = append(w.buf, p[lo:hi]...)
	}
	w.at += n
	if w.stop && w.full() {
		return len(p), errWindowDone
	}
	return len(p), nil
}

// lines is how many lines the file has: its newlines, and a last line
// without one.
func (w *fileWindow) lines() int64 {
	if w.at > 0 && w.last != '\n' {
		return w.newlines + 1
	}
	return w.newlines
}

// full reports whether the window holds all keep bytes.
func (w *fileWindow) full() bool { return int64(len(w.buf)) >= w.keep }

// window is a part of a text file.
type window struct {
	start int64 // byte offset in the file of text
	text  []byte
}

// textWindow is the text that buf (the file's bytes from offset on, of a
// file of size bytes) gives: length bytes from offset (0: as many as fit),
// within room characters (as cost counts them: an escaped character counts
// for its escape), starting and ending on UTF-8 character boundaries (cut
// after a newline near the end when it is cut to fit).
// ok is false when buf is not UTF-8 text, or holds a NUL byte (as binary
// files do: a region of zeros reads as valid UTF-8).
func textWindow(buf []byte, offset, size, length int64, room int) (window, bool) {
	b := buf
	skip := 0
	if offset > 0 { // the window may start in the middle of a character
		for skip < len(b) && skip < utf8.UTFMax-1 && !utf8.RuneStart(b[skip]) {
			skip++
		}
		b = b[skip:]
	}
	if length > 0 {
		b = b[:max(min(int64(len(b)), length-int64(skip)), 0)]
	}
	if offset+int64(skip)+int64(len(b)) < size {
		b = trimPartialRune(b) // cut by the window, not by the end of the file
	}
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		return window{}, false
	}
	if cost(b) > room {
		cut := firstChars(b, room)
		if len(cut) == 0 && len(b) > 0 { // one character, whatever it costs: never stuck
			_, size := utf8.DecodeRune(b)
			cut = b[:size]
		}
		b = cut
	}
	return window{start: offset + int64(skip), text: b}, true
}

// lastLine is the number of the line that text (which starts on line
// first) ends on.
func lastLine(first int64, text []byte) int64 {
	if len(text) == 0 {
		return first
	}
	l := first + int64(bytes.Count(text, []byte{'\n'}))
	if text[len(text)-1] == '\n' {
		l--
	}
	return l
}

// windowMarker is the one line that follows a window of a text file: what
// was left out before and after it, and how to read the rest.
func windowMarker(p string, start, end, size, first, last, lines int64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[… %s has %s bytes (%s lines); this is bytes %s to %s", p, commas(size), commas(lines), commas(start), commas(end))
	if end > start {
		fmt.Fprintf(&b, " (lines %s to %s)", commas(first), commas(last))
	}
	fmt.Fprintf(&b, ": %s bytes before it and %s bytes after it were left out.", commas(start), commas(size-end))
	q := shellQuote(p)
	if end < size {
		fmt.Fprintf(&b, " Read on with download_file offset=%d, or with exec_command: sed -n '%d,%dp' %s, tail -c +%d %s | head -c 10000", end, last+1, last+200, q, end+1, q)
	} else {
		fmt.Fprintf(&b, " Read the start with download_file offset=0, or with exec_command: head -c %d %s", start, q)
	}
	b.WriteString(" …]")
	return b.String()
}

// shellQuote quotes p for a shell command when it needs it.
func shellQuote(p string) string {
	safe := p != ""
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@%,", r)) {
			safe = false
			break
		}
	}
	if safe {
		return p
	}
	return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
}

func (s *Service) downloadToHost(ctx context.Context, machine string, m backend.FileStore, p string, target *hostTarget) (*mcp.CallToolResult, error) {
	// Written under a temporary name, then linked to the target's name,
	// which fails if something appeared there meanwhile: never overwriting.
	tmpName := ".vmcp-download-" + randomSuffix()
	tmp, err := target.parent.OpenFile(tmpName, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("save %s: %w", target.path, err)
	}
	defer target.parent.Remove(tmpName)
	h := sha256.New()
	n, err := m.ReadFile(ctx, p, io.MultiWriter(tmp, h))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if err := target.parent.Link(tmpName, target.name); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, target.errExists()
		}
		return nil, fmt.Errorf("save %s: %w", target.path, err)
	}
	out := DownloadFileOutput{Machine: machine, Path: p, Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Length: n, LocalPath: target.path}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Saved %s (%d bytes, sha256 %s) to %s.", p, n, out.SHA256, target.path))), nil
}

func (s *Service) downloadDir(ctx context.Context, machine string, m backend.FileStore, p string, target *hostTarget) (*mcp.CallToolResult, error) {
	if err := target.parent.Mkdir(target.name, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, target.errExists()
		}
		return nil, fmt.Errorf("save %s: %w", target.path, err)
	}
	dir, err := target.parent.OpenRoot(target.name)
	if err == nil {
		defer dir.Close()
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(m.CopyOut(ctx, p, pw)) }()
		var skipped []string
		err = tarfs.Extract(pr, dir, tarfs.ExtractOptions{StripTop: true, ConfineLinks: true, Skipped: &skipped})
		pr.CloseWithError(io.ErrClosedPipe)
		if err == nil {
			return s.savedDir(machine, p, target.path, dir, skipped)
		}
	}
	target.parent.RemoveAll(target.name) // nothing half-saved stays
	return nil, err
}

func (s *Service) savedDir(machine, p, hostPath string, dir *os.Root, skipped []string) (*mcp.CallToolResult, error) {
	files, size, digest, err := dirDigest(dir)
	if err != nil {
		return nil, err
	}
	out := DownloadFileOutput{Machine: machine, Path: p, Bytes: size, SHA256: digest, Length: size, LocalPath: hostPath, Files: files}
	msg := fmt.Sprintf("Saved directory %s (%d %s, %d bytes, manifest sha256 %s) to %s.", p, files, plural(files, "file", "files"), size, digest, hostPath)
	if len(skipped) > 0 {
		msg += fmt.Sprintf(" Left out %d symbolic links that point outside the directory (%s).", len(skipped), strings.Join(firstN(skipped, 5), ", "))
	}
	return structured(out, false, mcp.NewTextContent(msg)), nil
}

// firstN is at most n of list, with "…" when some were left out.
func firstN(list []string, n int) []string {
	if len(list) <= n {
		return list
	}
	return append(append([]string(nil), list[:n]...), "…")
}

func randomSuffix() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// describeMode names the kind of a file that is neither regular nor a
// directory.
func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return m.String()
}

// trimPartialRune drops an incomplete UTF-8 sequence that a cut left at
// the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 1; i <= utf8.UTFMax && i <= len(b); i++ {
		if utf8.RuneStart(b[len(b)-i]) {
			if !utf8.FullRune(b[len(b)-i:]) {
				return b[:len(b)-i]
			}
			break
		}
	}
	return b
}
