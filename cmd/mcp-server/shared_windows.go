package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync/atomic"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/tools"
)

// besideOwner refuses: on Windows, servers do not share a state directory
// (the owner's socket needs Unix credentials to check its callers).
func besideOwner(cfg Config, _ []string, _ local.Options, _ zerolog.Logger, inUse error) (*local.Engine, io.Reader, io.Writer, net.Listener, func(), error) {
	return nil, nil, nil, nil, nil, fmt.Errorf("%w (on Windows, servers cannot share one)", inUse)
}

// serveOthers shares nothing on Windows.
func serveOthers(context.Context, Config, *local.Engine, *server.MCPServer, *tools.Service, *conversations.Manager,
	*atomic.Pointer[func(string) []backend.Backend], mcp.Implementation, zerolog.Logger) (sharing bool, wait func()) {
	return false, func() {}
}
