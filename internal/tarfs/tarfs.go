// Package tarfs writes directory trees as tar streams and unpacks tar
// streams into directories, always through an os.Root: no name in a tree
// or a stream, and no symbolic link swapped in while it is read, leads
// outside the directory. The engine, the FastVM client and the tools share
// it, so that one implementation carries these guarantees.
package tarfs

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/internal/openflag"
)

// MaxPathDepth and MaxPathBytes bound the names a stream may hold:
// anything deeper is not a path a person or a program means, and each
// level costs the walk through it.
const (
	MaxPathDepth = 256
	MaxPathBytes = 4096
)

// CheckPathSize refuses paths past MaxPathDepth or MaxPathBytes.
func CheckPathSize(p string) error {
	if len(p) > MaxPathBytes {
		return &backend.PathError{Path: p[:64] + "…", Reason: fmt.Sprintf("is %d bytes long; paths may have at most %d", len(p), MaxPathBytes)}
	}
	if n := strings.Count(p, "/"); n > MaxPathDepth {
		return &backend.PathError{Path: p[:min(len(p), 64)] + "…", Reason: fmt.Sprintf("is %d directories deep; paths may be at most %d deep", n, MaxPathDepth)}
	}
	return nil
}

// WriteOptions say how Write names what it writes.
type WriteOptions struct {
	// Contents writes what is inside rel under its own names ("a.txt",
	// "sub/b.txt"), without an entry for rel itself. Otherwise names start
	// with rel's last element ("data/...").
	Contents bool
	// RootName names root itself when rel is "." and Contents is off.
	RootName string
	// RootError turns an os.Root refusal into the caller's terms; nil
	// keeps it.
	RootError func(name string, err error) error
}

// Write writes rel (a file or a directory) of root to w as a tar stream.
// Symbolic links are stored as links, not followed; FIFOs, sockets and
// devices are left out without ever being opened for reading. Owners are
// root (0:0), and times whole seconds, so that the headers are plain USTAR
// and unpacking as root elsewhere cannot fail on a uid of this host.
func Write(ctx context.Context, w io.Writer, root *os.Root, rel string, o WriteOptions) error {
	rootError := o.RootError
	if rootError == nil {
		rootError = func(_ string, err error) error { return err }
	}
	tw := tar.NewWriter(w)
	base := path.Dir(rel)
	err := fs.WalkDir(root.FS(), rel, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return rootError(name, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		arcName := name
		if base != "." {
			arcName = strings.TrimPrefix(name, base+"/")
		}
		if arcName == "." {
			if o.Contents {
				return nil // the directory itself: its contents follow
			}
			arcName = o.RootName
		} else if rel == "." && !o.Contents {
			arcName = o.RootName + "/" + arcName
		}
		var link string
		switch mode := fi.Mode(); {
		case mode&fs.ModeSymlink != 0:
			if link, err = root.Readlink(name); err != nil {
				return err
			}
		case !mode.IsRegular() && !mode.IsDir():
			return nil // FIFOs, sockets and devices are not data: left out
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = arcName
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		hdr.ModTime = hdr.ModTime.Truncate(1e9)
		hdr.AccessTime, hdr.ChangeTime = hdr.ModTime, hdr.ModTime
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		// Opened without blocking, and checked on the descriptor: the entry
		// may have been swapped for a FIFO since it was listed.
		f, err := root.OpenFile(name, os.O_RDONLY|openflag.NonBlock, 0)
		if err != nil {
			return rootError(name, err)
		}
		defer f.Close()
		if ofi, err := f.Stat(); err != nil || !ofi.Mode().IsRegular() {
			return &backend.PathError{Path: name, Reason: "changed into something other than a regular file while it was being read; refused"}
		}
		_, err = io.CopyN(tw, f, hdr.Size)
		if errors.Is(err, io.EOF) {
			return &backend.PathError{Path: name, Reason: "shrank while it was being read"}
		}
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// ExtractOptions tune Extract.
type ExtractOptions struct {
	// Admit, if set, may refuse a regular file of this size (a quota).
	Admit func(name string, size int64) error
	// StripTop: every name starts with one directory that stands for root
	// itself (a tar of a directory written without Contents), removed.
	StripTop bool
	// ConfineLinks leaves out symbolic links that would point outside root
	// (absolute, or climbing above it), and adds their names to Skipped,
	// so that nothing unpacked leads elsewhere on the host.
	ConfineLinks bool
	// SkipSpecial leaves out devices and FIFOs; without it they are refused.
	SkipSpecial bool
	// Skipped, if set, receives the names left out.
	Skipped *[]string
	// RootError turns an os.Root refusal into the caller's terms; nil
	// keeps it.
	RootError func(name string, err error) error
}

// Extract unpacks a tar stream into root, merging with what is there.
// Entries that would land outside it, through ".." or a symbolic link, are
// refused; an existing file or link is replaced, never written through.
// Files, directories, symbolic links and hard links (to entries inside
// root) are unpacked, with their modes and modification times.
func Extract(r io.Reader, root *os.Root, o ExtractOptions) error {
	rootError := o.RootError
	if rootError == nil {
		rootError = func(name string, err error) error { return fmt.Errorf("unpack %q: %w", name, err) }
	}
	skip := func(name string) {
		if o.Skipped != nil {
			*o.Skipped = append(*o.Skipped, name)
		}
	}
	tr := tar.NewReader(r)
	var topName string
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the tar stream: %w", err)
		}
		name, err := entryName(hdr.Name)
		if err != nil {
			return err
		}
		if o.StripTop {
			top, rest, found := strings.Cut(name, "/")
			if !found {
				if hdr.Typeflag != tar.TypeDir || (topName != "" && top != topName) {
					return &backend.PathError{Path: hdr.Name, Reason: "tar entry is not inside the directory being copied; refused"}
				}
				topName = top
				continue
			}
			if topName != "" && top != topName {
				return &backend.PathError{Path: hdr.Name, Reason: "tar entry is not inside the directory being copied; refused"}
			}
			name = rest
		}
		if name == "." {
			continue
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			// Owner access always: a read-only directory would block its
			// own entries.
			if err := mkdirs(root, name); err != nil {
				return rootError(name, err)
			}
			root.Chmod(name, mode|0o700)
			continue
		case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			if o.SkipSpecial {
				skip(name)
				continue
			}
			fallthrough
		default:
			return &backend.PathError{Path: hdr.Name, Reason: fmt.Sprintf("tar entry type %q is not supported (only files, directories and links)", hdr.Typeflag)}
		}
		if err := mkdirs(root, path.Dir(name)); err != nil {
			return rootError(name, err)
		}
		// Replace, never write through, what is there: it may be a link.
		if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return rootError(name, err)
		}
		switch hdr.Typeflag {
		case tar.TypeSymlink:
			if o.ConfineLinks && linkLeaves(name, hdr.Linkname) {
				skip(name)
				continue
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return rootError(name, err)
			}
		case tar.TypeLink:
			target, err := entryName(hdr.Linkname)
			if err != nil {
				return err
			}
			if o.StripTop {
				_, target, _ = strings.Cut(target, "/")
			}
			if err := root.Link(target, name); err != nil {
				return rootError(name, err)
			}
		case tar.TypeReg:
			if o.Admit != nil {
				if err := o.Admit(name, hdr.Size); err != nil {
					return err
				}
			}
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode|0o600)
			if err != nil {
				return rootError(name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return rootError(name, err)
			}
			root.Chmod(name, mode)
			root.Chtimes(name, hdr.ModTime, hdr.ModTime)
		}
	}
}

// ExtractDir is Extract into the host directory dir, created if missing.
func ExtractDir(r io.Reader, dir string, o ExtractOptions) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return Extract(r, root, o)
}

// entryName validates a tar name and returns it cleaned and relative.
func entryName(name string) (string, error) {
	clean := path.Clean(name)
	if err := CheckPathSize(clean); err != nil {
		return "", err
	}
	if path.IsAbs(name) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", &backend.PathError{Path: name, Reason: "tar entry leaves the target directory; refused"}
	}
	return clean, nil
}

// mkdirs makes dir and its parents inside root; an existing file in the
// way is an error, not replaced.
func mkdirs(root *os.Root, dir string) error {
	parts := strings.Split(dir, "/")
	for i := range parts {
		d := strings.Join(parts[:i+1], "/")
		if d == "." {
			continue
		}
		err := root.Mkdir(d, 0o755)
		if errors.Is(err, fs.ErrExist) {
			fi, serr := root.Stat(d)
			if serr != nil {
				return serr
			}
			if !fi.IsDir() {
				return fmt.Errorf("%s is a file, not a directory", d)
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// linkLeaves reports whether a symbolic link at name pointing to target
// would lead outside the directory it is extracted into.
func linkLeaves(name, target string) bool {
	if path.IsAbs(target) {
		return true
	}
	to := path.Clean(path.Join(path.Dir(name), target))
	return to == ".." || strings.HasPrefix(to, "../")
}

// Rename copies the tar stream r to w with every name put under base (a
// stream of a directory's contents becomes one of the directory "base").
func Rename(w io.Writer, r io.Reader, base string) error {
	tw := tar.NewWriter(w)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read the tar stream: %w", err)
		}
		name := strings.TrimPrefix(path.Clean(h.Name), "./")
		if name == "." {
			h.Name = base + "/"
		} else {
			h.Name = path.Join(base, name)
			if h.Typeflag == tar.TypeDir {
				h.Name += "/"
			}
		}
		if h.Typeflag == tar.TypeLink {
			h.Linkname = path.Join(base, strings.TrimPrefix(path.Clean(h.Linkname), "./"))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	return tw.Close()
}
