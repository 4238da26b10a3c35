package tools

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// Files of a machine are resources too, for content too large for a
// result: download_file links a large binary file (a resource_link) and
// resources/read returns its bytes, a range at a time.

const (
	// FileURITemplate names a file of a machine: the path as download_file
	// takes it, percent-encoded (download_file's links encode its slashes
	// too; reads take them either way). MCP has no range parameter: offset
	// and length in the query choose a range (?offset=N&length=M).
	FileURITemplate = "vmcp://machines/{machine}/files/{+path}"
	// maxResourceRead is the most bytes one resources/read returns.
	maxResourceRead = 8 << 20
	// resourceReadTimeout bounds one resources/read.
	resourceReadTimeout = 600 * time.Second
)

// fileURIUsage is how a file URI looks, for errors.
const fileURIUsage = "a file of a machine is vmcp://machines/<machine>/files/<path, percent-encoded>, with ?offset=N&length=M for a range (download_file's resource_link gives one)"

// registerResources adds the machines' files as a resource template.
func (s *Service) registerResources(srv *server.MCPServer) {
	srv.AddResourceTemplate(mcp.NewResourceTemplate(FileURITemplate, "machine-file",
		mcp.WithTemplateTitle("A file in a machine"),
		mcp.WithTemplateDescription("A file of one of your machines, as download_file links it when it is too large for a result. "+
			"path is the file's path in the machine (relative paths start in its home), percent-encoded (download_file's links encode / as %2F too). "+
			fmt.Sprintf("resources/read returns its bytes as a base64 blob, at most %d bytes (8 MiB) per read: ", maxResourceRead)+
			"add ?offset=N (a byte offset, default 0) and &length=M (bytes, default the rest up to that cap) for a range. "+
			"The blob's _meta gives offset, length, size (of the whole file) and next_offset (absent at the end). "+
			"Only the machines of the caller are readable."),
		mcp.WithTemplateMIMEType("application/octet-stream"),
	), s.readFileResource)
}

// fileURI is the URI of a file of a machine, from offset (0: the start)
// for length bytes (0: to the end).
func fileURI(machine, p string, offset, length int64) string {
	u := "vmcp://machines/" + uriEscape(machine) + "/files/" + uriEscape(p)
	var q []string
	if offset > 0 {
		q = append(q, "offset="+strconv.FormatInt(offset, 10))
	}
	if length > 0 {
		q = append(q, "length="+strconv.FormatInt(length, 10))
	}
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	return u
}

// uriEscape percent-encodes every byte of s but the unreserved ones (RFC
// 3986), as a URI template's simple expansion does.
func uriEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// fileRef is what a file URI names.
type fileRef struct {
	machine, path  string
	offset, length int64 // length 0: to the end
}

// parseFileURI reads a file URI. It accepts the path's slashes encoded or
// not.
func parseFileURI(raw string) (*fileRef, error) {
	bad := func(why string) error {
		return fmt.Errorf("malformed resource URI %q: %s; %s", raw, why, fileURIUsage)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, bad("it does not parse")
	}
	if u.Scheme != "vmcp" || u.Host != "machines" || u.User != nil || u.Opaque != "" {
		return nil, bad("not a vmcp://machines/ URI")
	}
	if u.Fragment != "" {
		return nil, bad("it has a fragment")
	}
	parts := strings.SplitN(strings.TrimPrefix(u.EscapedPath(), "/"), "/", 3)
	if len(parts) != 3 || parts[1] != "files" || parts[0] == "" || parts[2] == "" {
		return nil, bad("it names no machine and file")
	}
	ref := &fileRef{}
	if ref.machine, err = url.PathUnescape(parts[0]); err != nil || ref.machine == "" {
		return nil, bad("the machine is not percent-encoded properly")
	}
	if ref.path, err = url.PathUnescape(parts[2]); err != nil {
		return nil, bad("the path is not percent-encoded properly")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, bad("its query does not parse")
	}
	for k, v := range q {
		if k != "offset" && k != "length" {
			return nil, bad(fmt.Sprintf("unknown parameter %q (offset and length are the only ones)", k))
		}
		if len(v) != 1 {
			return nil, bad(fmt.Sprintf("%s is given %d times", k, len(v)))
		}
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || n < 0 {
			return nil, bad(fmt.Sprintf("%s is %q; give a number of bytes, 0 or more", k, v[0]))
		}
		if k == "offset" {
			ref.offset = n
		} else if n == 0 {
			return nil, bad("length is 0; give a positive number of bytes, or leave it out for the rest of the file")
		} else {
			ref.length = n
		}
	}
	return ref, nil
}

// readFileResource serves resources/read of a file URI. There is no
// conversation argument: the machine must be the caller's (its principal's),
// as when a tool names a machine; another principal's is "not found".
func (s *Service) readFileResource(ctx context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
	ref, err := parseFileURI(req.Params.URI)
	if err != nil {
		return nil, err
	}
	if err := backend.CheckPath(ref.path); err != nil {
		return nil, errors.New(errorText(err))
	}
	// A conversation that stands for the caller: naming a machine, the
	// broker checks its principal owns it, and creates nothing.
	c := &conversations.Conversation{Principal: s.principal(ctx)}
	notes := &callNotes{}
	ctx = context.WithValue(context.WithValue(ctx, conversationKey{}, c), notesKey{}, notes)
	res, err := s.runBounded(ctx, "resources/read", resourceReadTimeout, notes, s.broker.OnlyLocal(c.Principal), func(ctx context.Context) (*mcp.CallToolResult, error) {
		contents, err := s.readRange(ctx, req.Params.URI, ref)
		if err != nil {
			return nil, err
		}
		return &mcp.CallToolResult{StructuredContent: contents}, nil
	})
	if err != nil {
		return nil, errors.New(errorText(err))
	}
	return res.StructuredContent.([]mcp.ResourceContents), nil
}

// readRange reads the range of a file that ref names, at most
// maxResourceRead bytes.
func (s *Service) readRange(ctx context.Context, uri string, ref *fileRef) ([]mcp.ResourceContents, error) {
	_, files, err := machineAs[backend.FileStore](ctx, s, ref.machine, backend.Files)
	if err != nil {
		return nil, err
	}
	fi, err := files.Stat(ctx, ref.path)
	if err != nil {
		return nil, err
	}
	if fi.IsDir {
		return nil, fmt.Errorf("%s is a directory: only files are resources; list it with exec_command, or save it with download_file's local_path", fi.Path)
	}
	if fi.Mode&(fs.ModeNamedPipe|fs.ModeSocket|fs.ModeDevice) != 0 {
		return nil, fmt.Errorf("%s is not a regular file (%s)", fi.Path, describeMode(fi.Mode))
	}
	if err := checkOffset(ref.offset, fi.Size, fi.Path); err != nil {
		return nil, err
	}
	want := fi.Size - ref.offset
	if ref.length > 0 {
		want = min(want, ref.length)
	}
	want = min(want, maxResourceRead)
	w := &fileWindow{from: ref.offset, keep: want, stop: true, buf: make([]byte, 0, want)}
	n, err := files.ReadFile(ctx, ref.path, w)
	size := n
	if err != nil && w.full() {
		// It stopped there (errWindowDone): the rest was not read.
		err, size = nil, max(w.at, fi.Size)
	}
	if err != nil {
		return nil, err
	}
	if err := checkOffset(ref.offset, size, fi.Path); err != nil {
		return nil, fmt.Errorf("%w (it shrank while it was read)", err)
	}
	data := w.buf
	meta := map[string]any{"path": fi.Path, "offset": ref.offset, "length": len(data), "size": size}
	if end := ref.offset + int64(len(data)); end < size {
		meta["next_offset"] = end
	}
	mime := "application/octet-stream"
	if ref.offset == 0 {
		mime = http.DetectContentType(data)
	}
	return []mcp.ResourceContents{mcp.BlobResourceContents{URI: uri, MIMEType: mime, Blob: base64.StdEncoding.EncodeToString(data), Meta: meta}}, nil
}
