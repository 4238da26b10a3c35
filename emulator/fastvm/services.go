//go:build linux

package fastvm

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

// Services (§9) are a VM's HTTPS reverse-proxy registrations: each is
// published at https://<name>--<vm id without hyphens>.<proxy domain> and
// opens its port in the VM's effective firewall. The emulator keeps the
// registry and the firewall view; it runs no proxy (its VMs share the
// host's network, where the ports are reachable as they are).

// maxServices is the most services a VM may have (§9).
const maxServices = 16

// serviceName is a DNS label of 1 to 29 characters. UNVERIFIED, emulator
// choice: lowercase letters, digits and inner hyphens, and no "--", which
// separates the name from the VM id in the service's host name (29 + 2 + 32
// characters fill a 63-character DNS label).
var serviceName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,27}[a-z0-9])?$`)

// checkService validates a service's name and port.
func checkService(name string, port int) error {
	if !serviceName.MatchString(name) || strings.Contains(name, "--") {
		return fmt.Errorf("service name %q must be 1 to 29 lowercase letters, digits and hyphens, starting and ending with a letter or digit, without \"--\" (it becomes part of a host name)", truncateString(name, 64))
	}
	if port < 1024 || port > 65535 {
		return fmt.Errorf("service port %d must be between 1024 and 65535 (privileged ports are refused)", port)
	}
	return nil
}

// serviceJSON is the wire Service, plus (an emulator extension, which
// clients ignore) the URL the service would be published at.
type serviceJSON struct {
	Name string `json:"name"`
	Port int    `json:"port"`
	H2C  bool   `json:"h2c"`
	URL  string `json:"url,omitempty"`
}

func (s *Server) serviceJSON(vmID string, sv service) serviceJSON {
	return serviceJSON{Name: sv.Name, Port: sv.Port, H2C: sv.H2C,
		URL: "https://" + sv.Name + "--" + strings.ReplaceAll(vmID, "-", "") + "." + s.proxyDomain}
}

// effectiveFirewall is the VM's firewall with an auto-rule per service:
// TCP to its port from anywhere (§9).
func effectiveFirewall(v *vmRecord) *firewallPolicy {
	if v.Firewall == nil && len(v.Services) == 0 {
		return nil
	}
	out := firewallPolicy{Mode: "restricted"}
	if v.Firewall != nil {
		out.Mode = v.Firewall.Mode
		out.Ingress = slices.Clone(v.Firewall.Ingress)
	}
	for _, sv := range v.Services {
		out.Ingress = append(out.Ingress, firewallRule{Protocol: "tcp", PortStart: sv.Port,
			SourceCidrs: []string{"::/0"}, Description: "auto: proxy service " + sv.Name})
	}
	return &out
}

// serviceRequest is the body of POST and PUT: port is required.
type serviceRequest struct {
	Name *string `json:"name"`
	Port *int    `json:"port"`
	H2C  *bool   `json:"h2c"`
}

// serviceVM finds the VM of a services request, answering 404 itself, and
// 409 for a VM being deleted or failed; the caller gets s.mu held when ok.
func (s *Server) serviceVM(w http.ResponseWriter, r *http.Request) (*vmRecord, bool) {
	v, ok := s.lookupVM(w, r)
	if !ok {
		return nil, false
	}
	s.mu.Lock()
	if v.Status == statusDeleting || v.Status == statusError {
		s.mu.Unlock()
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s is %s: its services cannot change", v.ID, v.Status))
		return nil, false
	}
	return v, true
}

// withService returns the VM's services with sv added or replacing the one
// of its name, sorted by name.
func withService(list []service, sv service) []service {
	out := slices.DeleteFunc(slices.Clone(list), func(x service) bool { return x.Name == sv.Name })
	out = append(out, sv)
	slices.SortFunc(out, func(a, b service) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func findService(list []service, name string) (service, bool) {
	i := slices.IndexFunc(list, func(x service) bool { return x.Name == name })
	if i < 0 {
		return service{}, false
	}
	return list[i], true
}

// createService registers a service: 201, also when the same (port, h2c)
// is registered under that name; 409 when another is, or when the VM has
// the most services it may have. UNVERIFIED, emulator choice: the cap is a
// 409 too (the VM's state forbids it).
func (s *Server) createService(w http.ResponseWriter, r *http.Request) {
	var req serviceRequest
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	if req.Name == nil || req.Port == nil {
		writeError(w, http.StatusBadRequest, `name and port are required, e.g. {"name":"web","port":8080}`)
		return
	}
	sv := service{Name: *req.Name, Port: *req.Port, H2C: deref(req.H2C)}
	if err := checkService(sv.Name, sv.Port); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	v, ok := s.serviceVM(w, r)
	if !ok {
		return
	}
	defer s.mu.Unlock()
	if old, ok := findService(v.Services, sv.Name); ok {
		if old != sv {
			writeError(w, http.StatusConflict, fmt.Sprintf("service %q is registered on port %d (h2c %v): change it with PUT /v1/vms/%s/services/%s", sv.Name, old.Port, old.H2C, v.ID, sv.Name))
			return
		}
		writeJSON(w, http.StatusCreated, s.serviceJSON(v.ID, old))
		return
	}
	if len(v.Services) >= maxServices {
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s has %d services, the most allowed: delete one first", v.ID, maxServices))
		return
	}
	s.saveServices(w, v, withService(v.Services, sv), http.StatusCreated, sv)
}

// putService registers or updates a service: 200. An omitted h2c keeps the
// registered one's (false for a new service).
func (s *Server) putService(w http.ResponseWriter, r *http.Request) {
	var req serviceRequest
	if !decodeBody(w, r, maxJSONBody, &req) {
		return
	}
	if req.Port == nil {
		writeError(w, http.StatusBadRequest, `port is required, e.g. {"port":8080}`)
		return
	}
	name := r.PathValue("name")
	if err := checkService(name, *req.Port); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	v, ok := s.serviceVM(w, r)
	if !ok {
		return
	}
	defer s.mu.Unlock()
	old, exists := findService(v.Services, name)
	sv := service{Name: name, Port: *req.Port, H2C: old.H2C}
	if req.H2C != nil {
		sv.H2C = *req.H2C
	}
	if !exists && len(v.Services) >= maxServices {
		writeError(w, http.StatusConflict, fmt.Sprintf("VM %s has %d services, the most allowed: delete one first", v.ID, maxServices))
		return
	}
	if exists && old == sv {
		writeJSON(w, http.StatusOK, s.serviceJSON(v.ID, sv))
		return
	}
	s.saveServices(w, v, withService(v.Services, sv), http.StatusOK, sv)
}

// saveServices stores the VM's new services and answers sv; the caller
// holds s.mu.
func (s *Server) saveServices(w http.ResponseWriter, v *vmRecord, list []service, status int, sv service) {
	next := *v
	next.Services = list
	if err := s.store.saveVM(&next); err != nil {
		writeError(w, http.StatusInternalServerError, "store the VM record: "+err.Error())
		return
	}
	*v = next
	writeJSON(w, status, s.serviceJSON(v.ID, sv))
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	s.mu.Lock()
	out := make([]serviceJSON, 0, len(v.Services))
	for _, sv := range v.Services {
		out = append(out, s.serviceJSON(v.ID, sv))
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// deleteService removes a service and its firewall auto-rule: 204, also
// when there is none of that name.
func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) {
	v, ok := s.lookupVM(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := findService(v.Services, name); ok {
		next := *v
		next.Services = slices.DeleteFunc(slices.Clone(v.Services), func(x service) bool { return x.Name == name })
		if err := s.store.saveVM(&next); err != nil {
			writeError(w, http.StatusInternalServerError, "store the VM record: "+err.Error())
			return
		}
		*v = next
	}
	w.WriteHeader(http.StatusNoContent)
}

// replayServices registers a snapshot's services on a VM restored from it,
// all or none (§9); the caller holds s.mu. When they cannot all be
// registered, the VM gets none and the launch answer says which.
func (s *Server) replayServices(list []service) ([]service, *restoreWarnings) {
	if len(list) == 0 {
		return nil, nil
	}
	reason := ""
	if s.failReplay {
		s.failReplay = false
		reason = "the service registry refused the services (failure injected by the emulator)"
	} else if len(list) > maxServices {
		reason = fmt.Sprintf("the snapshot has %d services, more than the %d a VM may have", len(list), maxServices)
	} else {
		for _, sv := range list {
			if err := checkService(sv.Name, sv.Port); err != nil {
				reason = err.Error()
				break
			}
		}
	}
	if reason != "" {
		return nil, &restoreWarnings{ServicesRegistrationFailed: true, Reason: reason, UnregisteredServices: slices.Clone(list)}
	}
	return slices.Clone(list), nil
}
