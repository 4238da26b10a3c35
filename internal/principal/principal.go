// Package principal carries who is calling through a request's context:
// the authenticated principal of the hosted endpoint, or the user running
// a stdio server. It is a leaf, so that authentication and the tools share
// it without importing each other.
package principal

import (
	"context"
	"os/user"
)

type key struct{}

// With returns a context whose calls act as p.
func With(ctx context.Context, p string) context.Context {
	return context.WithValue(ctx, key{}, p)
}

// From is the principal that With set, or "" if none did.
func From(ctx context.Context) string {
	p, _ := ctx.Value(key{}).(string)
	return p
}

// Local names the user running the server, whom its stdio clients act as;
// no principal of the hosted endpoint has this name.
func Local() string {
	if u, err := user.Current(); err == nil {
		return "local:" + u.Username
	}
	return "local"
}
