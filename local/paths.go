package local

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// WorkspaceDir is where a workspace machine sees its files.
const WorkspaceDir = "/workspace"

// MaxPathDepth and MaxPathBytes bound the paths a file operation takes:
// anything deeper is not a path a person or a program means, and each
// level costs the walk through it.
const (
	MaxPathDepth = 256
	MaxPathBytes = 4096
)

// checkPathSize refuses paths past MaxPathDepth or MaxPathBytes.
func checkPathSize(p string) error {
	if len(p) > MaxPathBytes {
		return &PathError{p[:64] + "…", fmt.Sprintf("is %d bytes long; paths may have at most %d", len(p), MaxPathBytes)}
	}
	if n := strings.Count(p, "/"); n > MaxPathDepth {
		return &PathError{p[:min(len(p), 64)] + "…", fmt.Sprintf("is %d directories deep; paths may be at most %d deep", n, MaxPathDepth)}
	}
	return nil
}

// rootError explains an os.Root refusal in the machine's terms.
func rootError(p string, err error) error {
	if err == nil {
		return nil
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "escapes") {
		return &PathError{p, "goes through a symbolic link that leads outside " + WorkspaceDir + "; refused"}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return &PathError{p, "no such file or directory"}
	}
	if pe != nil {
		return &PathError{p, pe.Err.Error()}
	}
	return fmt.Errorf("path %q: %w", p, err)
}
