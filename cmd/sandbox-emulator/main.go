//go:build linux

// Command sandbox-emulator serves emulations of the sandbox clouds that vmcp
// can use (ForeverVM and FastVM) on local addresses, running every machine
// for real on the embedded local engine. Point an SDK, a CLI or vmcp's own
// backends at it to test without a cloud account:
//
//	sandbox-emulator --forevervm-listen 127.0.0.1:8080 --forevervm-token ID.SECRET \
//		--fastvm-listen 127.0.0.1:8081 --fastvm-api-key KEY
//
// FastVM VMs have no network unless --fastvm-vm-network-allow lists domains
// they may reach (through the engine's proxy); they never reach this host's
// loopback services, the emulators and vmcp included: only the FastVM
// emulator's presigned object URLs are served to them, on their own loopback.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/emulator/fastvm"
	"github.com/vmcp-dev/vmcp/emulator/forevervm"
	"github.com/vmcp-dev/vmcp/local"
)

func main() {
	local.RunHelperIfRequested()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "sandbox-emulator:", err)
		os.Exit(1)
	}
}

// config is what the flags and their environment fallbacks set.
type config struct {
	forevervmListen string
	forevervmToken  string
	fastvmListen    string
	fastvmAPIKey    string
	// fastvmProxyDomain is the domain of FastVM services' URLs;
	// fastvmNoExtensions serves FastVM without pause, resume, TTL refresh
	// and services (a service before TS SDK 0.5).
	fastvmProxyDomain  string
	fastvmNoExtensions bool
	// fastvmVMNetworkAllow are the domains FastVM VMs reach (none: they
	// have no network).
	fastvmVMNetworkAllow []string
	stateDir             string
	logLevel             zerolog.Level
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	envOr := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("sandbox-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.StringVar(&cfg.forevervmListen, "forevervm-listen", envOr("FOREVERVM_EMULATOR_LISTEN", ""), "address of the ForeverVM emulator, e.g. 127.0.0.1:8080 (env FOREVERVM_EMULATOR_LISTEN)")
	fs.StringVar(&cfg.forevervmToken, "forevervm-token", envOr("FOREVERVM_TOKEN", ""), "the token the ForeverVM emulator accepts, shaped ID.SECRET (env FOREVERVM_TOKEN)")
	fs.StringVar(&cfg.fastvmListen, "fastvm-listen", envOr("FASTVM_EMULATOR_LISTEN", ""), "address of the FastVM emulator, e.g. 127.0.0.1:8081 (env FASTVM_EMULATOR_LISTEN)")
	fs.StringVar(&cfg.fastvmAPIKey, "fastvm-api-key", envOr("FASTVM_API_KEY", ""), "the API key the FastVM emulator accepts (env FASTVM_API_KEY)")
	fs.StringVar(&cfg.fastvmProxyDomain, "fastvm-proxy-domain", envOr("FASTVM_EMULATOR_PROXY_DOMAIN", fastvm.DefaultProxyDomain), "domain of FastVM services' public URLs, https://<name>--<vm>.<domain> (env FASTVM_EMULATOR_PROXY_DOMAIN)")
	fs.BoolVar(&cfg.fastvmNoExtensions, "fastvm-no-extensions", envOr("FASTVM_EMULATOR_NO_EXTENSIONS", "") == "1", "serve FastVM without pause, resume, TTL refresh and services, which then answer 404 as on a service that predates them (env FASTVM_EMULATOR_NO_EXTENSIONS=1)")
	vmNetwork := fs.String("fastvm-vm-network-allow", envOr("FASTVM_EMULATOR_VM_NETWORK_ALLOW", ""), "comma-separated domains (or *.suffix) that FastVM VMs reach over HTTP(S) through the engine's proxy, e.g. pypi.org,files.pythonhosted.org; default none: VMs have no network, and never reach this host's loopback services (env FASTVM_EMULATOR_VM_NETWORK_ALLOW)")
	fs.StringVar(&cfg.stateDir, "state-dir", envOr("VMCP_EMULATOR_STATE_DIR", defaultStateDir()), "directory for the emulated machines (env VMCP_EMULATOR_STATE_DIR)")
	level := fs.String("log-level", envOr("VMCP_LOG_LEVEL", "info"), "log level: trace, debug, info, warn, error (env VMCP_LOG_LEVEL); logs go to stderr")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q: every setting is a flag (see -h)", fs.Args())
	}
	for _, d := range strings.Split(*vmNetwork, ",") {
		if d = strings.TrimSpace(d); d != "" {
			cfg.fastvmVMNetworkAllow = append(cfg.fastvmVMNetworkAllow, d)
		}
	}
	if err := backend.ValidateDomains(cfg.fastvmVMNetworkAllow); err != nil {
		return cfg, fmt.Errorf("--fastvm-vm-network-allow: %w", err)
	}
	var err error
	if cfg.logLevel, err = zerolog.ParseLevel(*level); err != nil {
		return cfg, fmt.Errorf("--log-level %q: use trace, debug, info, warn or error", *level)
	}
	if cfg.forevervmListen == "" && cfg.fastvmListen == "" {
		return cfg, errors.New("nothing to serve: set --forevervm-listen (or FOREVERVM_EMULATOR_LISTEN), e.g. 127.0.0.1:8080, and/or --fastvm-listen (FASTVM_EMULATOR_LISTEN)")
	}
	if cfg.fastvmListen != "" && cfg.fastvmAPIKey == "" {
		return cfg, errors.New("the FastVM emulator needs an API key: set --fastvm-api-key (or FASTVM_API_KEY) to any string")
	}
	if cfg.forevervmListen != "" && cfg.forevervmToken == "" {
		return cfg, errors.New("the ForeverVM emulator needs a token: set --forevervm-token (or FOREVERVM_TOKEN) to any ID.SECRET string")
	}
	return cfg, nil
}

// defaultStateDir sits next to vmcp's own state directory, not inside it:
// one engine at a time may use a state directory.
func defaultStateDir() string {
	return filepath.Join(filepath.Dir(local.DefaultStateDir()), "vmcp-emulator")
}

// service is one emulated cloud API and the address it listens on.
type service struct {
	name    string // "forevervm"
	addr    string
	handler http.Handler
	close   func() error // ends its long polls and WebSockets
	// listening, if set, learns the service's base URL once it listens
	// (the FastVM emulator mints presigned URLs with it).
	listening func(baseURL string)
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, err := parseConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := zerolog.New(stderr).Level(cfg.logLevel).With().Timestamp().Logger()
	engine, err := local.New(local.Options{StateDir: cfg.stateDir})
	if err != nil {
		return fmt.Errorf("open the sandbox engine in %s: %w", cfg.stateDir, err)
	}
	defer engine.Close()

	var services []service
	if cfg.forevervmListen != "" {
		fvm, err := forevervm.New(forevervm.Options{Engine: engine, Token: cfg.forevervmToken, Logger: log})
		if err != nil {
			return err
		}
		services = append(services, service{name: "forevervm", addr: cfg.forevervmListen, handler: fvm, close: fvm.Close})
	}
	if cfg.fastvmListen != "" {
		fast, err := fastvm.New(fastvm.Options{Engine: engine, APIKey: cfg.fastvmAPIKey, Logger: log,
			ProxyDomain: cfg.fastvmProxyDomain, NoExtensions: cfg.fastvmNoExtensions, VMNetworkAllow: cfg.fastvmVMNetworkAllow})
		if err != nil {
			return err
		}
		services = append(services, service{name: "fastvm", addr: cfg.fastvmListen, handler: fast, close: fast.Close, listening: fast.SetBaseURL})
	}

	return serve(ctx, services, log, stderr)
}

// serve listens on every service's address (all or none), serves them until
// ctx ends or one fails, then shuts them all down.
func serve(ctx context.Context, services []service, log zerolog.Logger, stderr io.Writer) error {
	listeners := make([]net.Listener, 0, len(services))
	defer func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}()
	for _, svc := range services {
		ln, err := net.Listen("tcp", svc.addr)
		if err != nil {
			return fmt.Errorf("%s emulator: %w", svc.name, err)
		}
		listeners = append(listeners, ln)
	}

	failed := make(chan error, len(services))
	servers := make([]*http.Server, len(services))
	for i, svc := range services {
		ln := listeners[i]
		// No write timeout: result long polls last as long as an instruction
		// (up to 20 minutes).
		srv := &http.Server{Handler: svc.handler, ReadHeaderTimeout: 10 * time.Second}
		servers[i] = srv
		// The emulator knows its address before it serves: a VM launched
		// by the first request gets the port of its presigned URLs.
		if svc.listening != nil {
			svc.listening("http://" + ln.Addr().String())
		}
		go func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("%s emulator: %w", svc.name, err)
			}
		}()
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
			log.Warn().Str("address", ln.Addr().String()).Msgf("the %s emulator listens beyond this host: anyone who can reach it with the token runs code here", svc.name)
		}
		fmt.Fprintf(stderr, "%s emulator listening on http://%s\n", svc.name, ln.Addr())
	}

	var err error
	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case err = <-failed:
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, svc := range services {
		svc.close() // first, or Shutdown would wait for long polls
		if serr := servers[i].Shutdown(shutdownCtx); serr != nil && err == nil {
			err = fmt.Errorf("%s emulator shutdown: %w", svc.name, serr)
		}
	}
	return err
}
