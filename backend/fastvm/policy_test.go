//go:build linux

package fastvm

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vmcp-dev/vmcp/backend"
	fastvmclient "github.com/vmcp-dev/vmcp/client/fastvm"
)

// TestCreateRefusesWhatVMCPCannotGive: a network policy or a size in MiB
// is refused before any request, with what to use instead; no VM is made.
func TestCreateRefusesWhatVMCPCannotGive(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1); http.NotFound(w, r) }))
	defer srv.Close()
	b := New(fastvmclient.New("k", fastvmclient.WithBaseURL(srv.URL)), Options{})
	for _, spec := range []struct {
		spec backend.MachineSpec
		want string
	}{
		{backend.MachineSpec{Network: &backend.Network{Allow: []string{"pypi.org"}}}, "set_firewall"},
		{backend.MachineSpec{Network: &backend.Network{}}, "set_firewall"},
		{backend.MachineSpec{MemoryMiB: 512}, "machine_type"},
	} {
		if _, err := b.Create(context.Background(), spec.spec); err == nil || !strings.Contains(err.Error(), spec.want) {
			t.Errorf("%+v: %v", spec.spec, err)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests reached the service", n)
	}
}
