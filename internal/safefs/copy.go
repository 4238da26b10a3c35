//go:build linux

package safefs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Copy copies the tree at src to dst, which must not exist yet: directories,
// regular files (sharing blocks where the filesystem can), symbolic links as
// links, FIFOs, overlay whiteouts (character devices 0:0), hard links as
// hard links, with modes, times and extended attributes, and owners when
// the process is root. Sockets and devices are left out.
//
// An entry that changes kind while it is copied (a directory swapped for a
// link, a file for a FIFO) is left out: it is never followed. A regular
// file is copied up to the size it had when opened, so a writer that keeps
// appending cannot make the copy endless. The copy is as consistent as the
// writers let it be: a file written during it may be caught half way.
func Copy(ctx context.Context, src, dst string) error {
	sfd, err := openDir(unix.AT_FDCWD, src)
	if err != nil {
		return relError("open", ".", err)
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return err
	}
	if err := unix.Mkdir(dst, 0o700); err != nil {
		return relError("create", ".", err)
	}
	dfd, err := openDir(unix.AT_FDCWD, dst)
	if err != nil {
		return relError("open copy of", ".", err)
	}
	defer unix.Close(dfd)
	c := &copier{ctx: ctx, owners: os.Geteuid() == 0, dstRoot: dfd, links: map[inode]string{}}
	if err := c.dir(sfd, dfd, ".", 1); err != nil {
		return err
	}
	return c.finish(sfd, dfd, ".", &st)
}

type copier struct {
	ctx     context.Context
	noClone bool             // the filesystem shares no blocks: stop asking
	owners  bool             // keep owners (root only)
	dstRoot int              // the copy's top directory
	links   map[inode]string // a hard-linked inode's first copy, relative to dstRoot
	buf     []byte           // for copies the kernel cannot do itself
}

func (c *copier) dir(sfd, dfd int, rel string, depth int) error {
	if depth > MaxDepth {
		return ErrTooDeep
	}
	return eachEntry(sfd, rel, func(name string, typ fs.FileMode) error {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		r := path.Join(rel, name)
		// Directories and files are opened without following links and
		// checked on the descriptor: the listing's type is enough to choose.
		switch {
		case typ == fs.ModeDir:
			return c.subdir(sfd, dfd, name, r, depth)
		case typ == 0:
			return c.file(sfd, dfd, name, r, nil)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(sfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return relError("stat", r, err)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			return c.subdir(sfd, dfd, name, r, depth)
		case unix.S_IFREG:
			return c.file(sfd, dfd, name, r, &st)
		case unix.S_IFLNK:
			return c.symlink(sfd, dfd, name, r, &st)
		case unix.S_IFIFO:
			return c.special(dfd, name, r, &st, unix.S_IFIFO, 0)
		case unix.S_IFCHR:
			if st.Rdev == 0 { // an overlay whiteout
				return c.special(dfd, name, r, &st, unix.S_IFCHR, 0)
			}
		}
		return nil // sockets and devices have no place in a copy
	})
}

func (c *copier) subdir(sfd, dfd int, name, rel string, depth int) error {
	sub, err := openDir(sfd, name)
	if err != nil {
		if swapped(err) {
			return nil
		}
		return relError("open", rel, err)
	}
	defer unix.Close(sub)
	var st unix.Stat_t
	if err := unix.Fstat(sub, &st); err != nil {
		return relError("stat", rel, err)
	}
	if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
		return relError("create", rel, err)
	}
	dsub, err := openDir(dfd, name)
	if err != nil {
		return relError("open copy of", rel, err)
	}
	defer unix.Close(dsub)
	if err := c.dir(sub, dsub, rel, depth+1); err != nil {
		return err
	}
	return c.finish(sub, dsub, rel, &st)
}

// finish gives a copied directory or file its source's attributes; the mode
// comes last but one, after the owner (chown clears set-id bits), and the
// times last.
func (c *copier) finish(sfd, dfd int, rel string, st *unix.Stat_t) error {
	if err := copyXattrs(sfd, dfd); err != nil {
		return relError("copy extended attributes of", rel, err)
	}
	if c.owners {
		if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
			return relError("chown", rel, err)
		}
	}
	if err := unix.Fchmod(dfd, st.Mode&0o7777); err != nil {
		return relError("chmod", rel, err)
	}
	if err := futimens(dfd, st.Atim, st.Mtim); err != nil {
		return relError("set times of", rel, err)
	}
	return nil
}

// futimens sets the times of an open file (utimensat with a NULL path).
func futimens(fd int, atime, mtime unix.Timespec) error {
	ts := [2]unix.Timespec{atime, mtime}
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func (c *copier) file(sfd, dfd int, name, rel string, _ *unix.Stat_t) error {
	in, err := unix.Openat(sfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if swapped(err) {
			return nil
		}
		return relError("open", rel, err)
	}
	defer unix.Close(in)
	var st unix.Stat_t
	if err := unix.Fstat(in, &st); err != nil {
		return relError("stat", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil // swapped for something else since it was listed
	}
	if st.Nlink > 1 {
		if first, ok := c.links[inode{st.Dev, st.Ino}]; ok {
			if err := unix.Linkat(c.dstRoot, first, dfd, name, 0); err != nil {
				return relError("link", rel, err)
			}
			return nil
		}
	}
	out, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return relError("create", rel, err)
	}
	defer unix.Close(out)
	if err := c.content(in, out, st.Size); err != nil {
		return relError("copy", rel, err)
	}
	if err := c.finish(in, out, rel, &st); err != nil {
		return err
	}
	if st.Nlink > 1 {
		c.links[inode{st.Dev, st.Ino}] = path.Join(".", rel)
	}
	return nil
}

// content copies size bytes: by sharing blocks (reflink) where the
// filesystem can, else in the kernel, else through a buffer.
func (c *copier) content(in, out int, size int64) error {
	if size == 0 {
		return nil
	}
	if !c.noClone {
		err := unix.IoctlFileClone(out, in)
		if err == nil {
			// A clone copies the whole file as it is now; keep to the size
			// that was seen, as the other ways do.
			return unix.Ftruncate(out, size)
		}
		c.noClone = errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EXDEV)
	}
	const chunk = 64 << 20
	var done int64
	for done < size {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		n, err := unix.CopyFileRange(in, nil, out, nil, int(min(chunk, size-done)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return c.buffered(in, out, done, size)
			}
			return err
		}
		if n == 0 {
			return nil // the file shrank
		}
		done += int64(n)
	}
	return nil
}

func (c *copier) buffered(in, out int, done, size int64) error {
	if c.buf == nil {
		c.buf = make([]byte, 1<<20)
	}
	for done < size {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		n, err := unix.Pread(in, c.buf[:min(int64(len(c.buf)), size-done)], done)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		if _, err := unix.Pwrite(out, c.buf[:n], done); err != nil {
			return err
		}
		done += int64(n)
	}
	return nil
}

func (c *copier) symlink(sfd, dfd int, name, rel string, st *unix.Stat_t) error {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(sfd, name, buf)
	if err != nil {
		if swapped(err) || errors.Is(err, unix.EINVAL) {
			return nil // no longer a link
		}
		return relError("read link", rel, err)
	}
	if err := unix.Symlinkat(string(buf[:n]), dfd, name); err != nil {
		return relError("create link", rel, err)
	}
	return c.nameAttrs(dfd, name, rel, st, false)
}

// special recreates a FIFO or an overlay whiteout.
func (c *copier) special(dfd int, name, rel string, st *unix.Stat_t, kind uint32, dev int) error {
	if err := unix.Mknodat(dfd, name, kind|0o600, dev); err != nil {
		return relError("create", rel, err)
	}
	return c.nameAttrs(dfd, name, rel, st, true)
}

// nameAttrs sets the attributes of an entry that cannot be opened for it
// (links, FIFOs, whiteouts), by name in the copy, which nobody else writes.
func (c *copier) nameAttrs(dfd int, name, rel string, st *unix.Stat_t, chmod bool) error {
	if c.owners {
		if err := unix.Fchownat(dfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return relError("chown", rel, err)
		}
	}
	if chmod {
		if err := unix.Fchmodat(dfd, name, st.Mode&0o7777, 0); err != nil {
			return relError("chmod", rel, err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return relError("set times of", rel, err)
	}
	return nil
}

// swapped reports an error that means the entry is no longer what it was
// when listed: gone, or replaced by a link or another kind of file.
func swapped(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) ||
		errors.Is(err, unix.ENXIO) || errors.Is(err, unix.EISDIR)
}

func copyXattrs(src, dst int) error {
	size, err := unix.Flistxattr(src, nil)
	if err != nil || size == 0 {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		return err
	}
	names := make([]byte, size)
	size, err = unix.Flistxattr(src, names)
	if err != nil {
		return err
	}
	var value []byte
	for _, name := range splitNames(names[:size]) {
		n, err := unix.Fgetxattr(src, name, nil)
		if err != nil {
			if errors.Is(err, unix.ENODATA) {
				continue
			}
			return err
		}
		if cap(value) < n {
			value = make([]byte, n)
		}
		n, err = unix.Fgetxattr(src, name, value[:n])
		if err != nil {
			return err
		}
		if err := unix.Fsetxattr(dst, name, value[:n], 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
			return err
		}
	}
	return nil
}

func splitNames(b []byte) []string {
	var out []string
	for len(b) > 0 {
		i := 0
		for i < len(b) && b[i] != 0 {
			i++
		}
		if i > 0 {
			out = append(out, string(b[:i]))
		}
		if i == len(b) {
			break
		}
		b = b[i+1:]
	}
	return out
}
