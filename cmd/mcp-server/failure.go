package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/internal/pipeio"
	"github.com/vmcp-dev/vmcp/tools"
	"github.com/vmcp-dev/vmcp/transport"
)

// explainStateDir turns a failure to use the state directory into one line
// that says what is wrong and how to fix it.
func explainStateDir(dir string, err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("vmcp may not write to its state directory %s (it belongs to another user, or its permissions forbid it): give --state-dir (VMCP_STATE_DIR) a directory of your own (%v)", dir, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("vmcp's state directory %s is on a read-only filesystem: give --state-dir (VMCP_STATE_DIR) a writable directory (%v)", dir, err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("the disk that holds vmcp's state directory %s is full: free some space, or give --state-dir (VMCP_STATE_DIR) a directory on another disk (%v)", dir, err)
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("vmcp's state directory %s is not a directory: give --state-dir (VMCP_STATE_DIR) a directory (%v)", dir, err)
	}
	return err
}

// startupFailure ends a server that cannot start. Over stdio it first tells
// the client why, rather than closing the connection unexplained: it
// serves MCP with every tool answering the reason as a tool error, until
// the client leaves; the process then exits with the error.
func startupFailure(cfg Config, cause error, log zerolog.Logger) error {
	log.Error().Msg(cause.Error())
	if cfg.HTTP.Transport == "http" {
		return cause
	}
	in, out, restore, err := pipeio.Stdio(os.Stdin, os.Stdout)
	if err != nil {
		return cause
	}
	defer restore()
	return serveFailure(cause, log, in, out)
}

// serveFailure serves a client, on in and out, a server whose every tool
// answers cause; it returns errReported when the client leaves.
func serveFailure(cause error, log zerolog.Logger, in io.Reader, out io.Writer) error {
	msg := "vmcp could not start, so no tool works: " + cause.Error()
	info := tools.ServerInfo(version)
	srv := server.NewMCPServer(info.Name, info.Version, server.WithInstructions(msg), server.WithToolCapabilities(false))
	for _, def := range tools.Definitions() {
		srv.AddTool(def, func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultError(msg), nil
		})
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	_ = transport.ServeStdio(ctx, srv, in, out, transport.StdioOptions{Logger: log, ServerInfo: &info})
	return errReported
}

// errNoBackend is the start of a server with nowhere to run machines.
var errNoBackend = errors.New("no backend is configured, so there is nowhere to run machines: set FASTVM_API_KEY (or --fastvm-api-key-file) for FastVM, " +
	"or FOREVERVM_TOKEN (or --forevervm-token-file) for ForeverVM; over --transport http, --enable-local-backend (VMCP_ENABLE_LOCAL_BACKEND=1) runs machines on this host")

// errReported ends the process with a failure already logged.
var errReported = errors.New("the error was reported")
