//go:build linux

package fastvm

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"strings"

	"github.com/vmcp-dev/vmcp/local"
)

// The Dockerfile subset the emulator applies to a build VM:
//   - RUN (shell form through SHELL, default sh -c; exec form as argv), with
//     the ENV and ARG values so far and the current WORKDIR;
//   - COPY and ADD from the build context (ADD also unpacks local tar
//     archives; ADD from a URL and COPY --from fail the build);
//   - WORKDIR (created), ENV, ARG (defaults), SHELL, with $VAR and ${VAR}
//     (also ${VAR:-x}, ${VAR:+x}) substituted in their arguments; $PATH and
//     $HOME start as a VM's (Docker's default PATH);
//   - ENV also outlives the build, as an image's ENV does: the image's
//     variables are kept with its snapshot and every VM launched from it
//     (and from their snapshots), in the environment of each exec and
//     console session beneath the VM's envVars (§9), and written to the
//     image's /etc/environment;
//   - FROM: its image is not pulled (the emulator cannot pull images): the
//     base is the host's OS as VMs see it, which the build's log, warnings
//     and emulatorBase say, and its error when it fails; a second FROM
//     (multi-stage) fails the build rather than build something else.
// CMD, ENTRYPOINT, EXPOSE, LABEL, HEALTHCHECK, VOLUME, STOPSIGNAL, USER,
// ONBUILD, MAINTAINER and flags like COPY --chown are accepted and recorded
// (in the build's record) but not applied: a FastVM snapshot boots systemd,
// not the image's CMD (§3.5).

type instruction struct {
	cmd  string // upper case
	args string
	line int
}

// parseDockerfile splits a Dockerfile into instructions: comments dropped,
// lines ending in a backslash joined.
func parseDockerfile(src string) ([]instruction, error) {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, raw := range strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue // comments (also inside continuations) and blank lines
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if body, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(body)
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(line)
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		if text == "" {
			continue
		}
		cmd, args, _ := strings.Cut(text, " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start})
	}
	if cur.Len() > 0 {
		text := strings.TrimSpace(cur.String())
		cmd, args, _ := strings.Cut(text, " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start})
	}
	return out, nil
}

// vmDefaultEnv are the variables of a VM's environment that a Dockerfile
// may build on (ENV PATH=/opt/venv/bin:$PATH): the engine's, which are
// Docker's defaults.
var vmDefaultEnv = map[string]string{
	"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME": "/root",
}

// buildState is what earlier instructions set for later ones.
type buildState struct {
	workdir string
	env     map[string]string // the image's ENV
	args    map[string]string
	shell   []string
	froms   int
	ignored []string
	log     *buildLog // nil: none kept
}

func (st *buildState) lookup(name string) (string, bool) {
	if v, ok := st.env[name]; ok {
		return v, true
	}
	if v, ok := st.args[name]; ok {
		return v, true
	}
	v, ok := vmDefaultEnv[name]
	return v, ok
}

// runEnv is the environment of RUN: ARG values, then ENV over them.
func (st *buildState) runEnv() map[string]string {
	env := map[string]string{}
	for k, v := range st.args {
		env[k] = v
	}
	for k, v := range st.env {
		env[k] = v
	}
	return env
}

// applyDockerfile applies the instructions to the build VM in order, and
// returns what they left: the image's ENV, and the instructions recorded
// without being applied. base says what FROM stands for here.
func applyDockerfile(ctx context.Context, m *local.Machine, df []instruction, base string, log *buildLog) (*buildState, error) {
	st := &buildState{workdir: "/", env: map[string]string{}, args: map[string]string{}, shell: []string{"/bin/sh", "-c"}, log: log}
	for i, in := range df {
		log.printf("Step %d/%d: %s %s\n", i+1, len(df), in.cmd, in.args)
		if in.cmd == "FROM" && st.froms == 0 {
			log.printf(" ---> %s\n", base)
		}
		if err := st.apply(ctx, m, in); err != nil {
			first, _, _ := strings.Cut(err.Error(), "\n") // a RUN's output is in the log already
			log.printf(" ---> failed: %s\n", first)
			return st, fmt.Errorf("line %d of the Dockerfile: %s: %w", in.line, in.cmd, err)
		}
	}
	return st, nil
}

func (st *buildState) record(in instruction, why string) {
	st.ignored = append(st.ignored, fmt.Sprintf("line %d: %s %s (%s)", in.line, in.cmd, in.args, why))
}

func (st *buildState) apply(ctx context.Context, m *local.Machine, in instruction) error {
	switch in.cmd {
	case "FROM":
		// Its image is not pulled: the build's FromWarning and log say so.
		if st.froms++; st.froms > 1 {
			return fmt.Errorf("multi-stage builds are not supported by the emulator: use a single FROM")
		}
	case "ARG":
		for _, a := range shellWords(in.args, st.expand) {
			name, def, _ := strings.Cut(a, "=")
			if _, set := st.args[name]; !set {
				st.args[name] = def
			}
		}
	case "ENV":
		return st.applyEnv(in.args)
	case "WORKDIR":
		st.workdir = resolve(st.workdir, st.expand(in.args))
		return runChecked(ctx, m, local.Command{Argv: []string{"mkdir", "-p", st.workdir}})
	case "SHELL":
		var sh []string
		if err := json.Unmarshal([]byte(in.args), &sh); err != nil || len(sh) == 0 {
			return fmt.Errorf(`SHELL takes a JSON array, e.g. ["/bin/bash", "-c"]`)
		}
		st.shell = sh
	case "RUN":
		return st.run(ctx, m, in)
	case "COPY", "ADD":
		return st.copy(ctx, m, in)
	case "CMD", "ENTRYPOINT", "EXPOSE", "LABEL", "HEALTHCHECK", "VOLUME", "STOPSIGNAL", "USER", "ONBUILD", "MAINTAINER":
		st.record(in, "accepted, not applied: the snapshot boots the VM, not the image's runtime settings")
	default:
		return fmt.Errorf("unknown instruction %q", in.cmd)
	}
	return nil
}

func (st *buildState) applyEnv(args string) error {
	words := shellWords(args, st.expand)
	if len(words) == 0 {
		return fmt.Errorf("ENV needs a name and a value")
	}
	if !strings.Contains(words[0], "=") {
		// Legacy form: ENV NAME the rest is the value.
		name, rest, _ := strings.Cut(strings.TrimSpace(args), " ")
		st.env[name] = strings.TrimSpace(st.expand(rest))
		return nil
	}
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return fmt.Errorf("ENV %q: use NAME=value", w)
		}
		st.env[k] = v
	}
	return nil
}

// leadingFlags splits --flag=value words off the front of args.
func leadingFlags(args string) ([]string, string) {
	var flags []string
	for strings.HasPrefix(args, "--") {
		f, rest, _ := strings.Cut(args, " ")
		flags = append(flags, f)
		args = strings.TrimSpace(rest)
	}
	return flags, args
}

func (st *buildState) run(ctx context.Context, m *local.Machine, in instruction) error {
	flags, args := leadingFlags(in.args)
	if len(flags) > 0 {
		st.record(in, "flags "+strings.Join(flags, " ")+" ignored")
	}
	var argv []string
	if strings.HasPrefix(args, "[") && json.Unmarshal([]byte(args), &argv) == nil && len(argv) > 0 {
		// exec form: argv as is
	} else {
		argv = append(append([]string{}, st.shell...), args)
	}
	return runLogged(ctx, m, local.Command{Argv: argv, Env: st.runEnv(), Workdir: st.workdir}, st.log)
}

// copyScript copies the sources (glob patterns relative to the build
// context, the working directory) to the destination with Docker's rules:
// a directory's contents are copied, several sources or a destination
// ending in / mean a directory. ADD unpacks local tar archives.
const copyScript = `set -e
mode=$1; dirdest=$2; dest=$3; shift 3
IFS='
'
n=0
for pat in "$@"; do
  found=0
  for f in $pat; do
    if [ -e "$f" ] || [ -L "$f" ]; then found=1; n=$((n+1)); fi
  done
  [ $found = 1 ] || { echo "no file in the build context matches ${pat#./}" >&2; exit 1; }
done
[ $n -gt 1 ] && dirdest=1
for pat in "$@"; do
  for f in $pat; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    if [ "$mode" = ADD ] && [ -f "$f" ]; then
      case "$f" in *.tar|*.tar.gz|*.tgz|*.tar.bz2|*.tbz2|*.tar.xz|*.txz)
        mkdir -p "$dest"; tar -xf "$f" --no-same-owner -C "$dest"; continue;;
      esac
    fi
    if [ -d "$f" ]; then
      mkdir -p "$dest"; cp -a "$f/." "$dest/"
    elif [ "$dirdest" = 1 ] || [ -d "$dest" ]; then
      mkdir -p "$dest"; cp -a "$f" "$dest/"
    else
      mkdir -p "$(dirname "$dest")"; cp -a "$f" "$dest"
    fi
  done
done`

func (st *buildState) copy(ctx context.Context, m *local.Machine, in instruction) error {
	flags, args := leadingFlags(in.args)
	for _, f := range flags {
		if strings.HasPrefix(f, "--from") {
			return fmt.Errorf("%s --from (multi-stage) is not supported by the emulator", in.cmd)
		}
	}
	if len(flags) > 0 {
		st.record(in, "flags "+strings.Join(flags, " ")+" ignored")
	}
	var words []string
	if !(strings.HasPrefix(args, "[") && json.Unmarshal([]byte(args), &words) == nil) {
		words = strings.Fields(args)
	}
	if len(words) < 2 {
		return fmt.Errorf("give at least one source and a destination")
	}
	for i := range words {
		words[i] = st.expand(words[i])
	}
	srcs, dest := words[:len(words)-1], words[len(words)-1]
	dirDest := "0"
	if strings.HasSuffix(dest, "/") || strings.HasSuffix(dest, "/.") || dest == "." {
		dirDest = "1"
	}
	argv := []string{"/bin/sh", "-c", copyScript, "sh", in.cmd, dirDest, resolve(st.workdir, dest)}
	for _, src := range srcs {
		if strings.Contains(src, "://") {
			return fmt.Errorf("ADD from a URL is not supported by the emulator: put the file in the build context")
		}
		clean := path.Clean(strings.TrimPrefix(src, "/"))
		if clean == ".." || strings.HasPrefix(clean, "../") {
			return fmt.Errorf("source %q is outside the build context", src)
		}
		argv = append(argv, "./"+clean)
	}
	return runChecked(ctx, m, local.Command{Argv: argv, Workdir: buildCtxDir})
}

// expand substitutes $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alt}; \$
// is a literal dollar sign. Unknown names expand to "".
func (st *buildState) expand(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		if s[i+1] == '{' {
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			expr := s[i+2 : i+end]
			i += end
			name, word, op := expr, "", ""
			if j := strings.Index(expr, ":"); j >= 0 && j+1 < len(expr) {
				name, op, word = expr[:j], expr[j+1:j+2], expr[j+2:]
			}
			v, ok := st.lookup(name)
			switch {
			case op == "-" && (!ok || v == ""):
				v = word
			case op == "+":
				if ok && v != "" {
					v = word
				} else {
					v = ""
				}
			}
			b.WriteString(v)
			continue
		}
		j := i + 1
		for j < len(s) && (s[j] == '_' || isAlnum(s[j])) {
			j++
		}
		if j == i+1 {
			b.WriteByte(c)
			continue
		}
		v, _ := st.lookup(s[i+1 : j])
		b.WriteString(v)
		i = j - 1
	}
	return b.String()
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// shellWords splits on unquoted whitespace, removing quotes and backslash
// escapes, and substitutes variables outside single quotes with expand (the
// word rules of ENV and ARG).
func shellWords(s string, expand func(string) string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '$' && quote != '\'':
			end := varRefEnd(s, i)
			cur.WriteString(expand(s[i:end]))
			i, inWord = end-1, true
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' && i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// varRefEnd is the end of the variable reference ($NAME or ${...}) at s[i].
func varRefEnd(s string, i int) int {
	if i+1 < len(s) && s[i+1] == '{' {
		if j := strings.IndexByte(s[i:], '}'); j >= 0 {
			return i + j + 1
		}
		return len(s)
	}
	j := i + 1
	for j < len(s) && (s[j] == '_' || isAlnum(s[j])) {
		j++
	}
	return j
}
