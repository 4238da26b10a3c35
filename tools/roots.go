package tools

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

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
func (s *Service) errOutsideRoots(path string) error {
	if len(s.allowedRoots) == 0 {
		return fmt.Errorf("local_path %s refused: this server allows no host directories (start it with --allowed-roots)", path)
	}
	return fmt.Errorf("local_path %s refused: it is outside the allowed roots (%s)", path, strings.Join(s.allowedRoots, ", "))
}

// hostSource resolves an existing host path to read, refusing it unless it
// lies (after following symbolic links) under an allowed root.
func (s *Service) hostSource(p string) (string, error) {
	p, err := s.absHost(p)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("local_path %s does not exist", p)
		}
		return "", err
	}
	if !underRoot(s.allowedRoots, real) {
		return "", s.errOutsideRoots(p)
	}
	return real, nil
}

// hostTarget resolves a host path to create: its parent must exist under an
// allowed root, and the path itself must not exist yet.
func (s *Service) hostTarget(p string) (string, error) {
	p, err := s.absHost(p)
	if err != nil {
		return "", err
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("the directory of local_path %s does not exist", p)
		}
		return "", err
	}
	real := filepath.Join(parent, filepath.Base(p))
	if !underRoot(s.allowedRoots, real) || real == parent {
		return "", s.errOutsideRoots(p)
	}
	if _, err := os.Lstat(real); err == nil {
		return "", fmt.Errorf("local_path %s already exists; download_file does not overwrite host files", p)
	}
	return real, nil
}

// absHost makes a host path absolute: a relative one is relative to the
// first allowed root.
func (s *Service) absHost(p string) (string, error) {
	if filepath.IsAbs(p) {
		return filepath.Clean(p), nil
	}
	if len(s.allowedRoots) == 0 {
		return "", s.errOutsideRoots(p)
	}
	return filepath.Join(s.allowedRoots[0], p), nil
}
