package tools

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/invopop/jsonschema"

	"github.com/vmcp-dev/vmcp/backend"
)

// NetworkArg is launch_vm's network: "none", "open", or a list of domains.
type NetworkArg struct {
	Policy  string   // "none" or "open"; "" with Domains
	Domains []string // the allow-list
}

// UnmarshalJSON takes a string or a list of strings.
func (n *NetworkArg) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		if s != "none" && s != "open" {
			return fmt.Errorf(`network %q: give "none", "open", or a list of domains such as ["pypi.org", "*.pythonhosted.org"]`, s)
		}
		*n = NetworkArg{Policy: s}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New(`network: give "none", "open", or a list of domains such as ["pypi.org", "*.pythonhosted.org"]`)
	}
	*n = NetworkArg{Domains: list}
	return nil
}

// MarshalJSON writes what UnmarshalJSON reads.
func (n NetworkArg) MarshalJSON() ([]byte, error) {
	if n.Policy != "" {
		return json.Marshal(n.Policy)
	}
	return json.Marshal(n.Domains)
}

// JSONSchema is a string or a list of strings.
func (NetworkArg) JSONSchema() *jsonschema.Schema {
	return &jsonschema.Schema{
		OneOf: []*jsonschema.Schema{
			{Type: "string", Enum: []any{"none", "open"}},
			{Type: "array", Items: &jsonschema.Schema{Type: "string"}, MinItems: ptr(uint64(1))},
		},
	}
}

func ptr[T any](v T) *T { return &v }

// NetworkConfig is what the operator lets machines reach.
type NetworkConfig struct {
	// Allow are the domains (exact, or *.suffix) that launch_vm may list.
	Allow []string
	// Open lets launch_vm ask for the host's network.
	Open bool
	// Default is the policy of machines created without one.
	Default backend.Network
}

// Check validates the operator's configuration.
func (c NetworkConfig) Check() error {
	if err := backend.ValidateDomains(c.Allow); err != nil {
		return fmt.Errorf("--network-allow: %w", err)
	}
	if c.Default.Open && !c.Open {
		return errors.New("--network-default open needs --network-open")
	}
	return nil
}

// networkPolicy turns launch_vm's network into a policy within the
// operator's bounds; nil: the default.
func (s *Service) networkPolicy(arg *NetworkArg) (*backend.Network, error) {
	if arg == nil {
		return nil, nil
	}
	switch arg.Policy {
	case "none":
		return &backend.Network{}, nil
	case "open":
		if !s.network.Open {
			return nil, errors.New(`network "open" is not enabled on this server (the operator starts it with --network-open); ask for a list of domains instead`)
		}
		return &backend.Network{Open: true}, nil
	}
	if len(s.network.Allow) == 0 {
		return nil, errors.New("this server lets machines reach no domains (the operator lists them with --network-allow): network can only be \"none\"")
	}
	if err := backend.ValidateDomains(arg.Domains); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	for _, d := range arg.Domains {
		if !withinDomains(s.network.Allow, d) {
			return nil, fmt.Errorf("network: %s is not among the domains this server allows (%s)", d, strings.Join(s.network.Allow, ", "))
		}
	}
	return &backend.Network{Allow: arg.Domains}, nil
}

// withinDomains reports whether every name d matches is one that the
// operator's domains allow.
func withinDomains(allowed []string, d string) bool {
	suffix, wild := strings.CutPrefix(strings.ToLower(d), "*.")
	if !wild {
		return backend.DomainAllowed(allowed, d)
	}
	for _, a := range allowed {
		a = strings.ToLower(a)
		if a == "*."+suffix {
			return true
		}
		if p, ok := strings.CutPrefix(a, "*."); ok && strings.HasSuffix(suffix, "."+p) {
			return true
		}
	}
	return false
}

// networkFailure is what a program prints when it finds no network.
// (pip without retries says only that it found no distribution: in a
// machine without network, that is why).
var networkFailure = regexp.MustCompile(`(?i)temporary failure in name resolution|name or service not known|could not resolve host|network is unreachable|nodename nor servname|getaddrinfo failed|getaddrinfo eai_again|failed to establish a new connection|no address associated with hostname|no matching distribution found`)

// noNetworkNote is the line that tells the model why a command could not
// reach the network: its machine has none.
func noNetworkNote(m backend.Machine, output ...string) string {
	r, ok := m.(backend.NetworkReporter)
	if !ok || r.Network().String() != "none" {
		return ""
	}
	for _, o := range output {
		if networkFailure.MatchString(o) {
			return "Note: this machine has no network (policy none), by design. launch_vm with network set to the domains it needs (within those session_info lists) gives a machine that reaches them; files can also come in with upload_file."
		}
	}
	return ""
}
