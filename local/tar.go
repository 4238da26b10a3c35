package local

import (
	"archive/tar"
	"context"
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

// WriteTar writes the host file or directory tree at hostPath to w as a tar
// stream, names relative to its parent ("dir/...").
func WriteTar(w io.Writer, hostPath string) error {
	hostPath = filepath.Clean(hostPath)
	root, err := os.OpenRoot(filepath.Dir(hostPath))
	if err != nil {
		return err
	}
	defer root.Close()
	return writeTar(context.Background(), root, filepath.Base(hostPath), w, false)
}

// WriteTarContents writes what is inside the host directory dir to w as a
// tar stream, with names relative to dir ("a.txt", "sub/b.txt").
func WriteTarContents(w io.Writer, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return WriteTarOf(w, root)
}

// WriteTarOf writes what is inside root to w as a tar stream, with names
// relative to it. Nothing outside root is read, and special files (FIFOs,
// devices, sockets) are left out without ever being opened for reading.
func WriteTarOf(w io.Writer, root *os.Root) error {
	return writeTar(context.Background(), root, ".", w, true)
}

// ExtractTar unpacks a tar stream into the host directory dir (created if
// missing): see ExtractTarInto.
func ExtractTar(r io.Reader, dir string) (skipped []string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	return ExtractTarInto(r, root, false)
}

// ExtractTarInto unpacks a tar stream of a machine's files into root on the
// host. Entries that would land outside it, through ".." or a symbolic link,
// are refused, as are devices and other special files; symbolic links that
// would point outside it (absolute, or climbing above it) are left out and
// returned, so that nothing planted in it leads elsewhere on the host. With
// stripTop, every name starts with one directory that stands for root
// itself (a tar of a directory made by CopyOut), which is removed.
func ExtractTarInto(r io.Reader, root *os.Root, stripTop bool) (skipped []string, err error) {
	err = extractTar(root, r, extractOptions{stripTop: stripTop, confineLinks: true, skipped: &skipped})
	return skipped, err
}

// writeTar writes rel (a file or a directory) of root as a tar stream, named
// from rel's parent down. With contents, rel "." gives root's contents under
// their own names; without, root itself is named "workspace".
func writeTar(ctx context.Context, root *os.Root, rel string, w io.Writer, contents bool) error {
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
			if contents {
				return nil // the directory itself: its contents follow
			}
			arcName = path.Base(WorkspaceDir)
		} else if rel == "." && !contents {
			arcName = path.Base(WorkspaceDir) + "/" + arcName // inside the home, named as it
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
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
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
			return &PathError{name, "changed into something other than a regular file while it was being read; refused"}
		}
		_, err = io.CopyN(tw, f, hdr.Size)
		if errors.Is(err, io.EOF) {
			return &PathError{name, "shrank while it was being read"}
		}
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

type extractOptions struct {
	admit        func(name string, size int64) error // may refuse a regular file of this size
	stripTop     bool                                // names start with a directory standing for root
	confineLinks bool                                // leave out links that point outside root
	skipped      *[]string                           // the links left out
}

// extractTar unpacks r into root.
func extractTar(root *os.Root, r io.Reader, o extractOptions) error {
	mkdirs := func(dir string) error {
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
		name := path.Clean(strings.TrimPrefix(hdr.Name, "/"))
		if err := checkPathSize(name); err != nil {
			return err
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			return &PathError{hdr.Name, "tar entry leaves the target directory; refused"}
		}
		if o.stripTop {
			top, rest, found := strings.Cut(name, "/")
			if !found {
				if hdr.Typeflag != tar.TypeDir || (topName != "" && top != topName) {
					return &PathError{hdr.Name, "tar entry is not inside the directory being copied; refused"}
				}
				topName = top
				continue
			}
			if topName != "" && top != topName {
				return &PathError{hdr.Name, "tar entry is not inside the directory being copied; refused"}
			}
			name = rest
		}
		if name == "." {
			continue
		}
		if err := mkdirs(path.Dir(name)); err != nil {
			return rootError(name, err)
		}
		mode := fs.FileMode(hdr.Mode).Perm()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := mkdirs(name); err != nil {
				return rootError(name, err)
			}
			root.Chmod(name, mode|0o700)
		case tar.TypeReg:
			if o.admit != nil {
				if err := o.admit(name, hdr.Size); err != nil {
					return err
				}
			}
			root.Remove(name) // never write through an existing symlink
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
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
		case tar.TypeSymlink:
			if o.confineLinks && linkLeaves(name, hdr.Linkname) {
				*o.skipped = append(*o.skipped, name)
				continue
			}
			root.Remove(name)
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return rootError(name, err)
			}
		default:
			return &PathError{hdr.Name, fmt.Sprintf("tar entry type %q is not supported (only files, directories and symbolic links)", hdr.Typeflag)}
		}
	}
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
