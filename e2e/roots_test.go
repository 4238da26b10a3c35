package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestClientRoots: when the client declares roots, local_path must lie under
// them as well as under the server's allowed roots — over the current
// protocol (roots asked for with a multi round-trip input request) and over
// an older one (a roots/list request from the server).
func TestClientRoots(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"", "2025-11-25"} {
		name := version
		if name == "" {
			name = "latest"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			root, mine, other := rootDirs(t)
			h := startWith(t, t.TempDir(), root, clientOptions{roots: []string{mine}, protocolVersion: version})

			var up struct {
				Bytes int64 `json:"bytes"`
			}
			h.ok(t, "upload_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(mine, "f.txt")}, &up)
			if up.Bytes != int64(len("from "+mine)) {
				t.Errorf("uploaded %d bytes", up.Bytes)
			}
			// Relative paths start at the client's first root.
			h.ok(t, "upload_file", map[string]any{"path": "b.txt", "local_path": "f.txt"}, &up)
			h.fails(t, "upload_file", map[string]any{"path": "c.txt", "local_path": filepath.Join(other, "f.txt")}, "roots your MCP client allows ("+mine+")")
			h.fails(t, "download_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(other, "copy.txt")}, "roots your MCP client allows")
			h.ok(t, "download_file", map[string]any{"path": "a.txt", "local_path": filepath.Join(mine, "copy.txt")}, nil)
			got, err := os.ReadFile(filepath.Join(mine, "copy.txt"))
			if err != nil || string(got) != "from "+mine {
				t.Errorf("downloaded %q, %v", got, err)
			}
			if _, err := os.Stat(filepath.Join(other, "copy.txt")); err == nil {
				t.Error("a refused download wrote its file")
			}
			// Content uploads do not involve the host and need no roots.
			h.ok(t, "upload_file", map[string]any{"path": "d.txt", "content": strings.Repeat("x", 10)}, nil)
		})
	}
}

// rootDirs makes a directory root holding two others, mine and other, each
// with a file f.txt that says "from <its directory>".
func rootDirs(t *testing.T) (root, mine, other string) {
	t.Helper()
	root = t.TempDir()
	mine, other = filepath.Join(root, "mine"), filepath.Join(root, "other")
	for _, d := range []string{mine, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "f.txt"), []byte("from "+d), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root, mine, other
}
