package fastvm

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vmcp-dev/vmcp/internal/openflag"
)

// writeTar writes the contents of the directory root to w as a tar stream,
// names relative to it ("a.txt", "sub/", "sub/b.txt"), the way `tar -C dir
// .` roots them. Everything is read through root, so a link swapped in
// while the directory is read never leads outside it. Symbolic links are
// stored as links, not followed. Sockets, devices and FIFOs are skipped:
// they cannot be copied as data (and a FIFO swapped in for a file is never
// waited on). Owners are written as root (0:0) so that unpacking as root in
// the VM cannot fail on a uid that only exists here.
func writeTar(w io.Writer, root *os.Root) error {
	tw := tar.NewWriter(w)
	err := fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch mode := info.Mode(); {
		case mode&fs.ModeSymlink != 0:
			if link, err = root.Readlink(p); err != nil {
				return err
			}
		case !mode.IsRegular() && !mode.IsDir():
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = p
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		// Whole seconds and no access/change times keep plain USTAR headers.
		hdr.ModTime = hdr.ModTime.Truncate(1e9)
		hdr.AccessTime, hdr.ChangeTime = hdr.ModTime, hdr.ModTime
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		return copyFileInto(tw, root, p, hdr.Size)
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// copyFileInto writes exactly size bytes of the file p of root to w.
func copyFileInto(w io.Writer, root *os.Root, p string, size int64) error {
	f, err := root.OpenFile(p, os.O_RDONLY|openflag.NonBlock, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%s changed into something other than a file while it was being sent", p)
	}
	if _, err := io.CopyN(w, f, size); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("%s shrank while it was being sent", p)
		}
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// extractTar unpacks a tar stream into dir (created if missing), merging with
// its contents. Every operation goes through an os.Root, so nothing can be
// written outside dir: entries with absolute names or ".." are refused, and
// so is any entry that would pass through a symbolic link leading out. Links
// are recreated as they are (like tar). Devices and FIFOs are skipped.
func extractTar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the archive: %w", err)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if err := extractEntry(root, tr, hdr, name); err != nil {
			return fmt.Errorf("unpacking %q into %s: %w", hdr.Name, dir, err)
		}
	}
}

// entryName validates an archive name and returns it as a local relative path.
func entryName(name string) (string, error) {
	clean := path.Clean(strings.TrimPrefix(name, "./"))
	if path.IsAbs(name) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", fmt.Errorf("refusing archive entry %q: it would land outside the destination", name)
	}
	return filepath.FromSlash(clean), nil
}

// extractEntry creates one entry under root.
func extractEntry(root *os.Root, tr *tar.Reader, hdr *tar.Header, name string) error {
	perm := fs.FileMode(hdr.Mode).Perm()
	if hdr.Typeflag == tar.TypeDir {
		// Owner access always: a read-only directory would block its own entries.
		if err := root.MkdirAll(name, perm|0o700); err != nil {
			return err
		}
		return root.Chmod(name, perm|0o700)
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
	default:
		return nil
	}
	if parent := filepath.Dir(name); parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	// Replace, never write through, what is there: it may be a link.
	if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		return root.Symlink(hdr.Linkname, name)
	case tar.TypeLink:
		target, err := entryName(hdr.Linkname)
		if err != nil {
			return err
		}
		return root.Link(target, name)
	}
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm|0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, tr); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return root.Chtimes(name, hdr.ModTime, hdr.ModTime)
}
