package fastvm

import (
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/internal/tarfs"
)

// storageIdleTimeout ends a presigned PUT or GET that makes no progress for
// this long. Transfers have no total deadline (their size is unbounded); the
// context bounds them.
const storageIdleTimeout = 2 * time.Minute

// probeTimeoutSec bounds the VM-side test of whether a path is a directory.
const probeTimeoutSec = 60

// VM-side scripts of Upload and Download. Paths and URLs are passed as
// positional parameters ($1, $2), never spliced into the script, so no
// quoting can break them. They need only sh, test, mkdir, rm, tar and curl.
const (
	// extractScript unpacks the staged tarball $2 into $1 and always removes it.
	extractScript = `set -eu; mkdir -p -- "$1"; rc=0; tar -xzf "$2" -C "$1" || rc=$?; rm -f -- "$2"; exit "$rc"`
	// probeScript exits 2 if $1 does not exist, 0 for a directory, 1 otherwise.
	probeScript = `test -e "$1" || exit 2; test -d "$1"`
	// putFileScript uploads the file $1 to the signed URL $2.
	putFileScript = `curl --fail --show-error --silent -X PUT -H 'Content-Type: application/octet-stream' -T "$1" "$2"`
	// putDirScript streams a tar.gz of the directory $1 to the signed URL $2.
	// POSIX sh has no pipefail: tar's status comes back through fd 3 so that
	// a tar failure (an unreadable file) is not hidden by curl's success.
	putDirScript = `exec 4>&1
ts=$( { { tar -cz -C "$1" . 3>&- 4>&-; echo "$?" >&3; } | curl --fail --show-error --silent -X PUT -H 'Content-Type: application/octet-stream' -T - "$2" >&4 3>&- 4>&-; } 3>&1 ) || exit "$?"
if [ "$ts" != 0 ]; then echo "tar exited with status $ts" >&2; exit 3; fi`
)

// PresignFile mints signed URLs for one staging object of a VM. path is where
// the file will land and only scopes the object's key. Never retried.
func (c *Client) PresignFile(ctx context.Context, vmID, path string) (*PresignedURLs, error) {
	body := map[string]string{"path": path}
	return callJSON[PresignedURLs](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/files/presign", body: body})
}

// FetchFile makes the server download req.URL (a DownloadURL minted by
// PresignFile) into the VM at req.Path, byte for byte, and returns the
// download step's result: check ExitCode and TimedOut. Never retried.
func (c *Client) FetchFile(ctx context.Context, vmID string, req FetchRequest) (*ExecResult, error) {
	return callJSON[ExecResult](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/files/fetch", body: req, timeout: c.execTimeout(req.TimeoutSec)})
}

// transferSec is the VM-side timeout of transfer steps, in seconds.
func (c *Client) transferSec() int { return int(c.transferTimeout / time.Second) }

// Upload copies a local file or directory into the VM at remotePath. A file
// is streamed from disk with its Content-Length; a directory is streamed as
// a tar.gz (its contents, rooted at ".") and unpacked in the VM into
// remotePath, merging with what is there. Memory use stays bounded whatever
// the size. VM-side failures are a *FileTransferError with the ExecResult.
func (c *Client) Upload(ctx context.Context, vmID, localPath, remotePath string) error {
	fail := func(msg string, res *ExecResult, err error) error {
		return &FileTransferError{Op: "upload", VMID: vmID, Path: remotePath, Message: msg, ExecResult: res, Err: err}
	}
	fi, err := os.Stat(localPath)
	if err != nil {
		return fail("cannot stat the local path "+localPath, nil, err)
	}
	if fi.IsDir() {
		return c.uploadDir(ctx, vmID, localPath, remotePath)
	}
	if !fi.Mode().IsRegular() {
		return fail(fmt.Sprintf("the local path %s is not a regular file or a directory", localPath), nil, nil)
	}
	f, err := os.Open(localPath)
	if err != nil {
		return fail("cannot open the local file", nil, err)
	}
	defer f.Close()
	p, err := c.PresignFile(ctx, vmID, remotePath)
	if err != nil {
		return fail("presigning the upload", nil, err)
	}
	if p.MaxUploadBytes > 0 && fi.Size() > p.MaxUploadBytes {
		return fail(fmt.Sprintf("%s is %d bytes, over the VM's limit of %d: launch the VM with a larger diskGiB",
			localPath, fi.Size(), p.MaxUploadBytes), nil, nil)
	}
	if err := c.storagePut(ctx, p.UploadURL, f, fi.Size(), "application/octet-stream"); err != nil {
		return fail("sending the file to storage", nil, err)
	}
	return c.fetchInto(ctx, vmID, p.DownloadURL, remotePath, fail)
}

// uploadDir streams a tar.gz of dir to a staging object, has the VM fetch it
// and unpacks it with tar in the VM (see UploadArchive).
func (c *Client) uploadDir(ctx context.Context, vmID, dir, remotePath string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return &FileTransferError{Op: "upload", VMID: vmID, Path: remotePath, Message: "opening " + dir, Err: err}
	}
	defer root.Close()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := writeTarGz(pw, root)
		pw.CloseWithError(err)
		done <- err
	}()
	err = c.UploadArchive(ctx, vmID, pr, remotePath)
	// Unblock the archiver if the upload ended before reading everything.
	pr.CloseWithError(errUploadEnded)
	if tarErr := <-done; tarErr != nil && !errors.Is(tarErr, errUploadEnded) {
		return &FileTransferError{Op: "upload", VMID: vmID, Path: remotePath, Message: "archiving " + dir, Err: tarErr}
	}
	return err
}

// fetchInto has the VM download a staged object to path.
func (c *Client) fetchInto(ctx context.Context, vmID, downloadURL, path string, fail func(string, *ExecResult, error) error) error {
	res, err := c.FetchFile(ctx, vmID, FetchRequest{URL: downloadURL, Path: path, TimeoutSec: c.transferSec()})
	if err != nil {
		return fail("fetching into the VM", nil, err)
	}
	if res.ExitCode != 0 || res.TimedOut {
		return fail("the VM could not fetch the staged file", res, nil)
	}
	return nil
}

// errUploadEnded stops an archiver whose upload is over.
var errUploadEnded = errors.New("the upload ended")

// putTarGz streams a tar.gz of the contents of the directory root to a
// signed URL as a chunked PUT: the archive is produced as it is sent, never
// stored.
func (c *Client) putTarGz(ctx context.Context, uploadURL string, root *os.Root, contentType string) error {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := writeTarGz(pw, root)
		pw.CloseWithError(err)
		done <- err
	}()
	putErr := c.storagePut(ctx, uploadURL, pr, -1, contentType)
	// Unblock the archiver if the PUT ended before reading everything.
	pr.CloseWithError(errUploadEnded)
	if tarErr := <-done; tarErr != nil && !errors.Is(tarErr, errUploadEnded) {
		return fmt.Errorf("archiving: %w", tarErr)
	}
	return putErr
}

// Download copies a file or directory of the VM to localPath. The VM sends it
// to a staging object with curl (a directory as a tar.gz of its contents) and
// the client streams it from there: a file is written whole or not at all
// (replacing an existing one), a directory is unpacked into localPath,
// merging with what is there. Archive entries that would land outside
// localPath are refused. A missing remote path is a *FileTransferError that
// matches errors.Is(err, fs.ErrNotExist).
func (c *Client) Download(ctx context.Context, vmID, remotePath, localPath string) error {
	fail := func(msg string, res *ExecResult, err error) error {
		return &FileTransferError{Op: "download", VMID: vmID, Path: remotePath, Message: msg, ExecResult: res, Err: err}
	}
	res, err := c.Exec(ctx, vmID, ExecRequest{Command: []string{"sh", "-c", probeScript, "sh", remotePath}, TimeoutSec: probeTimeoutSec})
	if err != nil {
		return fail("checking the path in the VM", nil, err)
	}
	var isDir bool
	switch {
	case res.TimedOut:
		return fail("checking the path in the VM timed out", res, nil)
	case res.ExitCode == 2:
		return fail("no such file or directory in the VM", nil, fs.ErrNotExist)
	case res.ExitCode == 0:
		isDir = true
	case res.ExitCode != 1:
		return fail("checking the path in the VM failed", res, nil)
	}
	p, err := c.PresignFile(ctx, vmID, remotePath)
	if err != nil {
		return fail("presigning the download", nil, err)
	}
	script := putFileScript
	if isDir {
		script = putDirScript
	}
	res, err = c.Exec(ctx, vmID, ExecRequest{Command: []string{"sh", "-c", script, "sh", remotePath, p.UploadURL}, TimeoutSec: c.transferSec()})
	if err != nil {
		return fail("sending from the VM to storage", nil, err)
	}
	if res.ExitCode != 0 || res.TimedOut {
		return fail("the VM could not send the data to storage", res, nil)
	}
	body, done, err := c.storageGet(ctx, p.DownloadURL)
	if err != nil {
		return fail("reading from storage", nil, err)
	}
	defer done()
	if isDir {
		err = extractTarGz(body, localPath)
	} else {
		err = writeFileAtomic(body, localPath)
	}
	if err != nil {
		return fail("writing "+localPath, nil, err)
	}
	return nil
}

// writeFileAtomic writes r to path through a temporary file in the same
// directory, so that path appears whole or not at all.
func writeFileAtomic(r io.Reader, path string) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("%s is a directory: give the file's own path", path)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".fastvm-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// storagePut PUTs body to a signed URL without the API key. size < 0 sends
// it chunked.
func (c *Client) storagePut(ctx context.Context, signedURL string, body io.Reader, size int64, contentType string) error {
	ictx, idle, stop := withIdleTimeout(ctx, storageIdleTimeout)
	defer stop()
	if size == 0 {
		body = http.NoBody
	} else {
		body = &touchReader{r: body, idle: idle}
	}
	req, err := http.NewRequestWithContext(ictx, http.MethodPut, signedURL, body)
	if err != nil {
		return fmt.Errorf("the signed URL %s does not parse", redactURL(signedURL))
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", contentType)
	resp, err := c.storage.Do(req)
	if err != nil {
		return storageError(ctx, ictx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2000))
		return fmt.Errorf("storage answered PUT %s with %s: %s", redactURL(signedURL), resp.Status, strings.TrimSpace(string(msg)))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	return nil
}

// storageGet GETs a signed URL without the API key; the caller reads the
// body and then calls done.
func (c *Client) storageGet(ctx context.Context, signedURL string) (body io.Reader, done func(), err error) {
	ictx, idle, stop := withIdleTimeout(ctx, storageIdleTimeout)
	req, err := http.NewRequestWithContext(ictx, http.MethodGet, signedURL, nil)
	if err != nil {
		stop()
		return nil, nil, fmt.Errorf("the signed URL %s does not parse", redactURL(signedURL))
	}
	resp, err := c.storage.Do(req)
	if err != nil {
		stop()
		return nil, nil, storageError(ctx, ictx, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 2000))
		resp.Body.Close()
		stop()
		return nil, nil, fmt.Errorf("storage answered GET %s with %s: %s", redactURL(signedURL), resp.Status, strings.TrimSpace(string(msg)))
	}
	r := &touchReader{r: resp.Body, idle: idle, ctx: ctx, ictx: ictx}
	return r, func() { resp.Body.Close(); stop() }, nil
}

// storageError explains a failed storage request without the signed URL.
func storageError(ctx, ictx context.Context, err error) error {
	if ctx.Err() == nil && ictx.Err() != nil {
		return context.Cause(ictx)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	return err
}

// redactURL drops the query (the signature) of a signed URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	u.Fragment, u.User = "", nil
	return u.String()
}

// idleTimer cancels a context when it is not touched for a while.
type idleTimer struct {
	t *time.Timer
	d time.Duration
}

func (i *idleTimer) touch() { i.t.Reset(i.d) }

// withIdleTimeout derives a context that ends after d without progress.
func withIdleTimeout(ctx context.Context, d time.Duration) (context.Context, *idleTimer, func()) {
	ictx, cancel := context.WithCancelCause(ctx)
	t := time.AfterFunc(d, func() {
		cancel(fmt.Errorf("the storage transfer made no progress for %s", d))
	})
	return ictx, &idleTimer{t: t, d: d}, func() { t.Stop(); cancel(nil) }
}

// touchReader reports progress to an idle timer. With ictx set, a read that
// fails because the idle timer fired says so.
type touchReader struct {
	r         io.Reader
	idle      *idleTimer
	ctx, ictx context.Context
}

// Read reads from the wrapped reader and counts any bytes as progress.
func (t *touchReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.idle.touch()
	}
	if err != nil && err != io.EOF && t.ictx != nil {
		err = storageError(t.ctx, t.ictx, err)
	}
	return n, err
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// writeTarGz writes a gzip-compressed tar of the contents of the directory
// root to w.
func writeTarGz(w io.Writer, root *os.Root) error {
	gz, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	if err := tarfs.Write(context.Background(), gz, root, ".", tarfs.WriteOptions{Contents: true}); err != nil {
		return err
	}
	return gz.Close()
}

// extractTarGz unpacks a gzip-compressed tar into dir.
func extractTarGz(r io.Reader, dir string) error {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return fmt.Errorf("the downloaded archive is not gzip: %w", err)
	}
	if err := tarfs.ExtractDir(gz, dir, tarfs.ExtractOptions{SkipSpecial: true}); err != nil {
		return err
	}
	// Read to the end so that a truncated stream is noticed.
	_, err = io.Copy(io.Discard, gz)
	return err
}
