package auth

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Static tokens are random strings of 256 bits, so the file keeps only
// their SHA-256: a fast hash is right here. Slow password hashes (bcrypt,
// argon2) exist to make guessing low-entropy human passwords expensive;
// guessing a 256-bit token is infeasible at any hash speed, and a slow hash
// would only cost CPU on every request (an easy denial of service).

// tokenPrefix marks the tokens NewToken makes (and secret scanners can
// recognise them).
const tokenPrefix = "vmcp_"

// hashPrefix starts the second field of a tokens file line.
const hashPrefix = "sha256:"

// NewToken returns a new random bearer token: "vmcp_" and 32 random bytes
// in base64url. Show it once to its holder; store only HashToken of it.
func NewToken() (token string) {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// HashToken is the form of token kept in the tokens file: "sha256:" and the
// hex of its SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hashPrefix + hex.EncodeToString(sum[:])
}

// TokenLine is the tokens file line giving token to principal.
func TokenLine(principal, token string) (string, error) {
	if err := ValidPrincipal(principal); err != nil {
		return "", err
	}
	return principal + " " + HashToken(token), nil
}

// maxPrincipal bounds a principal's length.
const maxPrincipal = 128

// ValidPrincipal checks a principal of the tokens file: 1 to 128 letters,
// digits and . _ @ + -, starting with a letter or digit. Colons and bars
// are out so that no static principal can equal a JWT's "iss|sub" or the
// "local:user" of a stdio server sharing the state.
func ValidPrincipal(p string) error {
	if p == "" || len(p) > maxPrincipal {
		return fmt.Errorf("principal %q: want 1 to %d characters", p, maxPrincipal)
	}
	for i, c := range []byte(p) {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._@+-", rune(c))) {
			return fmt.Errorf("principal %q: use letters, digits and . _ @ + - (starting with a letter or digit)", p)
		}
	}
	return nil
}

// tokenEntry is one line of the tokens file.
type tokenEntry struct {
	principal string
	hash      [sha256.Size]byte
}

// maxTokensFile bounds the tokens file (a few thousand lines fit in far less).
const maxTokensFile = 1 << 20

// parseTokens reads the lines of a tokens file. Errors name the line but
// never repeat its content, which may be a token pasted by mistake.
func parseTokens(data []byte) ([]tokenEntry, error) {
	var entries []tokenEntry
	owner := map[[sha256.Size]byte]int{} // hash → line
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), maxTokensFile)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, fmt.Errorf("line %d: want \"principal sha256:HEX\" (two fields), got %d fields", n, len(fields))
		}
		if err := ValidPrincipal(fields[0]); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		hexSum, ok := strings.CutPrefix(fields[1], hashPrefix)
		if !ok {
			why := "the second field is not sha256:HEX"
			if strings.HasPrefix(fields[1], tokenPrefix) {
				why = "the second field looks like a plaintext token"
			}
			return nil, fmt.Errorf("line %d: %s; the file keeps only hashes of tokens: remove it, and make a new token with 'mcp-server token new PRINCIPAL' (it prints the line to add)", n, why)
		}
		sum, err := hex.DecodeString(hexSum)
		if err != nil || len(sum) != sha256.Size {
			return nil, fmt.Errorf("line %d: after sha256: the hash must be %d hex digits", n, 2*sha256.Size)
		}
		e := tokenEntry{principal: fields[0]}
		copy(e.hash[:], sum)
		if prev, dup := owner[e.hash]; dup && entries[prev].principal != e.principal {
			return nil, fmt.Errorf("line %d: the same token hash is on an earlier line for another principal; a token names one principal", n)
		}
		owner[e.hash] = len(entries)
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return entries, nil
}

// tokenFile is the tokens file, reread when it changes (checked at most
// every checkEvery, on use: no goroutine to stop).
type tokenFile struct {
	path       string
	log        zerolog.Logger
	checkEvery time.Duration

	mu        sync.Mutex
	entries   []tokenEntry
	stamp     fileStamp
	lastCheck time.Time
	lastErr   string // of the last failed reload, to log each failure once
}

// fileStamp tells whether a file changed.
type fileStamp struct {
	mod  time.Time
	size int64
}

func openTokenFile(path string, log zerolog.Logger) (*tokenFile, error) {
	tf := &tokenFile{path: path, log: log, checkEvery: 2 * time.Second}
	entries, stamp, err := tf.read()
	if err != nil {
		return nil, err
	}
	tf.entries, tf.stamp, tf.lastCheck = entries, stamp, time.Now()
	if len(entries) == 0 {
		log.Warn().Str("file", path).Msg("the tokens file has no tokens yet: no static token is accepted until lines are added")
	}
	return tf, nil
}

// read reads and parses the file.
func (tf *tokenFile) read() ([]tokenEntry, fileStamp, error) {
	f, err := os.Open(tf.path)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("tokens file: %w (create it with lines from 'mcp-server token new PRINCIPAL')", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("tokens file: %w", err)
	}
	if st.Size() > maxTokensFile {
		return nil, fileStamp{}, fmt.Errorf("tokens file %s: larger than %d bytes", tf.path, maxTokensFile)
	}
	data := make([]byte, st.Size())
	if _, err := f.ReadAt(data, 0); err != nil && st.Size() > 0 {
		return nil, fileStamp{}, fmt.Errorf("tokens file: %w", err)
	}
	entries, err := parseTokens(data)
	if err != nil {
		return nil, fileStamp{}, fmt.Errorf("tokens file %s: %w", tf.path, err)
	}
	return entries, fileStamp{mod: st.ModTime(), size: st.Size()}, nil
}

// reloadIfChanged rereads the file if it changed since the last read. A
// file that became unreadable or invalid keeps the tokens of the last good
// one (a typo must not lock every client out); the error is logged once.
// Called with tf.mu held.
func (tf *tokenFile) reloadIfChanged() {
	now := time.Now()
	if now.Sub(tf.lastCheck) < tf.checkEvery {
		return
	}
	tf.lastCheck = now
	st, err := os.Stat(tf.path)
	if err == nil && (fileStamp{mod: st.ModTime(), size: st.Size()}) == tf.stamp {
		return
	}
	var entries []tokenEntry
	var stamp fileStamp
	if err == nil {
		entries, stamp, err = tf.read()
	}
	if err != nil {
		if msg := err.Error(); msg != tf.lastErr {
			tf.lastErr = msg
			tf.log.Error().Err(err).Msg("tokens file not reloaded; the tokens read before stay valid until it is fixed")
		}
		return
	}
	tf.entries, tf.stamp, tf.lastErr = entries, stamp, ""
	tf.log.Info().Str("file", tf.path).Int("tokens", len(entries)).Msg("tokens file reloaded")
}

// lookup returns the principal of token. Every entry is compared, in
// constant time, so the time taken tells nothing about the stored hashes.
func (tf *tokenFile) lookup(token string) (string, bool) {
	sum := sha256.Sum256([]byte(token))
	tf.mu.Lock()
	defer tf.mu.Unlock()
	tf.reloadIfChanged()
	found := -1
	for i := range tf.entries {
		if subtle.ConstantTimeCompare(sum[:], tf.entries[i].hash[:]) == 1 && found < 0 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return tf.entries[found].principal, true
}
