package backend

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ValidateDomains checks an allow-list: names, each exact or *.suffix, no
// addresses, no empty entries.
func ValidateDomains(domains []string) error {
	for _, d := range domains {
		name := strings.TrimPrefix(d, "*.")
		switch {
		case d == "":
			return errors.New("an empty domain: give names such as pypi.org or *.example.com")
		case strings.Contains(name, "*"):
			return fmt.Errorf("domain %q: a wildcard may only begin a domain, as in *.example.com", d)
		case isIP(name):
			return fmt.Errorf("domain %q is an address: allow names, such as pypi.org", d)
		case !validName(name):
			return fmt.Errorf("domain %q is not a domain name: give names such as pypi.org or *.example.com", d)
		}
	}
	return nil
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(strings.Trim(s, "[]"))
	return err == nil
}

func validName(s string) bool {
	if s == "" || len(s) > 253 || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// DomainAllowed reports whether host matches one of the domains.
func DomainAllowed(domains []string, host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, d := range domains {
		d = strings.ToLower(d)
		if suffix, ok := strings.CutPrefix(d, "*."); ok {
			if strings.HasSuffix(host, "."+suffix) {
				return true
			}
		} else if host == d {
			return true
		}
	}
	return false
}
