package backendfake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
)

// The fake shell: a command line is a list of simple commands separated by
// ';' or newlines, each a built-in with its words; see the package comment.

// word is a word of a command line; quoted words are never redirections.
type word struct {
	text   string
	quoted bool
}

// proc is the state of one Run: its streams, environment and directory.
type proc struct {
	m        *Machine
	ctx      context.Context
	deadline time.Time
	env      map[string]string
	dir      string // a key of the files map
	stdin    io.Reader
	out      *output
}

// errExit ends a command line early (exit, a timeout, a cancellation).
type errExit struct {
	code int
	why  string // "timed out", "cancelled" or "" for exit
}

func (e *errExit) Error() string { return fmt.Sprintf("exit %d %s", e.code, e.why) }

// Run runs a command line or an argv of built-ins. A non-zero exit is a
// result; a timeout is a result with TimedOut; a cancelled ctx is an error.
func (m *Machine) Run(ctx context.Context, c backend.Command) (*backend.CommandResult, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	if err := m.use(); err != nil {
		return nil, err
	}
	p := &proc{m: m, ctx: ctx, stdin: c.Stdin, out: newOutput(c.OnOutput, c.Stdout, c.Stderr, c.MaxOutput),
		env: map[string]string{"HOME": Home, "PATH": "/usr/local/bin:/usr/bin:/bin", "USER": "fake"}}
	for k, v := range c.Env {
		p.env[k] = v
	}
	if p.stdin == nil {
		p.stdin = strings.NewReader("")
	}
	if c.Timeout > 0 {
		p.deadline = time.Now().Add(c.Timeout)
	}
	dir, err := rel(orDot(c.Workdir))
	if err != nil {
		return nil, err
	}
	m.b.mu.Lock()
	f := m.files[dir]
	m.b.mu.Unlock()
	if f == nil || !f.dir {
		return nil, fmt.Errorf("working directory %s: no such directory in fake machine %s", abs(dir), m.info.ID)
	}
	p.dir = dir

	started := m.b.now()
	code := 0
	if c.Shell != "" {
		code, err = p.script(c.Shell)
	} else {
		code, err = p.argv(c.Argv)
	}
	p.out.flush()
	res := &backend.CommandResult{ExitCode: code, Stdout: p.out.kept[0].String(), Stderr: p.out.kept[1].String(),
		StdoutTruncated: p.out.kept[0].Truncated, StderrTruncated: p.out.kept[1].Truncated, Duration: m.b.now().Sub(started)}
	var stop *errExit
	if errors.As(err, &stop) {
		switch stop.why {
		case "cancelled":
			return nil, fmt.Errorf("command on fake machine %s: %w", m.info.ID, ctx.Err())
		case "timed out":
			res.ExitCode, res.Signal, res.TimedOut = -1, "SIGKILL", true
		default:
			res.ExitCode = stop.code
		}
	} else if err != nil {
		return nil, err
	}
	if p.out.err != nil {
		return res, fmt.Errorf("write the command's output: %w", p.out.err)
	}
	return res, nil
}

func orDot(dir string) string {
	if dir == "" {
		return "."
	}
	return dir
}

// script runs a command line: its commands in turn; the exit code is the
// last one's.
func (p *proc) script(line string) (int, error) {
	cmds, err := splitLine(line)
	if err != nil {
		p.out.write(1, []byte("fake: "+err.Error()+"\n"))
		return 2, nil
	}
	code := 0
	for _, words := range cmds {
		if code, err = p.simple(words); err != nil {
			return code, err
		}
	}
	return code, nil
}

// splitLine cuts a command line into commands of words.
func splitLine(line string) ([][]word, error) {
	var cmds [][]word
	var cur []word
	var w strings.Builder
	inWord, quoted := false, false
	endWord := func() {
		if inWord {
			cur = append(cur, word{w.String(), quoted})
		}
		w.Reset()
		inWord, quoted = false, false
	}
	for i := 0; i < len(line); i++ {
		switch c := line[i]; c {
		case ' ', '\t', '\r':
			endWord()
		case ';', '\n':
			endWord()
			if len(cur) > 0 {
				cmds = append(cmds, cur)
			}
			cur = nil
		case '\'', '"':
			j := strings.IndexByte(line[i+1:], c)
			if j < 0 {
				return nil, fmt.Errorf("unterminated %c quote", c)
			}
			w.WriteString(line[i+1 : i+1+j])
			inWord, quoted = true, true
			i += j + 1
		case '|', '&', '<', '$', '`', '(', ')', '*', '?':
			if c == '&' && strings.HasSuffix(w.String(), ">") { // >&2
				w.WriteByte(c)
				continue
			}
			return nil, fmt.Errorf("the fake shell has no %q: only built-ins, ';', quotes and > redirections", c)
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	endWord()
	if len(cur) > 0 {
		cmds = append(cmds, cur)
	}
	return cmds, nil
}

// simple runs one command with its redirections.
func (p *proc) simple(words []word) (int, error) {
	var args []string
	var redirect string // a file for stdout
	toStderr, appendTo := false, false
	for i := 0; i < len(words); i++ {
		w := words[i]
		switch {
		case w.quoted:
			args = append(args, w.text)
		case w.text == ">&2" || w.text == "1>&2":
			toStderr = true
		case strings.HasPrefix(w.text, ">"):
			appendTo = strings.HasPrefix(w.text, ">>")
			target := strings.TrimLeft(w.text, ">")
			if target == "" {
				if i+1 == len(words) {
					p.out.write(1, []byte("fake: a redirection without a file\n"))
					return 2, nil
				}
				i++
				target = words[i].text
			}
			redirect = target
		default:
			args = append(args, w.text)
		}
	}
	if len(args) == 0 {
		return 0, nil
	}
	stdout, stderr := io.Writer(streamWriter{p.out, 0}), io.Writer(streamWriter{p.out, 1})
	if toStderr {
		stdout = stderr
	}
	var file *strings.Builder
	if redirect != "" && redirect != "/dev/null" {
		file = &strings.Builder{}
		stdout = file
	} else if redirect == "/dev/null" {
		stdout = io.Discard
	}
	code, err := p.builtin(args, stdout, stderr)
	if file != nil {
		if werr := p.writeFile(redirect, file.String(), appendTo); werr != nil {
			fmt.Fprintf(stderr, "fake: %s: %v\n", redirect, werr)
			return 1, err
		}
	}
	return code, err
}

// writeFile writes (or appends to) a file a command redirected to.
func (p *proc) writeFile(name, data string, appendTo bool) error {
	k, err := rel(path.Join(abs(p.dir), name))
	if path.IsAbs(name) {
		k, err = rel(name)
	}
	if err != nil {
		return err
	}
	p.m.b.mu.Lock()
	defer p.m.b.mu.Unlock()
	mode := fs.FileMode(0o644)
	if f := p.m.files[k]; f != nil && !f.dir {
		mode = f.mode
		if appendTo {
			data = string(f.data) + data
		}
	}
	if parent := p.m.files[path.Dir(k)]; parent == nil || !parent.dir {
		return errors.New("no such directory")
	}
	return p.m.putLocked(k, []byte(data), mode)
}

// argv runs an argv: a built-in, or sh -c / bash -c with a command line.
func (p *proc) argv(argv []string) (int, error) {
	switch path.Base(argv[0]) {
	case "sh", "bash":
		if len(argv) >= 3 && argv[1] == "-c" {
			return p.script(argv[2])
		}
	}
	return p.builtin(argv, streamWriter{p.out, 0}, streamWriter{p.out, 1})
}

// key is a key of the files map for a path given to a built-in.
func (p *proc) key(name string) (string, error) {
	if path.IsAbs(name) {
		return rel(name)
	}
	return rel(path.Join(abs(p.dir), name))
}

// builtin runs one built-in.
func (p *proc) builtin(args []string, stdout, stderr io.Writer) (int, error) {
	name := path.Base(args[0])
	fail := func(code int, format string, a ...any) (int, error) {
		fmt.Fprintf(stderr, name+": "+format+"\n", a...)
		return code, nil
	}
	switch name {
	case "true", ":":
		return 0, nil
	case "false":
		return 1, nil
	case "exit":
		code := 0
		if len(args) > 1 {
			n, err := strconv.Atoi(args[1])
			if err != nil {
				return fail(2, "%s: numeric argument required", args[1])
			}
			code = n & 0xff
		}
		return code, &errExit{code: code}
	case "echo":
		words, nl := args[1:], "\n"
		if len(words) > 0 && words[0] == "-n" {
			words, nl = words[1:], ""
		}
		io.WriteString(stdout, strings.Join(words, " ")+nl)
		return 0, nil
	case "pwd":
		io.WriteString(stdout, abs(p.dir)+"\n")
		return 0, nil
	case "printenv":
		if len(args) == 1 {
			for _, k := range slices.Sorted(maps.Keys(p.env)) {
				io.WriteString(stdout, k+"="+p.env[k]+"\n")
			}
			return 0, nil
		}
		code := 0
		for _, k := range args[1:] {
			if v, ok := p.env[k]; ok {
				io.WriteString(stdout, v+"\n")
			} else {
				code = 1
			}
		}
		return code, nil
	case "cat":
		if len(args) == 1 {
			if _, err := io.Copy(stdout, p.stdin); err != nil {
				return fail(1, "reading stdin: %v", err)
			}
			p.stdin = strings.NewReader("") // read once
			return 0, nil
		}
		code := 0
		for _, a := range args[1:] {
			k, err := p.key(a)
			if err != nil {
				code = 1
				fail(1, "%s: %v", a, err)
				continue
			}
			p.m.b.mu.Lock()
			f := p.m.files[k]
			p.m.b.mu.Unlock()
			switch {
			case f == nil:
				code = 1
				fail(1, "%s: No such file or directory", a)
			case f.dir:
				code = 1
				fail(1, "%s: Is a directory", a)
			default:
				stdout.Write(f.data)
			}
		}
		return code, nil
	case "mkdir", "rm":
		return p.fileOp(name, args[1:], fail)
	case "sleep":
		if len(args) != 2 {
			return fail(1, "give one duration in seconds")
		}
		secs, err := strconv.ParseFloat(args[1], 64)
		if err != nil || secs < 0 {
			return fail(1, "invalid time interval '%s'", args[1])
		}
		if why := sleep(p.ctx, time.Duration(secs*float64(time.Second)), p.deadline); why != "" {
			return -1, &errExit{why: why}
		}
		return 0, nil
	}
	fmt.Fprintf(stderr, "fake: %s: command not found (the fake shell has echo, cat, printenv, pwd, mkdir, rm, sleep, true, false and exit)\n", name)
	return 127, nil
}

// fileOp runs mkdir [-p] and rm [-f] [-r].
func (p *proc) fileOp(name string, args []string, fail func(int, string, ...any) (int, error)) (int, error) {
	flags := ""
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		flags += args[0][1:]
		args = args[1:]
	}
	p.m.b.mu.Lock()
	defer p.m.b.mu.Unlock()
	code := 0
	for _, a := range args {
		k, err := p.key(a)
		if err != nil {
			code = 1
			fail(1, "%s: %v", a, err)
			continue
		}
		f := p.m.files[k]
		switch {
		case name == "mkdir" && strings.Contains(flags, "p"):
			if err := p.m.mkdirAllLocked(k); err != nil {
				code = 1
				fail(1, "%v", err)
			}
		case name == "mkdir" && f != nil:
			code = 1
			fail(1, "cannot create directory '%s': File exists", a)
		case name == "mkdir":
			if parent := p.m.files[path.Dir(k)]; parent == nil || !parent.dir {
				code = 1
				fail(1, "cannot create directory '%s': No such file or directory", a)
				continue
			}
			p.m.files[k] = &file{dir: true, mode: 0o755, mod: p.m.b.now()}
		case f == nil:
			if !strings.Contains(flags, "f") {
				code = 1
				fail(1, "cannot remove '%s': No such file or directory", a)
			}
		case k == ".":
			code = 1
			fail(1, "refusing to remove the home")
		case f.dir && !strings.ContainsAny(flags, "rR"):
			code = 1
			fail(1, "cannot remove '%s': Is a directory", a)
		default:
			for key := range p.m.files {
				if key == k || strings.HasPrefix(key, k+"/") {
					delete(p.m.files, key)
				}
			}
		}
	}
	return code, nil
}
