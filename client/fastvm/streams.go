package fastvm

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// UploadReader streams r into a file of the VM at remotePath (created or
// replaced), like Upload for data that is not in a local file. size is the
// byte count, or -1 when unknown (the PUT is then chunked). Memory use is
// bounded whatever the size.
func (c *Client) UploadReader(ctx context.Context, vmID string, r io.Reader, size int64, remotePath string) error {
	fail := func(msg string, res *ExecResult, err error) error {
		return &FileTransferError{Op: "upload", VMID: vmID, Path: remotePath, Message: msg, ExecResult: res, Err: err}
	}
	p, err := c.PresignFile(ctx, vmID, remotePath)
	if err != nil {
		return fail("presigning the upload", nil, err)
	}
	if size > 0 && p.MaxUploadBytes > 0 && size > p.MaxUploadBytes {
		return fail(fmt.Sprintf("%d bytes is over the VM's limit of %d: launch the VM with a larger diskGiB", size, p.MaxUploadBytes), nil, nil)
	}
	if err := c.storagePut(ctx, p.UploadURL, r, size, "application/octet-stream"); err != nil {
		return fail("sending the data to storage", nil, err)
	}
	return c.fetchInto(ctx, vmID, p.DownloadURL, remotePath, fail)
}

// UploadArchive streams a tar.gz (read from tgz) into the VM and unpacks it
// into remoteDir (created if missing), merging with what is there.
func (c *Client) UploadArchive(ctx context.Context, vmID string, tgz io.Reader, remoteDir string) error {
	fail := func(msg string, res *ExecResult, err error) error {
		return &FileTransferError{Op: "upload", VMID: vmID, Path: remoteDir, Message: msg, ExecResult: res, Err: err}
	}
	stage := fmt.Sprintf("/var/tmp/fastvm-upload-%d-%s.tar.gz", os.Getpid(), randomHex(8))
	p, err := c.PresignFile(ctx, vmID, stage)
	if err != nil {
		return fail("presigning the upload", nil, err)
	}
	if err := c.storagePut(ctx, p.UploadURL, tgz, -1, "application/octet-stream"); err != nil {
		return fail("sending the archive to storage", nil, err)
	}
	if err := c.fetchInto(ctx, vmID, p.DownloadURL, stage, fail); err != nil {
		return err
	}
	res, err := c.Exec(ctx, vmID, ExecRequest{Command: []string{"sh", "-c", extractScript, "sh", remoteDir, stage}, TimeoutSec: c.transferSec()})
	if err != nil {
		return fail("unpacking the archive in the VM", nil, err)
	}
	if res.ExitCode != 0 || res.TimedOut {
		return fail("unpacking the archive in the VM failed", res, nil)
	}
	return nil
}

// DownloadWriter streams a file of the VM to w and returns its size. A
// missing path is a *FileTransferError matching fs.ErrNotExist; a directory
// is refused (use DownloadArchive).
func (c *Client) DownloadWriter(ctx context.Context, vmID, remotePath string, w io.Writer) (int64, error) {
	return c.downloadTo(ctx, vmID, remotePath, false, w)
}

// DownloadArchive streams a tar.gz of the contents of a directory of the VM
// (names relative to it) to w, and returns the archive's size.
func (c *Client) DownloadArchive(ctx context.Context, vmID, remoteDir string, w io.Writer) (int64, error) {
	return c.downloadTo(ctx, vmID, remoteDir, true, w)
}

func (c *Client) downloadTo(ctx context.Context, vmID, remotePath string, wantDir bool, w io.Writer) (int64, error) {
	fail := func(msg string, res *ExecResult, err error) error {
		return &FileTransferError{Op: "download", VMID: vmID, Path: remotePath, Message: msg, ExecResult: res, Err: err}
	}
	res, err := c.Exec(ctx, vmID, ExecRequest{Command: []string{"sh", "-c", probeScript, "sh", remotePath}, TimeoutSec: probeTimeoutSec})
	if err != nil {
		return 0, fail("checking the path in the VM", nil, err)
	}
	switch {
	case res.TimedOut:
		return 0, fail("checking the path in the VM timed out", res, nil)
	case res.ExitCode == 2:
		return 0, fail("no such file or directory in the VM", nil, fs.ErrNotExist)
	case res.ExitCode == 0 && !wantDir:
		return 0, fail("it is a directory; download it as an archive", nil, nil)
	case res.ExitCode == 1 && wantDir:
		return 0, fail("it is not a directory", nil, nil)
	case res.ExitCode != 0 && res.ExitCode != 1:
		return 0, fail("checking the path in the VM failed", res, nil)
	}
	p, err := c.PresignFile(ctx, vmID, remotePath)
	if err != nil {
		return 0, fail("presigning the download", nil, err)
	}
	script := putFileScript
	if wantDir {
		script = putDirScript
	}
	res, err = c.Exec(ctx, vmID, ExecRequest{Command: []string{"sh", "-c", script, "sh", remotePath, p.UploadURL}, TimeoutSec: c.transferSec()})
	if err != nil {
		return 0, fail("sending from the VM to storage", nil, err)
	}
	if res.ExitCode != 0 || res.TimedOut {
		return 0, fail("the VM could not send the data to storage", res, nil)
	}
	body, done, err := c.storageGet(ctx, p.DownloadURL)
	if err != nil {
		return 0, fail("reading from storage", nil, err)
	}
	defer done()
	n, err := io.Copy(w, body)
	if err != nil {
		return n, fail("copying the data", nil, err)
	}
	return n, nil
}
