// Command mcp-server is vmcp's MCP server over stdio: it gives AI agents
// persistent sandboxed machines with Python, commands, files and snapshots.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/mark3labs/mcp-go/server"
	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/local"
	"github.com/vmcp-dev/vmcp/prompts"
	"github.com/vmcp-dev/vmcp/tools"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	local.RunHelperIfRequested()
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mcp-server:", err)
		os.Exit(1)
	}
}

// config is what the flags and their environment fallbacks set.
type config struct {
	stateDir     string
	logLevel     zerolog.Level
	allowedRoots []string
	version      bool
}

// parseConfig reads the flags; each falls back to its environment variable
// (through getenv), then to its default. The allowed roots default to cwd.
func parseConfig(args []string, getenv func(string) string, cwd string) (config, error) {
	envOr := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("mcp-server", flag.ContinueOnError)
	stateDir := fs.String("state-dir", envOr("VMCP_STATE_DIR", local.DefaultStateDir()), "directory for machines and snapshots (env VMCP_STATE_DIR)")
	logLevel := fs.String("log-level", envOr("VMCP_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error (env VMCP_LOG_LEVEL); logs go to stderr")
	roots := fs.String("allowed-roots", envOr("VMCP_ALLOWED_ROOTS", cwd), "host directories that upload_file/download_file local_path may use, separated by "+string(filepath.ListSeparator)+" (env VMCP_ALLOWED_ROOTS)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	level, err := zerolog.ParseLevel(strings.ToLower(*logLevel))
	if err != nil || level == zerolog.NoLevel {
		return config{}, fmt.Errorf("--log-level %q: want trace, debug, info, warn, error or disabled", *logLevel)
	}
	return config{stateDir: *stateDir, logLevel: level, allowedRoots: filepath.SplitList(*roots), version: *showVersion}, nil
}

func run(args []string) error {
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	cfg, err := parseConfig(args, os.Getenv, cwd)
	if err != nil {
		return err
	}
	if cfg.version {
		fmt.Println(version)
		return nil
	}

	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true}).Level(cfg.logLevel).With().Timestamp().Logger()

	engine, err := local.New(local.Options{StateDir: cfg.stateDir})
	if err != nil {
		return err
	}
	defer engine.Close()

	svc, err := tools.NewService(engine, cfg.allowedRoots, log)
	if err != nil {
		return err
	}
	srv := NewServer(svc)
	log.Info().Str("state_dir", engine.StateDir()).Strs("allowed_roots", cfg.allowedRoots).Bool("sandboxed", engine.Sandboxed()).Msg("vmcp MCP server on stdio")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	stdio := server.NewStdioServer(srv)
	stdio.SetErrorLogger(stdLogger(log))
	err = stdio.Listen(ctx, os.Stdin, os.Stdout)
	if err != nil && ctx.Err() == nil {
		return err
	}
	log.Info().Msg("shutting down")
	return nil
}

// NewServer builds the MCP server with every tool and prompt.
func NewServer(svc *tools.Service) *server.MCPServer {
	srv := server.NewMCPServer("vmcp", version,
		server.WithInstructions(tools.Instructions),
		server.WithToolCapabilities(false),
		server.WithPromptCapabilities(false),
		server.WithInputSchemaValidation(),
		server.WithOutputSchemaValidation(),
		server.WithRecovery(),
	)
	svc.Register(srv)
	prompts.Register(srv)
	return srv
}
