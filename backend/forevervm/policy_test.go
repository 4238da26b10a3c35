//go:build linux

package forevervm

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
	forevervmclient "github.com/vmcp-dev/vmcp/client/forevervm"
)

// TestCreateRefusesWhatVMCPCannotGive: a network policy or a size in MiB
// is refused before any request: ForeverVM decides them.
func TestCreateRefusesWhatVMCPCannotGive(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1); http.NotFound(w, r) }))
	defer srv.Close()
	b := New(forevervmclient.New("t", forevervmclient.WithBaseURL(srv.URL)), Options{})
	defer b.Close()
	for _, spec := range []backend.MachineSpec{{Network: &backend.Network{Open: true}}, {DiskMiB: 64}} {
		if _, err := b.Create(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "ForeverVM") {
			t.Errorf("%+v: %v", spec, err)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests reached the service", n)
	}
}
