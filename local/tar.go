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
	return writeTar(context.Background(), root, ".", w, true)
}

// ExtractTar unpacks a tar stream into the host directory dir (created if
// missing). Entries that would land outside it, through ".." or a symbolic
// link, are refused, as are devices and other special files.
func ExtractTar(r io.Reader, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	return extractTar(root, r, nil, nil)
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
		}
		var link string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = root.Readlink(name); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return nil // sockets and the like have no tar form; skip them
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
		f, err := root.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// extractTar unpacks r into root. admit, if set, may refuse a regular file
// of the given size; created, if set, runs on every entry made.
func extractTar(root *os.Root, r io.Reader, admit func(name string, size int64) error, created func(name string) error) error {
	if created == nil {
		created = func(string) error { return nil }
	}
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
			if err := created(d); err != nil {
				return err
			}
		}
		return nil
	}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the tar stream: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "/"))
		if name == "." {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			return &PathError{hdr.Name, "tar entry leaves the target directory; refused"}
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
			if admit != nil {
				if err := admit(name, hdr.Size); err != nil {
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
			if err == nil {
				err = created(name)
			}
			if err != nil {
				return rootError(name, err)
			}
			root.Chmod(name, mode)
		case tar.TypeSymlink:
			root.Remove(name)
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return rootError(name, err)
			}
			if err := created(name); err != nil {
				return err
			}
		default:
			return &PathError{hdr.Name, fmt.Sprintf("tar entry type %q is not supported (only files, directories and symbolic links)", hdr.Typeflag)}
		}
	}
}
