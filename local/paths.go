package local

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/vmcp-dev/vmcp/internal/tarfs"
)

// WorkspaceDir is where a workspace machine sees its files.
const WorkspaceDir = "/workspace"

// MaxPathDepth and MaxPathBytes bound the paths a file operation takes
// (see tarfs).
const (
	MaxPathDepth = tarfs.MaxPathDepth
	MaxPathBytes = tarfs.MaxPathBytes
)

// checkPathSize refuses paths past MaxPathDepth or MaxPathBytes.
func checkPathSize(p string) error { return tarfs.CheckPathSize(p) }

// rootError explains an os.Root refusal in the machine's terms.
func rootError(p string, err error) error {
	if err == nil {
		return nil
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && strings.Contains(pe.Err.Error(), "escapes") {
		return &PathError{Path: p, Reason: "goes through a symbolic link that leads outside " + WorkspaceDir + "; refused"}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return &PathError{Path: p, Reason: "no such file or directory"}
	}
	if pe != nil {
		return &PathError{Path: p, Reason: pe.Err.Error()}
	}
	return fmt.Errorf("path %q: %w", p, err)
}
