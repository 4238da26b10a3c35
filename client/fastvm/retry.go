package fastvm

import (
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The retry policy of the official SDKs (spec §1).
const (
	initialRetryDelay = 500 * time.Millisecond
	maxRetryDelay     = 8 * time.Second
	// maxHeaderDelay: a server-requested delay is obeyed only below this;
	// longer (or unparsable) requests fall back to the computed backoff, as
	// the official SDKs do, so that a bad header cannot stall a call.
	maxHeaderDelay = 60 * time.Second
)

// backoff is the delay before retry number attempt+1 (attempt counts from 0):
// 0.5 s doubling up to 8 s, shortened by a random 0–25 %.
func backoff(attempt int) time.Duration {
	d := maxRetryDelay
	if attempt < 5 {
		d = min(initialRetryDelay<<attempt, maxRetryDelay)
	}
	jitter := 1 - rand.Float64()*0.25
	return time.Duration(float64(d) * jitter)
}

// retryDelay is how long to wait before retrying after a response with
// header h: the server's retry-after-ms or retry-after (seconds or an HTTP
// date) when it asks for more than 0 and less than 60 s, else backoff.
func retryDelay(h http.Header, attempt int, now time.Time) time.Duration {
	if d, ok := headerDelay(h, now); ok && d > 0 && d < maxHeaderDelay {
		return d
	}
	return backoff(attempt)
}

// headerDelay reads the server's requested delay; ok is false when it gave
// none that parses.
func headerDelay(h http.Header, now time.Time) (time.Duration, bool) {
	if ms, ok := parseFloat(h.Get("Retry-After-Ms")); ok {
		return floatDuration(ms, time.Millisecond), true
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, ok := parseFloat(v); ok {
		return floatDuration(s, time.Second), true
	}
	if t, err := http.ParseTime(v); err == nil {
		return t.Sub(now), true
	}
	return 0, false
}

func parseFloat(s string) (float64, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsNaN(f) {
		return 0, false
	}
	return f, true
}

// floatDuration converts n units to a Duration, saturating instead of
// overflowing on absurd values.
func floatDuration(n float64, unit time.Duration) time.Duration {
	f := n * float64(unit)
	switch {
	case f >= math.MaxInt64:
		return math.MaxInt64
	case f <= math.MinInt64:
		return math.MinInt64
	}
	return time.Duration(f)
}

// shouldRetry applies the SDKs' retryable statuses (408, 409, 429, ≥ 500),
// overridden by an explicit x-should-retry: true or false.
func shouldRetry(resp *http.Response) bool {
	switch strings.ToLower(strings.TrimSpace(resp.Header.Get("X-Should-Retry"))) {
	case "true":
		return true
	case "false":
		return false
	}
	s := resp.StatusCode
	return s == http.StatusRequestTimeout || s == http.StatusConflict || s == http.StatusTooManyRequests || s >= 500
}
