package fastvm

import (
	"context"
	"net/http"
)

// Services (TS SDK 0.6): a VM's HTTPS reverse-proxy registrations. Each
// publishes a TCP port of the VM at ServiceURL and opens it in the VM's
// effective firewall. At most 16 per VM. Servers before TS SDK 0.5 answer
// 404 (see IsNotFound).

// serviceBody is what POST and PUT send.
type serviceBody struct {
	Name string `json:"name,omitempty"`
	Port int    `json:"port"`
	H2C  bool   `json:"h2c"`
}

// CreateService registers a service. Registering the same name, port and
// h2c again answers the existing one; another port or h2c under a name
// that exists is a 409 *APIError (PutService changes it). Never retried:
// spec §1 lists it with the non-idempotent POSTs.
func (c *Client) CreateService(ctx context.Context, vmID string, s Service) (*Service, error) {
	return callJSON[Service](ctx, c, call{method: http.MethodPost, path: "/v1/vms/" + pathID(vmID) + "/services",
		body: serviceBody{Name: s.Name, Port: s.Port, H2C: s.H2C}})
}

// ListServices returns a VM's services, sorted by name.
func (c *Client) ListServices(ctx context.Context, vmID string) ([]Service, error) {
	out, err := callJSON[[]Service](ctx, c, call{method: http.MethodGet, path: "/v1/vms/" + pathID(vmID) + "/services", retry: true})
	if err != nil {
		return nil, err
	}
	return *out, nil
}

// PutService registers the service name or changes its port and h2c.
func (c *Client) PutService(ctx context.Context, vmID, name string, port int, h2c bool) (*Service, error) {
	return callJSON[Service](ctx, c, call{method: http.MethodPut, path: "/v1/vms/" + pathID(vmID) + "/services/" + pathID(name),
		body: serviceBody{Port: port, H2C: h2c}, retry: true})
}

// DeleteService removes a service and its firewall rule; removing one that
// does not exist succeeds too.
func (c *Client) DeleteService(ctx context.Context, vmID, name string) error {
	_, err := c.doJSON(ctx, call{method: http.MethodDelete, path: "/v1/vms/" + pathID(vmID) + "/services/" + pathID(name), retry: true}, nil)
	return err
}
