//go:build linux && !vmcp_nolocal

package local

import (
	"fmt"
	"os"
	"time"
)

// VMCP_MONITOR_DEBUG=1 prints every look of the engine's monitor.
func init() {
	if os.Getenv("VMCP_MONITOR_DEBUG") == "" {
		return
	}
	start := time.Now()
	monitorDebug = func(f string, a ...any) {
		fmt.Fprintf(os.Stderr, "%6dms "+f+"\n", append([]any{time.Since(start).Milliseconds()}, a...)...)
	}
}
