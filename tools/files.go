package tools

import (
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
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local"
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
	Path      string `json:"path" jsonschema:"description=File (or\\, with local_path\\, directory) in the machine."`
	Machine   string `json:"machine,omitempty" jsonschema:"description=Machine id; default: the default machine (created on first use)."`
	LocalPath string `json:"local_path,omitempty" jsonschema:"description=Save to this host path instead of returning the content. It must not exist yet and must be inside the server's allowed roots. Directories need it."`
	MaxBytes  int64  `json:"max_bytes,omitempty" jsonschema:"description=Return at most this many bytes of content (default 1048576); the rest is cut and truncated is true.,minimum=0"`
	CallTimeout
	SessionArg
}

// DownloadFileOutput is download_file's result.
type DownloadFileOutput struct {
	SessionResult
	Machine   string `json:"machine" jsonschema:"description=The machine the file came from."`
	Path      string `json:"path" jsonschema:"description=The path read."`
	Bytes     int64  `json:"bytes" jsonschema:"description=Size of the whole file (for a directory: of all its files)."`
	SHA256    string `json:"sha256" jsonschema:"description=Hex SHA-256 of the whole file; for a directory\\, of its manifest as upload_file computes it."`
	Truncated bool   `json:"truncated" jsonschema:"description=The content returned was cut at max_bytes."`
	Encoding  string `json:"encoding,omitempty" jsonschema:"description=How the content item carries the file: utf-8 (text) or base64 (an embedded blob).,enum=utf-8,enum=base64"`
	LocalPath string `json:"local_path,omitempty" jsonschema:"description=Where the file or directory was saved on the host."`
	Files     int    `json:"files,omitempty" jsonschema:"description=For a directory: how many files were saved."`
}

const defaultMaxBytes = 1 << 20

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
			description: "Read a file from a machine: UTF-8 text comes back as text, anything else as a base64 embedded blob, cut at max_bytes. " +
				"With local_path, the file or directory is saved on the host instead (inside the allowed roots, never overwriting). Returns its size and SHA-256. Gives up after timeout_seconds (default 600).",
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
	go func() { pw.CloseWithError(local.WriteTarOf(pw, hostDir)) }()
	err = m.CopyIn(ctx, dst, pr)
	pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return nil, err
	}
	out := UploadFileOutput{Machine: machine, Path: dst, Bytes: size, SHA256: digest, Files: files}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Copied %d files (%d bytes) into %s (manifest sha256 %s).", files, size, dst, digest))), nil
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
		f, err := dir.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
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
	if err := backend.CheckPath(in.Path); err != nil {
		return nil, err
	}
	var target *hostTarget
	if in.LocalPath != "" {
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
	max := in.MaxBytes
	if max <= 0 {
		max = defaultMaxBytes
	}
	w := &headWriter{max: max, hash: sha256.New()}
	n, err := files.ReadFile(ctx, in.Path, w)
	if err != nil {
		return nil, err
	}
	out := DownloadFileOutput{Machine: m.ID(), Path: fi.Path, Bytes: n, SHA256: hex.EncodeToString(w.hash.Sum(nil)), Truncated: n > int64(len(w.head))}
	data := w.head
	if out.Truncated {
		data = trimPartialRune(data)
	}
	var item mcp.Content
	if utf8.Valid(data) {
		out.Encoding = "utf-8"
		item = mcp.NewTextContent(string(data))
	} else {
		out.Encoding = "base64"
		item = mcp.NewEmbeddedResource(mcp.BlobResourceContents{
			URI:      "file://" + fi.Path,
			MIMEType: http.DetectContentType(data),
			Blob:     base64.StdEncoding.EncodeToString(w.head),
		})
	}
	summary := fmt.Sprintf("%s: %d bytes, sha256 %s", out.Path, out.Bytes, out.SHA256)
	if out.Truncated {
		summary += fmt.Sprintf(" (only the first %d bytes are returned)", len(w.head))
	}
	return structured(out, false, item, mcp.NewTextContent(summary)), nil
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
	out := DownloadFileOutput{Machine: machine, Path: p, Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), LocalPath: target.path}
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
		skipped, err = local.ExtractTarInto(pr, dir, true)
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
	out := DownloadFileOutput{Machine: machine, Path: p, Bytes: size, SHA256: digest, LocalPath: hostPath, Files: files}
	msg := fmt.Sprintf("Saved directory %s (%d files, %d bytes, manifest sha256 %s) to %s.", p, files, size, digest, hostPath)
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

// headWriter keeps the first max bytes written and hashes everything.
type headWriter struct {
	max  int64
	head []byte
	hash hash.Hash
}

func (w *headWriter) Write(p []byte) (int, error) {
	w.hash.Write(p)
	if room := w.max - int64(len(w.head)); room > 0 {
		if int64(len(p)) < room {
			room = int64(len(p))
		}
		w.head = append(w.head, p[:room]...)
	}
	return len(p), nil
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
