//go:build linux && !vmcp_nolocal

package local_test

import (
	"os"
	"testing"

	engine "github.com/vmcp-dev/vmcp/local"
)

func TestMain(m *testing.M) {
	engine.RunHelperIfRequested() // the engine starts this binary as the agent in each sandbox
	os.Exit(m.Run())
}
