package tools

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/vmcp-dev/vmcp/internal/openflag"
)

// rootsInputID names the roots/list input request in a tool result that
// asks the client for its roots.
const rootsInputID = "roots"

// clientRoots are the host directories the MCP client allows, for a call
// that uses local_path. When the client declares the roots capability and
// its roots are not known yet, ask is the result to return instead: it asks
// the client for them (a multi round-trip input request; for clients older
// than protocol 2026-07-28, mcp-go turns it into a roots/list request and
// calls the tool again). Clients without the capability impose nothing.
func clientRoots(ctx context.Context, req mcp.CallToolRequest) (roots []string, ask *mcp.CallToolResult) {
	if !declaresRoots(ctx) {
		return nil, nil
	}
	res := server.RootsResponse(req.Params.InputResponses, rootsInputID)
	if res == nil {
		return nil, server.NewInputRequestBuilder("").Roots(rootsInputID).ToolResult()
	}
	for _, r := range res.Roots {
		u, err := url.Parse(r.URI)
		if err != nil || u.Scheme != "file" || !filepath.IsAbs(u.Path) {
			continue // not a host directory
		}
		if real, err := filepath.EvalSymlinks(filepath.Clean(u.Path)); err == nil {
			roots = append(roots, real)
		}
	}
	return roots, nil
}

// declaresRoots reports whether the client of this request has the roots
// capability: from the request's _meta on protocol 2026-07-28 and later,
// else from what it said at initialize.
func declaresRoots(ctx context.Context) bool {
	if info := server.RequestProtocolInfoFromContext(ctx); info != nil && info.Modern {
		return info.ClientCapabilities != nil && info.ClientCapabilities.Roots != nil
	}
	if s, ok := server.ClientSessionFromContext(ctx).(server.SessionWithClientInfo); ok {
		return s.GetClientCapabilities().Roots != nil
	}
	return false
}

// hostAccess is what a call may touch on the host: the server's allowed
// roots and, when the client declared roots, the client's too.
type hostAccess struct {
	allowed []string
	client  []string // empty: the client restricts nothing
}

// permits reports whether path (absolute, resolved) may be used.
func (a hostAccess) permits(path string) bool {
	if !underRoot(a.allowed, path) {
		return false
	}
	// A client that declares roots but lists none restricts nothing: most
	// clients declare the capability whether or not the user chose roots.
	return len(a.client) == 0 || underRoot(a.client, path)
}

// resolveRoots makes the allowed roots absolute with symbolic links
// resolved; each must be an existing directory.
func resolveRoots(roots []string) ([]string, error) {
	var out []string
	for _, r := range roots {
		if strings.TrimSpace(r) == "" {
			continue
		}
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, err
		}
		real, err := filepath.EvalSymlinks(abs)
		if err != nil {
			return nil, fmt.Errorf("allowed root %s: %w", r, err)
		}
		fi, err := os.Stat(real)
		if err != nil {
			return nil, fmt.Errorf("allowed root %s: %w", r, err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("allowed root %s is not a directory", r)
		}
		out = append(out, real)
	}
	return out, nil
}

// underRoot reports whether path (absolute, resolved) is one of the roots
// or inside one.
func underRoot(roots []string, path string) bool {
	for _, r := range roots {
		rel, err := filepath.Rel(r, path)
		if err != nil {
			continue
		}
		if rel == "." || (rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)) {
			return true
		}
	}
	return false
}

// errOutsideRoots explains a refused local path.
func (a hostAccess) errOutsideRoots(path string) error {
	if len(a.allowed) == 0 {
		return fmt.Errorf("local_path %s refused: this server allows no host directories (start it with --allowed-roots)", path)
	}
	if !underRoot(a.allowed, path) || len(a.client) == 0 {
		return fmt.Errorf("local_path %s refused: it is outside the allowed roots (%s)", path, strings.Join(a.allowed, ", "))
	}
	return fmt.Errorf("local_path %s refused: it is outside the roots your MCP client allows (%s); the server allows %s",
		path, strings.Join(a.client, ", "), strings.Join(a.allowed, ", "))
}

// The host side of local_path: a path is never checked and then used again
// by name. It is opened through the allowed root (or the client's root
// inside it) that holds it, with os.Root, which resolves every component
// relative to the root's descriptor and refuses any link that leads out:
// swapping a parent directory for a link between a check and a use has
// nothing to win.

// hostRoot opens the root that bounds the absolute, lexically permitted
// path p: the client's root that holds it when the client declared roots
// (opened through the allowed root, so it cannot lead outside that one),
// else the allowed root. rel is p relative to it.
func (a hostAccess) hostRoot(p string) (root *os.Root, rel string, err error) {
	allowed := containingRoot(a.allowed, p)
	base := allowed
	if c := containingRoot(a.client, p); len(a.client) > 0 && underRoot([]string{allowed}, c) {
		base = c
	}
	r, err := os.OpenRoot(allowed)
	if err != nil {
		return nil, "", fmt.Errorf("open the allowed root %s: %w", allowed, err)
	}
	if base != allowed {
		relBase, _ := filepath.Rel(allowed, base)
		sub, err := r.OpenRoot(relBase)
		r.Close()
		if err != nil {
			return nil, "", a.hostError(p, err)
		}
		r = sub
	}
	rel, _ = filepath.Rel(base, p)
	return r, rel, nil
}

// containingRoot is the longest of roots that holds p, or "".
func containingRoot(roots []string, p string) string {
	best := ""
	for _, r := range roots {
		if underRoot([]string{r}, p) && len(r) > len(best) {
			best = r
		}
	}
	return best
}

// hostError explains a failed open of the host path p.
func (a hostAccess) hostError(p string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("local_path %s does not exist", p)
	case strings.Contains(err.Error(), "path escapes from parent"):
		return a.errOutsideRoots(p)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("local_path %s: %w", p, err)
}

// hostSource is an existing host file or directory to read, opened within
// the roots. Close it when done.
type hostSource struct {
	path string   // absolute, as the call named it
	file *os.File // a regular file, or nil
	dir  *os.Root // a directory, or nil
}

// Close releases what the source holds.
func (s *hostSource) Close() {
	if s.file != nil {
		s.file.Close()
	}
	if s.dir != nil {
		s.dir.Close()
	}
}

// openSource opens the host path p to read. Anything that is not a regular
// file or a directory (a FIFO, a device) is refused without blocking.
func (a hostAccess) openSource(p string) (*hostSource, error) {
	p, err := a.absHost(p)
	if err != nil {
		return nil, err
	}
	root, rel, err := a.hostRoot(p)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.OpenFile(rel, os.O_RDONLY|openflag.NonBlock, 0)
	if err != nil {
		return nil, a.hostError(p, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, a.hostError(p, err)
	}
	switch {
	case fi.Mode().IsRegular():
		return &hostSource{path: p, file: f}, nil
	case fi.IsDir():
		f.Close()
		dir, err := root.OpenRoot(rel)
		if err != nil {
			return nil, a.hostError(p, err)
		}
		return &hostSource{path: p, dir: dir}, nil
	}
	f.Close()
	return nil, fmt.Errorf("local_path %s is not a regular file or a directory", p)
}

// hostTarget is a host path to create, in a directory opened within the
// roots.
type hostTarget struct {
	path   string   // absolute, as the call named it
	parent *os.Root // its directory
	name   string   // its name in parent
}

// openTarget opens the directory of the host path p, which must exist
// under the roots while p itself must not.
func (a hostAccess) openTarget(p string) (*hostTarget, error) {
	p, err := a.absHost(p)
	if err != nil {
		return nil, err
	}
	root, rel, err := a.hostRoot(p)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if rel == "." {
		return nil, a.errOutsideRoots(p)
	}
	parent, err := root.OpenRoot(filepath.Dir(rel))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("the directory of local_path %s does not exist", p)
		}
		return nil, a.hostError(p, err)
	}
	t := &hostTarget{path: p, parent: parent, name: filepath.Base(rel)}
	if _, err := parent.Lstat(t.name); err == nil {
		parent.Close()
		return nil, t.errExists()
	}
	return t, nil
}

func (t *hostTarget) errExists() error {
	return fmt.Errorf("local_path %s already exists; download_file does not overwrite host files", t.path)
}

// Close releases the target's directory.
func (t *hostTarget) Close() { t.parent.Close() }

// absHost makes a host path absolute (a relative one is relative to the
// client's first root, else the first allowed root) and refuses it when it
// is outside the roots as written, before anything looks at the host: an
// error must not tell whether a path outside the roots exists. The callers
// then open it through the roots, which refuses links that lead out.
func (a hostAccess) absHost(p string) (string, error) {
	if len(a.allowed) == 0 {
		return "", a.errOutsideRoots(p)
	}
	if !filepath.IsAbs(p) {
		base := append(append([]string(nil), a.client...), a.allowed...)
		p = filepath.Join(base[0], p)
	}
	p = filepath.Clean(p)
	if !a.permits(p) {
		return "", a.errOutsideRoots(p)
	}
	return p, nil
}

// hostAccess gathers the roots that bound local_path for this call; ask is
// non-nil when the client must be asked for its roots first.
// The client is asked only for a path that the server's own roots allow:
// a path refused anyway costs no round trip.
func (s *Service) hostAccess(ctx context.Context, req mcp.CallToolRequest, path string) (access hostAccess, ask *mcp.CallToolResult) {
	access = hostAccess{allowed: s.allowedRoots}
	if c, ok := ctx.Value(clientKey{}).(*client); ok {
		access.allowed = c.allowedRoots // a stdio client's: its user's own
	} else if ep, ok := ctx.Value(endpointKey{}).(*endpoint); ok {
		access.allowed = principalRoots(ep.allowedRoots, conversationFrom(ctx).Principal)
	} else if s.rootsPerPrincipal {
		access.allowed = principalRoots(s.allowedRoots, conversationFrom(ctx).Principal)
	}
	if _, err := access.absHost(path); err != nil {
		return access, nil
	}
	access.client, ask = clientRoots(ctx, req)
	return access, ask
}

// principalRoots are a principal's own directories under each allowed root
// (made on first use): on the hosted endpoint, what one principal saves
// with local_path, another cannot read or overwrite.
func principalRoots(roots []string, principal string) []string {
	name := principalDir(principal)
	var out []string
	for _, r := range roots {
		// Made through the root, so that a link named like the principal
		// cannot send the directory elsewhere.
		if root, err := os.OpenRoot(r); err == nil {
			root.Mkdir(name, 0o700)
			fi, err := root.Lstat(name)
			root.Close()
			if err != nil || !fi.IsDir() {
				continue
			}
		}
		out = append(out, filepath.Join(r, name))
	}
	return out
}

// principalDir names a principal's directory: the principal itself when it
// is a plain name, else "~" and a hash of it ("~" is never in a plain name,
// so the two kinds cannot meet).
func principalDir(principal string) string {
	plain := principal != "" && len(principal) <= 64 && principal != "." && principal != ".."
	for _, r := range principal {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._@-", r)) {
			plain = false
		}
	}
	if plain {
		return principal
	}
	sum := sha256.Sum256([]byte(principal))
	return "~" + hex.EncodeToString(sum[:16])
}
