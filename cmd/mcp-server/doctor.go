package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
	"github.com/vmcp-dev/vmcp/conversations"
)

// Verdicts of doctor's checks.
const (
	verdictOK   = "ok"
	verdictWarn = "warn" // works, with a caveat worth acting on
	verdictFail = "fail" // does not work: doctor exits with status 1
	verdictSkip = "skip" // not configured, or not applicable here
)

// check is one line of doctor: what was checked, the verdict, and what was
// found or what to do.
type check struct {
	Name    string `json:"name"`
	Verdict string `json:"verdict"`
	Detail  string `json:"detail"`
}

// doctorReport is `doctor --json`.
type doctorReport struct {
	OK     bool    `json:"ok"` // no check failed
	Checks []check `json:"checks"`
}

// cloudTimeout bounds each request to a cloud backend: doctor is asked
// whether it answers, and one that takes longer is not answering.
const cloudTimeout = 10 * time.Second

func doctor(ctx context.Context, r *cliRun) error {
	cfg := r.cfg
	var checks []check
	checks = append(checks, stateDirCheck(cfg))
	checks = append(checks, localChecks(ctx, cfg, localInUse(cfg))...)
	checks = append(checks, sessionStoreCheck(ctx, cfg))
	checks = append(checks, fastvmCheck(ctx, cfg), forevervmCheck(ctx, cfg))

	report := doctorReport{OK: true, Checks: checks}
	var failed, warned []string
	skipped := 0
	for _, c := range checks {
		switch c.Verdict {
		case verdictSkip:
			skipped++
		case verdictFail:
			report.OK = false
			failed = append(failed, c.Name)
		case verdictWarn:
			warned = append(warned, c.Name)
		}
	}
	if r.flags.json {
		if err := writeJSON(r.env.stdout, report); err != nil {
			return err
		}
	} else {
		for _, c := range checks {
			fmt.Fprintf(r.env.stdout, "%-4s  %-15s  %s\n", c.Verdict, c.Name, c.Detail)
		}
		switch {
		case len(failed) > 0:
			fmt.Fprintf(r.env.stdout, "\n%s failed: %s\n", plural(len(failed), "check"), strings.Join(failed, ", "))
		case len(warned) > 0:
			fmt.Fprintf(r.env.stdout, "\nno check failed; %s: %s\n", plural(len(warned), "warning"), strings.Join(warned, ", "))
		case skipped > 0:
			fmt.Fprintf(r.env.stdout, "\nevery check passed (%d skipped)\n", skipped)
		default:
			fmt.Fprintln(r.env.stdout, "\nevery check passed")
		}
	}
	if !report.OK {
		return errReported
	}
	return nil
}

// existingAncestor is dir, or its nearest ancestor that exists.
func existingAncestor(dir string) string {
	for {
		if _, err := os.Stat(dir); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return dir
		}
		dir = parent
	}
}

// stateDirCheck says whether the state directory (or, before it exists,
// the directory it will be made in) is writable, and which server owns it.
func stateDirCheck(cfg Config) check {
	c := check{Name: "state directory"}
	dir := cfg.StateDir
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		parent := existingAncestor(dir)
		if err := writable(parent); err != nil {
			c.Verdict, c.Detail = verdictFail, fmt.Sprintf("%s does not exist, and cannot be made in %s: %v (give --state-dir (VMCP_STATE_DIR) a directory of your own)", dir, parent, err)
			return c
		}
		c.Verdict, c.Detail = verdictOK, fmt.Sprintf("%s does not exist yet; the first server makes it", dir)
		return c
	case err != nil:
		c.Verdict, c.Detail = verdictFail, explainStateDir(dir, err).Error()
		return c
	case !fi.IsDir():
		c.Verdict, c.Detail = verdictFail, fmt.Sprintf("%s is not a directory: give --state-dir (VMCP_STATE_DIR) a directory", dir)
		return c
	}
	if err := writable(dir); err != nil {
		c.Verdict, c.Detail = verdictFail, explainStateDir(dir, err).Error()
		return c
	}
	c.Verdict, c.Detail = verdictOK, dir+": writable; no vmcp server runs on it"
	switch owned, pid := stateOwner(dir); {
	case pid > 0:
		c.Detail = fmt.Sprintf("%s: writable; the vmcp server of pid %d owns it (others share it through that one)", dir, pid)
	case owned:
		c.Detail = dir + ": writable; a vmcp server owns it (others share it through that one)"
	}
	return c
}

// writable checks that a file can be made in dir, by making one.
func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".vmcp-doctor-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// sessionStoreCheck opens the store where conversations live: Redis, or
// sessions.db in the state directory unless a server holds it.
func sessionStoreCheck(ctx context.Context, cfg Config) check {
	c := check{Name: "session store"}
	if u := cfg.HTTP.SessionStore; u != "" {
		shown, password := u, ""
		if p, err := url.Parse(u); err == nil {
			shown = p.Redacted() // its password stays out
			password, _ = p.User.Password()
		}
		ctx, cancel := context.WithTimeout(ctx, cloudTimeout)
		defer cancel()
		store, err := conversations.OpenRedis(ctx, u, conversations.RedisOptions{})
		if err != nil {
			c.Verdict, c.Detail = verdictFail, fmt.Sprintf("%s: %s: check --session-store (VMCP_SESSION_STORE) and that Redis runs", shown, redact(redact(err.Error(), u), password))
			return c
		}
		store.Close()
		c.Verdict, c.Detail = verdictOK, shown+" answers"
		return c
	}
	path := filepath.Join(cfg.StateDir, "sessions.db")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		c.Verdict, c.Detail = verdictOK, path+" does not exist yet; the first server makes it"
		return c
	}
	if owned, pid := stateOwner(cfg.StateDir); owned {
		c.Verdict, c.Detail = verdictOK, path+": held by the vmcp server that owns the state directory"
		if pid > 0 {
			c.Detail = fmt.Sprintf("%s: held by the vmcp server of pid %d, which owns the state directory", path, pid)
		}
		return c
	}
	store, err := conversations.OpenBolt(path)
	if err != nil {
		c.Verdict, c.Detail = verdictFail, err.Error()
		return c
	}
	defer store.Close()
	all, err := store.All(ctx)
	if err != nil {
		c.Verdict, c.Detail = verdictFail, fmt.Sprintf("%s: %v", path, err)
		return c
	}
	c.Verdict, c.Detail = verdictOK, fmt.Sprintf("%s: %s", path, plural(len(all), "conversation"))
	return c
}

// fastvmCheck asks FastVM, where configured, for the organisation's
// quotas: an answer means the service answers and the key is accepted.
func fastvmCheck(ctx context.Context, cfg Config) check {
	c := check{Name: "fastvm"}
	if cfg.FastVM.APIKey == "" {
		c.Verdict, c.Detail = verdictSkip, "not configured: set FASTVM_API_KEY (or --fastvm-api-key-file) to run machines on FastVM"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, cloudTimeout)
	defer cancel()
	cl := fastvmclient.New(cfg.FastVM.APIKey, fastvmclient.WithBaseURL(cfg.FastVM.URL), fastvmclient.WithMaxRetries(0), fastvmclient.WithTimeout(cloudTimeout))
	start := time.Now()
	q, err := cl.Quotas(ctx)
	if err != nil {
		c.Verdict, c.Detail = verdictFail, fmt.Sprintf("%s: %s: check --fastvm-url (FASTVM_BASE_URL) and the key (FASTVM_API_KEY or --fastvm-api-key-file)",
			cfg.FastVM.URL, redact(err.Error(), cfg.FastVM.APIKey))
		return c
	}
	c.Verdict, c.Detail = verdictOK, fmt.Sprintf("%s accepts the key (organisation %s; answered in %s)", cfg.FastVM.URL, orDash(q.OrgID), time.Since(start).Round(time.Millisecond))
	return c
}

// forevervmCheck asks ForeverVM, where configured, whose the token is.
func forevervmCheck(ctx context.Context, cfg Config) check {
	c := check{Name: "forevervm"}
	if cfg.ForeverVM.Token == "" {
		c.Verdict, c.Detail = verdictSkip, "not configured: set FOREVERVM_TOKEN (or --forevervm-token-file) to run machines on ForeverVM"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, cloudTimeout)
	defer cancel()
	cl := forevervmclient.New(cfg.ForeverVM.Token, forevervmclient.WithBaseURL(cfg.ForeverVM.URL), forevervmclient.WithRequestTimeout(cloudTimeout))
	start := time.Now()
	account, err := cl.Whoami(ctx)
	if err != nil {
		c.Verdict, c.Detail = verdictFail, fmt.Sprintf("%s: %s: check --forevervm-url (FOREVERVM_BASE_URL) and the token (FOREVERVM_TOKEN or --forevervm-token-file)",
			cfg.ForeverVM.URL, redact(err.Error(), cfg.ForeverVM.Token))
		return c
	}
	c.Verdict, c.Detail = verdictOK, fmt.Sprintf("%s accepts the token (account %s; answered in %s)", cfg.ForeverVM.URL, orDash(account), time.Since(start).Round(time.Millisecond))
	return c
}

// redact keeps a secret out of a message: the clients keep keys out of
// their errors, and this holds should a server echo one back.
func redact(msg, secret string) string {
	if secret == "" {
		return msg
	}
	return strings.ReplaceAll(msg, secret, "[redacted]")
}
