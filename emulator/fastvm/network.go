//go:build linux

package fastvm

import (
	"fmt"
	"github.com/vmcp-dev/vmcp/internal/handoff"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// The network of the emulator's VMs. A VM is an engine machine with a
// network namespace of its own: loopback only, unless Options.VMNetworkAllow
// lists domains, which it then reaches over HTTP(S) through the engine's
// proxy (never a loopback, link-local or private address, unless the
// engine's operator allowed the name). It does not share the host's network,
// so neither the emulator's API nor the MCP server nor any other service
// listening on the host reaches it.
//
// One thing of the host is served to it, narrowly: the presigned object URLs
// (§5; the SDKs' download helper runs curl -T <uploadUrl> in the VM). The
// engine serves the port of the emulator's base URL on the VM's own
// loopback (local.Machine.ServeLoopback) and hands each connection to
// vmObjects, an HTTP server of the emulator's process that answers the
// object URLs (GET, HEAD, PUT, signature checked) and nothing else. A URL
// minted for http://127.0.0.1:PORT (or localhost, [::1], 0.0.0.0) therefore
// works from the client and from the VM alike; a base URL with another
// host is unreachable from VMs (no route), so their downloads fail there.
// files/fetch needs none of this: the emulator writes the object into the
// VM itself, through the engine.

// vmObjects serves what VMs may reach of the emulator: its object URLs.
type vmObjects struct {
	ln  *handoff.Listener
	srv *http.Server
}

func (s *Server) newVMObjects() *vmObjects {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT "+objectsPath+"{oid}", s.putObject)
	mux.HandleFunc("GET "+objectsPath+"{oid}", s.getObject)
	mux.HandleFunc("HEAD "+objectsPath+"{oid}", s.getObject)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, fmt.Sprintf("%s %s: a VM reaches only the emulator's presigned object URLs (uploadUrl, downloadUrl); "+
			"the FastVM API and the host's other services are out of its reach: call the API from outside the VM", r.Method, r.URL.Path))
	})
	return &vmObjects{ln: handoff.New("fastvm-emulator-vm-objects"), srv: &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: time.Minute}}
}

// machine is the engine machine of a VM or build VM, with the emulator's
// object URLs served on its loopback before it starts: every use of a
// machine goes through here, so that one recovered after a restart (and so
// stopped) has them when it starts again.
func (s *Server) machine(id string) (*local.Machine, error) {
	m, err := s.engine.Machine(id)
	if err != nil {
		return nil, err
	}
	if port := s.basePort(); port != 0 && !m.Info().AllowNetwork {
		// Machines of an emulator before this one had the host's network
		// (AllowNetwork), which they keep; they need nothing served.
		if err := m.ServeLoopback(port, s.vmObjects.ln.Serve); err != nil {
			return nil, fmt.Errorf("serve the emulator's object URLs to the VM: %w", err)
		}
	}
	return m, nil
}

// basePort is the port of the emulator's base URL, or 0 if it has none yet.
func (s *Server) basePort() int {
	s.mu.Lock()
	base := s.baseURL
	s.mu.Unlock()
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return 0
	}
	if p := u.Port(); p != "" {
		n, _ := strconv.Atoi(p)
		return n
	}
	if u.Scheme == "https" {
		return 443
	}
	return 80
}

// loopbackBase reports whether VMs reach a base URL's host on their own
// loopback (127.0.0.1, and ::1 where a VM has IPv6).
func loopbackBase(base string) bool {
	u, err := url.Parse(base)
	if err != nil {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}
