//go:build linux

// Package safefs measures, copies and clears directory trees that code in a
// machine may be changing while the host works on them.
//
// Every step opens relative to a directory descriptor already held, with
// O_NOFOLLOW, so a directory swapped for a symbolic link in the middle of a
// walk (rename, RENAME_EXCHANGE) is never followed out of the tree; files
// are opened with O_NONBLOCK and checked with fstat on the open descriptor,
// so a FIFO or device swapped in cannot block or be read. Errors name paths
// relative to the tree, never the host path of the tree itself.
package safefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// MaxDepth is the deepest directory nesting the walks go into. A walk holds
// a descriptor per level, so a tree deeper than this is refused rather than
// followed down to the process's descriptor limit.
const MaxDepth = 1024

// ErrTooDeep is returned for a tree nested deeper than MaxDepth.
var ErrTooDeep = fmt.Errorf("the directory tree is nested deeper than %d levels", MaxDepth)

// Usage is what a tree takes on disk.
type Usage struct {
	Bytes   int64 // allocated blocks, each hard-linked inode counted once
	Entries int64 // names: files (each hard link), directories, symbolic links, the top directory included
}

// Measure adds up the disk space and the entries of the tree at dir.
func Measure(ctx context.Context, dir string) (Usage, error) {
	fd, err := openDir(unix.AT_FDCWD, dir)
	if err != nil {
		return Usage{}, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Usage{}, err
	}
	m := measurer{ctx: ctx, seen: map[inode]bool{}}
	m.u.Bytes, m.u.Entries = st.Blocks*512, 1
	err = m.dir(fd, ".", 1)
	return m.u, err
}

type inode struct{ dev, ino uint64 }

type measurer struct {
	ctx  context.Context
	u    Usage
	seen map[inode]bool // directories and hard-linked inodes already counted
}

func (m *measurer) dir(fd int, rel string, depth int) error {
	if depth > MaxDepth {
		return ErrTooDeep
	}
	return eachEntry(fd, rel, func(name string, _ fs.FileMode) error {
		if err := m.ctx.Err(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil // removed since it was listed
			}
			return relError("stat", path.Join(rel, name), err)
		}
		// A hard-linked file takes its blocks once; a directory seen twice
		// was renamed during the walk (directories cannot be hard-linked),
		// and is counted once.
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if k := (inode{st.Dev, st.Ino}); st.Nlink > 1 || isDir {
			if m.seen[k] {
				if !isDir {
					m.u.Entries++
				}
				return nil
			}
			m.seen[k] = true
		}
		m.u.Entries++
		m.u.Bytes += st.Blocks * 512
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return nil
		}
		sub, err := openDir(fd, name)
		if err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return nil // swapped or removed since it was listed: not ours to follow
			}
			return relError("open", path.Join(rel, name), err)
		}
		defer unix.Close(sub)
		return m.dir(sub, path.Join(rel, name), depth+1)
	})
}

// openDir opens a directory without following a symbolic link in its last
// component.
func openDir(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// eachEntry calls f with the name and type (from the listing: only a hint,
// never trusted for what is opened) of every entry of the directory fd, in
// batches so that a huge directory does not need its whole listing in
// memory.
func eachEntry(fd int, rel string, f func(name string, typ fs.FileMode) error) error {
	// A duplicate, so that closing the *os.File leaves fd to the caller.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	dir := os.NewFile(uintptr(dup), rel)
	defer dir.Close()
	for {
		entries, err := dir.ReadDir(1024)
		for _, e := range entries {
			if ferr := f(e.Name(), e.Type()); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return relError("list", rel, err)
		}
	}
}

// relError names a path relative to the tree, never the host's.
func relError(op, rel string, err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s %s: %w", op, rel, err)
}

// RemoveAll removes the tree at dir, including directories whose modes
// forbid it (an overlay's work directory leaves some without write
// permission): it makes every directory of the tree writable, through
// descriptors, and removes again.
func RemoveAll(dir string) error {
	err := os.RemoveAll(dir)
	if err == nil {
		return nil
	}
	fd, oerr := openDir(unix.AT_FDCWD, dir)
	if oerr != nil {
		return err
	}
	unlockDirs(fd, 1)
	unix.Close(fd)
	return os.RemoveAll(dir)
}

func unlockDirs(fd, depth int) {
	unix.Fchmod(fd, 0o700)
	if depth > MaxDepth {
		return
	}
	eachEntry(fd, ".", func(name string, _ fs.FileMode) error {
		if sub, err := openDir(fd, name); err == nil {
			unlockDirs(sub, depth+1)
			unix.Close(sub)
		}
		return nil
	})
}

// ShiftOwners moves the owners and groups of the tree at dir that lie in
// [from, from+size) to the same place in [to, to+size), through descriptors
// like the other walks. Set-id bits, which a change of owner clears, are
// put back.
func ShiftOwners(ctx context.Context, dir string, from, to, size int) error {
	fd, err := openDir(unix.AT_FDCWD, dir)
	if err != nil {
		return relError("open", ".", err)
	}
	defer unix.Close(fd)
	s := shifter{ctx: ctx, from: uint32(from), to: uint32(to), size: uint32(size)}
	if err := s.entry(unix.AT_FDCWD, dir, "."); err != nil {
		return err
	}
	return s.dir(fd, ".", 1)
}

type shifter struct {
	ctx            context.Context
	from, to, size uint32
}

func (s *shifter) move(id uint32) uint32 {
	if id-s.from < s.size { // unsigned: false below from too
		return id - s.from + s.to
	}
	return id
}

func (s *shifter) entry(dirfd int, name, rel string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return relError("stat", rel, err)
	}
	uid, gid := s.move(st.Uid), s.move(st.Gid)
	if uid == st.Uid && gid == st.Gid {
		return nil
	}
	if err := unix.Fchownat(dirfd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return relError("chown", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK && st.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		if err := unix.Fchmodat(dirfd, name, st.Mode&0o7777, 0); err != nil {
			return relError("chmod", rel, err)
		}
	}
	return nil
}

func (s *shifter) dir(fd int, rel string, depth int) error {
	if depth > MaxDepth {
		return ErrTooDeep
	}
	return eachEntry(fd, rel, func(name string, _ fs.FileMode) error {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		r := path.Join(rel, name)
		if err := s.entry(fd, name, r); err != nil {
			return err
		}
		sub, err := openDir(fd, name)
		if err != nil {
			return nil // not a directory
		}
		defer unix.Close(sub)
		return s.dir(sub, r, depth+1)
	})
}
