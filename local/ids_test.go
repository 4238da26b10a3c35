//go:build linux && !vmcp_nolocal

package local

import "testing"

// TestIDShapes: the shapes accept every id the engine makes, and nothing
// that could name another path.
func TestIDShapes(t *testing.T) {
	for range 100 {
		if m, s := newID("m"), newID("s"); !ValidMachineID(m) || !ValidSnapshotID(s) || ValidMachineID(s) || ValidSnapshotID(m) {
			t.Fatalf("ids %s and %s", m, s)
		}
	}
	for _, bad := range []string{"", "m-", "m-../../etc", "m-0123456789abcdef012", "m-0123456789abcdef01234", "m-0123456789ABCDEF0123",
		"m-0123456789abcdef0123/", "/m-0123456789abcdef0123", "m-0123456789abcdef0123\n", "selftest"} {
		if ValidMachineID(bad) || ValidSnapshotID(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}
