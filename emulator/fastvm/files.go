//go:build linux

package fastvm

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Presigned URLs (§5) address staging objects that the emulator itself
// hosts under objectsPath: GCS in production, files in a staging directory
// here, streamed to and from disk (memory stays flat whatever the size).
// Each URL is bound to one object, one method, an expiry and a size limit by
// an HMAC-SHA256 signature with a key of this server's; it needs no API key
// and ignores one if sent. Objects live until the emulator closes (the cloud
// deletes them after about a day). VMs, which have no way to the host's
// loopback, reach these URLs (and nothing else of the emulator) on their
// own loopback (network.go).
const (
	objectsPath = "/_emulator/objects/"
	// Spec §13 #9: presigned URLs expire after 3600 s.
	presignTTL = 3600 * time.Second
	// buildContextMaxBytes bounds build contexts: the default build VM disk.
	buildContextMaxBytes = int64(baseDiskGiB) << 30
)

// presignResponse is the wire FilePresignResponse.
type presignResponse struct {
	UploadURL      string `json:"uploadUrl"`
	DownloadURL    string `json:"downloadUrl"`
	ExpiresInSec   int    `json:"expiresInSec"`
	MaxUploadBytes int64  `json:"maxUploadBytes"`
}

func (s *Server) sign(method, oid string, expires, max int64) string {
	mac := hmac.New(sha256.New, s.signKey)
	fmt.Fprintf(mac, "%s\n%s\n%d\n%d", method, oid, expires, max)
	return hex.EncodeToString(mac.Sum(nil))
}

// presign mints the upload and download URLs of a new object.
func (s *Server) presign(maxBytes int64) (presignResponse, error) {
	s.mu.Lock()
	base := s.baseURL
	if s.maxUploadOverride > 0 {
		maxBytes = s.maxUploadOverride
	}
	s.mu.Unlock()
	if base == "" {
		return presignResponse{}, errors.New("the emulator does not know its own address to mint presigned URLs: set Options.BaseURL or call SetBaseURL")
	}
	var b [16]byte
	rand.Read(b[:])
	oid := hex.EncodeToString(b[:])
	expires := time.Now().Add(presignTTL).Unix()
	mint := func(method string) string {
		q := url.Values{}
		q.Set("method", method)
		q.Set("expires", strconv.FormatInt(expires, 10))
		q.Set("max", strconv.FormatInt(maxBytes, 10))
		q.Set("sig", s.sign(method, oid, expires, maxBytes))
		return base + objectsPath + oid + "?" + q.Encode()
	}
	return presignResponse{
		UploadURL: mint(http.MethodPut), DownloadURL: mint(http.MethodGet),
		ExpiresInSec: int(presignTTL / time.Second), MaxUploadBytes: maxBytes,
	}, nil
}

var errBadSignature = errors.New("this URL was not minted by the emulator's presign endpoint, or it was altered: presign again")

// verify checks that a presigned URL's object, method and limits are those
// signed and that it has not expired; it returns the object and its limit.
func (s *Server) verify(oid string, q url.Values, method string) (string, int64, error) {
	if len(oid) != 32 {
		return "", 0, errBadSignature
	}
	if _, err := hex.DecodeString(oid); err != nil {
		return "", 0, errBadSignature
	}
	expires, err1 := strconv.ParseInt(q.Get("expires"), 10, 64)
	max, err2 := strconv.ParseInt(q.Get("max"), 10, 64)
	if err1 != nil || err2 != nil || q.Get("method") != method {
		return "", 0, errBadSignature
	}
	want := s.sign(method, oid, expires, max)
	if !hmac.Equal([]byte(want), []byte(q.Get("sig"))) {
		return "", 0, errBadSignature
	}
	if time.Now().Unix() >= expires {
		return "", 0, errors.New("this presigned URL has expired: presign again")
	}
	return oid, max, nil
}

func (s *Server) presignVMFile(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Path string `json:"path"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	if req.Path == "" {
		writeError(w, http.StatusBadRequest, "path is required (the destination path in the VM; it only scopes the staging object)")
		return
	}
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	disk := v.DiskGiB
	s.mu.Unlock()
	// §12.1 #4: maxUploadBytes = diskGiB × 2^30.
	resp, err := s.presign(int64(disk) << 30)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	// Spec §13 #4: 200.
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) presignBuildContext(w http.ResponseWriter, r *http.Request) {
	var ignored map[string]any
	if !decodeBody(w, r, maxJSONBody, &ignored) {
		return
	}
	resp, err := s.presign(buildContextMaxBytes)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) objectFile(oid string) string { return filepath.Join(s.staging, oid) }

// putObject stores an upload: Content-Type application/octet-stream (files)
// or application/gzip (build contexts), with or without Content-Length
// (chunked), at most the URL's size limit.
func (s *Server) putObject(w http.ResponseWriter, r *http.Request) {
	oid, max, err := s.verify(r.PathValue("oid"), r.URL.Query(), http.MethodPut)
	if err != nil {
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/octet-stream", "application/gzip", "application/x-gzip":
	default:
		writeError(w, http.StatusForbidden, fmt.Sprintf("Content-Type %q does not match the signed URL: send application/octet-stream (or application/gzip for a build context)", r.Header.Get("Content-Type")))
		return
	}
	if r.ContentLength > max {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("upload of %d bytes exceeds maxUploadBytes (%d)", r.ContentLength, max))
		return
	}
	tmp, err := os.CreateTemp(s.staging, ".upload-*")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "stage the upload: "+err.Error())
		return
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, http.MaxBytesReader(w, r.Body, max))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("upload exceeds maxUploadBytes (%d)", max))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "read the upload: "+err.Error())
		return
	}
	if err := os.Rename(tmp.Name(), s.objectFile(oid)); err != nil {
		writeError(w, http.StatusInternalServerError, "store the upload: "+err.Error())
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) getObject(w http.ResponseWriter, r *http.Request) {
	oid, _, err := s.verify(r.PathValue("oid"), r.URL.Query(), http.MethodGet)
	if err != nil {
		writeError(w, http.StatusForbidden, err.Error())
		return
	}
	f, err := os.Open(s.objectFile(oid))
	if err != nil {
		writeError(w, http.StatusNotFound, "nothing was uploaded to this object yet: PUT it to its uploadUrl first")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

// mintedObject checks that rawURL is a downloadUrl this emulator minted
// and returns its object.
func (s *Server) mintedObject(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("url is not a URL: %v", err)
	}
	oid, ok := strings.CutPrefix(u.Path, objectsPath)
	if !ok || path.Base(u.Path) != oid {
		return "", errors.New("url must be a downloadUrl returned by files/presign (or build-contexts/presign); URLs from elsewhere are rejected")
	}
	oid, _, err = s.verify(oid, u.Query(), http.MethodGet)
	if err != nil {
		return "", fmt.Errorf("url: %w", err)
	}
	return oid, nil
}

// fetchFile writes a staged object into the guest at path (parent
// directories created, bytes verbatim) and answers the ExecResult of that
// download step.
func (s *Server) fetchFile(w http.ResponseWriter, r *http.Request) {
	var req struct {
		URL        string       `json:"url"`
		Path       string       `json:"path"`
		TimeoutSec *json.Number `json:"timeoutSec"`
	}
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	// Spec §13 #3 (and §3.2): a URL the emulator did not mint is a 400.
	oid, err := s.mintedObject(req.URL)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !path.IsAbs(req.Path) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("path %q must be an absolute path in the VM", req.Path))
		return
	}
	timeout, err := parseTimeoutSec(req.TimeoutSec, defaultExecTimeout)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	_, m, ok := s.runningMachine(w, r)
	if !ok {
		return
	}
	ctx, cancel := s.requestContext(r)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	defer cancelTimeout()
	start := time.Now()
	res := execResult{}
	f, err := os.Open(s.objectFile(oid))
	if err == nil {
		// Spec §13 #9: bytes verbatim (no unpacking), parent directories created.
		_, err = m.WriteFile(ctx, req.Path, f, 0o644)
		f.Close()
	} else {
		err = errors.New("the object was never uploaded (HTTP 404): PUT it to its uploadUrl first")
	}
	res.DurationMs = time.Since(start).Milliseconds()
	switch {
	case err == nil:
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		res.ExitCode, res.TimedOut = timeoutExitCode, true
		res.Stderr = fmt.Sprintf("fetch: timed out after %s\n", timeout)
	default:
		res.ExitCode, res.Stderr = 1, "fetch: "+err.Error()+"\n"
	}
	writeJSON(w, http.StatusOK, res)
}
