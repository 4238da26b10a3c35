package main

// The command line's own commands, besides serving MCP: `mcp-server
// machines list|rm|prune`, `mcp-server snapshots list|rm` and `mcp-server
// doctor`. They take the server's settings (its flags and environment
// variables, through loadConfig), so that they find the state directory,
// the session store and the backends exactly where the server does.
//
// They open the state directory as the server does, engine and store, and
// delete through the broker, so that a conversation forgets what is
// deleted in the same steps as delete_vm and delete_snapshot. While a
// server owns the state directory (its lock; see shared.go), the engine
// cannot be opened, and must not be: two engines would drive one machine.
// Then the lists read the records on disk (which are written whole, so
// reading them changes nothing and sees nothing half made), and rm and
// prune refuse, saying which server to stop: deleting through that
// server's tools would act as one principal, not as the operator.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmcp-dev/vmcp/backend"
	localbackend "github.com/vmcp-dev/vmcp/backend/local"
	"github.com/vmcp-dev/vmcp/broker"
	"github.com/vmcp-dev/vmcp/conversations"
	"github.com/vmcp-dev/vmcp/local"
)

// cliEnv is what a command reads and writes: the process's, or a test's.
type cliEnv struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	cwd            string
}

// processEnv is the process's cliEnv.
func processEnv() (cliEnv, error) {
	cwd, err := os.Getwd()
	return cliEnv{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, cwd: cwd}, err
}

// cliFlags are the commands' own flags (each command takes some of them).
type cliFlags struct {
	json, dryRun bool
	unusedFor    time.Duration
}

// command is one command of the command line.
type command struct {
	group, name string // "machines" and "list"; doctor has no name
	operands    string // synopsis of the operands, "" for none
	short       string // what it does, in a few words
	minOperands int
	about       string
	flags       []string // its own flags, of flagSet's
	// mutates: it deletes, so it needs the state directory to itself.
	mutates bool
	run     func(ctx context.Context, r *cliRun) error
}

// title is the command as typed: "machines list".
func (c *command) title() string { return strings.TrimSpace(c.group + " " + c.name) }

// commands are the command line's commands, in the order usage lists them.
var commands = []*command{
	{group: "machines", name: "list", short: "list the local machines, their owners and disk use", flags: []string{"json"}, run: machinesList,
		about: "Lists the local machines of the state directory: id, name, status, the conversation that owns it (a hash of its handle, as on\n" +
			"the machine's vmcp.conversation tag) and its principal, when it was created and last used, and the disk its files take.\n" +
			"While a server owns the state directory, the list comes from the records on disk: statuses and owners are then the server's\n" +
			"to know, and show as unknown."},
	{group: "machines", name: "rm", short: "delete machines by id", operands: "ID...", minOperands: 1, mutates: true, run: machinesRemove,
		about: "Deletes local machines (ids, as `mcp-server machines list` shows them) with all their files, whichever conversation owns them;\n" +
			"the conversation forgets them, as after delete_vm (its next call gets a new machine). Snapshots taken from them stay.\n" +
			"Refuses while a server owns the state directory."},
	{group: "machines", name: "prune", short: "delete the machines no conversation refers to (or unused for long)", flags: []string{"dry-run", "unused-for"}, mutates: true, run: machinesPrune,
		about: "Deletes the local machines that nothing will use again: those that no conversation refers to (left by a server killed\n" +
			"between making and recording one, or by a closed conversation whose machine could not be deleted then), except the default\n" +
			"machine of a version from before conversations, which the next server adopts; with --unused-for, also the machines that\n" +
			"their conversation last used longer ago than that. It forgets the records of machines that no longer exist (not with a\n" +
			"shared --session-store, which also records other hosts' machines).\n" +
			"Refuses while a server owns the state directory."},
	{group: "snapshots", name: "list", short: "list the local snapshots, their owners and sizes", flags: []string{"json"}, run: snapshotsList,
		about: "Lists the local snapshots of the state directory: id, name, the machine it was taken from, the conversation that owns it,\n" +
			"when it was taken and its size."},
	{group: "snapshots", name: "rm", short: "delete snapshots by id", operands: "ID...", minOperands: 1, mutates: true, run: snapshotsRemove,
		about: "Deletes local snapshots, whichever conversation owns them; the conversation forgets them, as after delete_snapshot.\n" +
			"Machines launched from them keep their files. Refuses while a server owns the state directory."},
	{group: "doctor", flags: []string{"json"}, run: doctor,
		about: "Checks what vmcp needs on this host, one line each with a verdict (ok, warn, fail, skip) and what to do: the state\n" +
			"directory and its disk, bubblewrap, user namespaces, a real sandbox (as a machine's) with Python in it, cgroups, the\n" +
			"session store, and the cloud backends configured (a real request to each; keys are never printed). Exits with status 1\n" +
			"when a check fails."},
}

// isCLICommand reports whether the first argument names a command rather
// than a flag of the server.
func isCLICommand(arg string) bool {
	return slices.ContainsFunc(commands, func(c *command) bool { return c.group == arg })
}

// cliRun is a command being run.
type cliRun struct {
	cmd      *command
	env      cliEnv
	cfg      Config
	flags    cliFlags
	operands []string
}

// runCLI runs the command of args (args[0] is its group), and returns
// errReported when it reported its failure itself.
func runCLI(args []string, env cliEnv) error {
	group, rest := args[0], args[1:]
	var cmd *command
	if group == "doctor" {
		cmd = findCommand(group, "")
	} else {
		if len(rest) > 0 && isHelp(rest[0]) {
			groupUsage(env.stdout, group)
			return flag.ErrHelp
		}
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			return fmt.Errorf("give a command: mcp-server %s %s (mcp-server %s -h says what each does)", group, strings.Join(groupNames(group), "|"), group)
		}
		if cmd = findCommand(group, rest[0]); cmd == nil {
			return fmt.Errorf("unknown command %q: mcp-server %s %s (mcp-server %s -h says what each does)", rest[0], group, strings.Join(groupNames(group), "|"), group)
		}
		rest = rest[1:]
	}
	r := &cliRun{cmd: cmd, env: env}
	own := r.flagSet()
	ownArgs, serverArgs, operands, err := splitArgs(rest, own)
	if errors.Is(err, flag.ErrHelp) {
		cmd.usage(env.stdout, own)
		return flag.ErrHelp
	}
	if err == nil {
		err = own.Parse(ownArgs)
	}
	if err != nil {
		return fmt.Errorf("%s: %w (mcp-server %s -h lists its flags)", cmd.title(), err, cmd.title())
	}
	if len(operands) < cmd.minOperands || cmd.operands == "" && len(operands) > 0 {
		if cmd.operands == "" {
			return fmt.Errorf("%s takes no arguments, got %s (mcp-server %s -h says what it does)", cmd.title(), strings.Join(operands, " "), cmd.title())
		}
		return fmt.Errorf("usage: mcp-server %s %s", cmd.title(), cmd.operands)
	}
	r.operands = operands
	if r.cfg, err = loadConfig(serverArgs, env.getenv, env.cwd); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return cmd.run(ctx, r)
}

func findCommand(group, name string) *command {
	aliases := map[string]string{"ls": "list", "remove": "rm", "delete": "rm"}
	if a, ok := aliases[name]; ok {
		name = a
	}
	for _, c := range commands {
		if c.group == group && c.name == name {
			return c
		}
	}
	return nil
}

// groupNames are the names of a group's commands.
func groupNames(group string) []string {
	var names []string
	for _, c := range commands {
		if c.group == group {
			names = append(names, c.name)
		}
	}
	return names
}

func isHelp(arg string) bool {
	return arg == "-h" || arg == "--h" || arg == "-help" || arg == "--help" || arg == "help"
}

// flagSet is the command's own flags, bound to r.flags.
func (r *cliRun) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("mcp-server "+r.cmd.title(), flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned, and usage is printed by cmd.usage
	for _, f := range r.cmd.flags {
		switch f {
		case "json":
			fs.BoolVar(&r.flags.json, "json", false, "print JSON instead of a table")
		case "dry-run":
			fs.BoolVar(&r.flags.dryRun, "dry-run", false, "say what would be deleted, and delete nothing")
		case "unused-for":
			fs.Var(durationFlag{&r.flags.unusedFor}, "unused-for", "also delete the machines their conversation last used longer ago than this, e.g. 168h (default: only those no conversation refers to)")
		}
	}
	return fs
}

// durationFlag is a duration flag with parseDuration's errors.
type durationFlag struct{ p *time.Duration }

func (d durationFlag) String() string {
	if d.p == nil {
		return ""
	}
	return d.p.String()
}

func (d durationFlag) Set(s string) error {
	v, err := parseDuration(s)
	if err == nil && v < 0 {
		err = errors.New("give a positive duration, such as 168h")
	}
	if err != nil {
		return err
	}
	*d.p = v
	return nil
}

// splitArgs sorts a command's arguments, in any order: its own flags
// (defined on own), the server's settings (for loadConfig, checked here so
// that a bad value is one line, not the server's usage), and the operands.
// "--" ends the flags. It is flag.ErrHelp when they ask for help.
func splitArgs(args []string, own *flag.FlagSet) (ownArgs, serverArgs, operands []string, err error) {
	var scratch Config
	server := map[string]flag.Value{}
	for _, s := range scratch.settings() {
		server[s.flag] = s.value
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			operands = append(operands, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			operands = append(operands, a)
			continue
		}
		if isHelp(a) {
			return nil, nil, nil, flag.ErrHelp
		}
		dashes := pick(strings.HasPrefix(a, "--"), "--", "-") // for messages, as typed
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, dashes), "=")
		var v flag.Value
		dst := &serverArgs
		if f := own.Lookup(name); f != nil {
			v, dst = f.Value, &ownArgs
		} else if v = server[name]; v == nil {
			return nil, nil, nil, fmt.Errorf("unknown flag %s%s", dashes, name)
		}
		*dst = append(*dst, a)
		if !hasValue && !isBool(v) {
			if i+1 == len(args) {
				return nil, nil, nil, fmt.Errorf("flag %s%s needs a value", dashes, name)
			}
			i++
			value = args[i]
			*dst = append(*dst, value)
		}
		if dst == &serverArgs && (hasValue || !isBool(v)) {
			if err := v.Set(value); err != nil {
				return nil, nil, nil, fmt.Errorf("%s%s %q: %w", dashes, name, value, err)
			}
		}
	}
	return ownArgs, serverArgs, operands, nil
}

// groupUsage prints the commands of a group.
func groupUsage(w io.Writer, group string) {
	fmt.Fprintf(w, "usage: mcp-server %s COMMAND [flags]\n\ncommands:\n", group)
	for _, c := range commands {
		if c.group == group {
			fmt.Fprintf(w, "  %-6s %s\n", c.name, c.short)
		}
	}
	fmt.Fprintf(w, "\n`mcp-server %s COMMAND -h` says more.\n", group)
}

// usage prints the command's synopsis, what it does and its flags.
func (c *command) usage(w io.Writer, own *flag.FlagSet) {
	synopsis := "mcp-server " + c.title() + " [flags]"
	if c.operands != "" {
		synopsis += " " + c.operands
	}
	fmt.Fprintf(w, "usage: %s\n\n%s\n\nflags:\n", synopsis, c.about)
	own.VisitAll(func(f *flag.Flag) {
		fmt.Fprintf(w, "  --%-12s %s\n", f.Name, f.Usage)
	})
	fmt.Fprintf(w, "  --%-12s %s (env VMCP_STATE_DIR; default %s)\n", "state-dir", "the state directory", local.DefaultStateDir())
	fmt.Fprint(w, "\nEvery other flag of the server works too, and the same environment variables set them: the commands find the session\n"+
		"store (--session-store) and the backends (--fastvm-url, FASTVM_API_KEY, --forevervm-url, FOREVERVM_TOKEN) as the server does.\n")
}

// serverUsage is the server's -h: its synopsis, the commands, its flags.
func serverUsage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprint(w, "usage: mcp-server [flags]                  serve MCP (stdio, or --transport http)\n"+
		"       mcp-server machines list|rm|prune  the local machines of the state directory\n"+
		"       mcp-server snapshots list|rm       their snapshots\n"+
		"       mcp-server doctor                  check this host and the configured backends\n"+
		"       mcp-server token new PRINCIPAL     a bearer token for --tokens-file\n"+
		"(`mcp-server machines -h` and so on say more)\n\nflags:\n")
	fs.PrintDefaults()
}

// state is the state directory as a command holds it: through the engine
// and the store, as the server does; or, while a server owns it, its
// records alone.
type state struct {
	dir     string
	missing bool // there is no state directory there (yet)
	// owned: a server owns the directory; serverPID is its pid (0 where
	// it cannot be told).
	owned     bool
	serverPID int
	engine    *local.Engine
	store     conversations.Store // nil while a server owns a bbolt store
	// ownStore: the store is the state directory's own (bbolt), so a
	// local machine it records that the engine does not have is gone; a
	// shared store (Redis) may record other hosts' local machines.
	ownStore bool
	manager  *conversations.Manager
	broker   *broker.Broker
	be       *localbackend.Backend
}

// openState opens the state directory as the server does. While a server
// owns it, a command that deletes gets the refusal to show, one that lists
// the records.
func (r *cliRun) openState() (*state, error) {
	dir := r.cfg.StateDir
	s := &state{dir: dir}
	fi, err := os.Stat(dir)
	switch {
	case err == nil && !fi.IsDir():
		return nil, explainStateDir(dir, syscall.ENOTDIR)
	case errors.Is(err, fs.ErrNotExist) || err == nil && !hasState(dir):
		// Nothing is made here: a command on a mistyped directory
		// leaves it as it was.
		s.missing = true
		return s, nil
	}
	opts := r.cfg.localOptions()
	opts.StateDir = dir
	e, err := local.New(opts)
	if errors.Is(err, local.ErrStateDirInUse) {
		_, pid := stateOwner(dir)
		s.owned, s.serverPID = true, pid
		if r.cmd.mutates {
			return nil, s.refusal()
		}
		if r.cfg.HTTP.SessionStore != "" {
			// A shared store (Redis) is no one's to own: its
			// conversations are there to read.
			if s.store, err = openStore(r.cfg.HTTP.SessionStore, dir); err != nil {
				return nil, err
			}
			s.manager = conversations.NewManager(s.store, conversations.Limits{})
		}
		return s, nil
	}
	if err != nil {
		return nil, explainStateDir(dir, err)
	}
	s.engine, s.ownStore = e, r.cfg.HTTP.SessionStore == ""
	if s.store, err = openStore(r.cfg.HTTP.SessionStore, e.StateDir()); err != nil {
		s.close()
		return nil, explainStateDir(dir, err)
	}
	s.manager = conversations.NewManager(s.store, conversations.Limits{})
	s.be = localbackend.New(e)
	// The broker logs what it deletes; the commands report it themselves.
	if s.broker, err = broker.New(broker.Config{Backends: []backend.Backend{s.be}, Conversations: s.manager, Log: zerolog.Nop()}); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// hasState reports whether dir holds vmcp's state: what a server makes
// there first.
func hasState(dir string) bool {
	for _, name := range []string{"lock", "machines", "sessions.db"} {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

// selfTestWait bounds how long closing waits for the engine's start-up
// self-test: a sandbox killed half way by this process's exit would leave
// its directory for the next start to clean.
const selfTestWait = 5 * time.Second

// close releases the store and the engine.
func (s *state) close() {
	if s.store != nil {
		s.store.Close()
	}
	if s.engine != nil {
		ctx, cancel := context.WithTimeout(context.Background(), selfTestWait)
		s.engine.SelfTest(ctx)
		cancel()
		s.engine.Close()
	}
}

// refusal says why a command that deletes does not run while a server owns
// the state directory, and what to do.
func (s *state) refusal() error {
	who := "a vmcp server"
	if s.serverPID > 0 {
		who = fmt.Sprintf("a vmcp server (pid %d)", s.serverPID)
	}
	return fmt.Errorf("%s owns state directory %s: machines and snapshots are deleted from the command line only while no server runs there, "+
		"so that none goes under a call in progress. Stop that server (quit the MCP client that started it) and run this again, "+
		"or have the agent delete them with delete_vm and delete_snapshot; `mcp-server machines list` works meanwhile", who, s.dir)
}

// ownerNote tells, on a listing, that a server owns the state directory.
func (s *state) ownerNote(w io.Writer) {
	if !s.owned {
		return
	}
	who := "a vmcp server"
	if s.serverPID > 0 {
		who = fmt.Sprintf("a vmcp server (pid %d)", s.serverPID)
	}
	if s.store == nil {
		fmt.Fprintf(w, "note: %s owns %s: this list comes from the records on disk; statuses and owning conversations are the server's to know\n", who, s.dir)
	} else {
		fmt.Fprintf(w, "note: %s owns %s: this list comes from the records on disk; statuses are the server's to know\n", who, s.dir)
	}
}

// allConversations lists every conversation; none when they are not known
// (a server owns the store).
func (s *state) allConversations(ctx context.Context) ([]*conversations.Conversation, error) {
	if s.store == nil {
		return nil, nil
	}
	return s.store.All(ctx)
}

// machines lists the local machines: the engine's, or the records'.
func (s *state) machines(ctx context.Context) ([]backend.MachineInfo, error) {
	switch {
	case s.missing:
		return nil, nil
	case s.engine != nil:
		return s.be.Machines(ctx)
	}
	return recordedMachines(s.dir)
}

// snapshots lists the local snapshots: the engine's, or the records'.
func (s *state) snapshots(ctx context.Context) ([]backend.SnapshotInfo, error) {
	switch {
	case s.missing:
		return nil, nil
	case s.engine != nil:
		return s.be.Snapshots(ctx)
	}
	return recordedSnapshots(s.dir)
}

// writeJSON prints v as indented JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// humanBytes is n in B, KiB, MiB, GiB or TiB.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v, unit := float64(n)/1024, "KiB"
	for _, u := range []string{"MiB", "GiB", "TiB"} {
		if v < 1024 {
			break
		}
		v, unit = v/1024, u
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

// ago is how long before now t was, roughly: "3m ago", "2d ago".
func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case t.IsZero():
		return "never"
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// plural is "1 machine" or "3 machines".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func pick(cond bool, yes, no string) string {
	if cond {
		return yes
	}
	return no
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
