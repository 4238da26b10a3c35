package backendfake

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vmcp-dev/vmcp/backend"
)

// The fake Python: code is parsed whole first (a syntax error runs
// nothing, as in CPython), then run statement by statement; what ran before
// an exception, a timeout or a cancellation stays done.

// value is a Python value: int64, float64, string, bool or nil (None).
type value any

// pyError is a Python exception.
type pyError struct {
	kind, msg string
	line      int
}

func (e *pyError) traceback() string {
	return fmt.Sprintf("Traceback (most recent call last):\n  File \"<fake>\", line %d, in <module>\n%s: %s", e.line, e.kind, e.msg)
}

// RunPython runs code in the machine's fake interpreter (see the package
// comment for what it understands). An exception is a result with Error
// set; a timeout is a result with TimedOut; a cancelled ctx is an error.
func (m *Machine) RunPython(ctx context.Context, code string, opts backend.PythonOptions) (*backend.PythonResult, error) {
	select {
	case m.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-m.turn }()
	if err := m.use(); err != nil {
		return nil, err
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.Now().Add(timeout)
	started := m.b.now()

	res := &backend.PythonResult{}
	m.b.mu.Lock()
	if m.pythonUsed {
		res.StateReset = m.resetReason
	}
	m.pythonUsed, m.resetReason = true, ""
	m.b.mu.Unlock()

	out := newOutput(opts.OnOutput, opts.Stdout, opts.Stderr, 0)
	val, perr, stopped := m.exec(ctx, code, deadline, out)
	out.flush()
	res.Stdout, res.Stderr = out.kept[0].String(), out.kept[1].String()
	res.Runtime = m.b.now().Sub(started)
	switch {
	case stopped == "cancelled":
		return nil, ctx.Err()
	case stopped == "timed out":
		res.Error, res.TimedOut = "Timed out", true
	case perr != nil:
		res.Error = perr.traceback()
	case val != nil:
		r := repr(val)
		res.Value = &r
	}
	if err := out.err; err != nil {
		return res, fmt.Errorf("write the Python code's output: %w", err)
	}
	return res, nil
}

// exec parses and runs code: the value of a final expression, the
// exception, or why it stopped early ("timed out", "cancelled").
func (m *Machine) exec(ctx context.Context, code string, deadline time.Time, out *output) (value, *pyError, string) {
	stmts, perr := parseProgram(code)
	if perr != nil {
		return nil, perr, ""
	}
	var last value
	for i, st := range stmts {
		if err := ctx.Err(); err != nil {
			return nil, nil, "cancelled"
		}
		if time.Now().After(deadline) {
			return nil, nil, "timed out"
		}
		last = nil
		switch st.kind {
		case stImport:
		case stAssign:
			v, perr := m.eval(st.expr, st.line)
			if perr != nil {
				return nil, perr, ""
			}
			m.b.mu.Lock()
			m.vars[st.name] = v
			m.b.mu.Unlock()
		case stPrint:
			var parts []string
			for _, a := range st.args {
				v, perr := m.eval(a, st.line)
				if perr != nil {
					return nil, perr, ""
				}
				parts = append(parts, str(v))
			}
			stream := 0
			if st.stderr {
				stream = 1
			}
			out.write(stream, []byte(strings.Join(parts, " ")+"\n"))
		case stSleep:
			v, perr := m.eval(st.expr, st.line)
			if perr != nil {
				return nil, perr, ""
			}
			secs, ok := number(v)
			if !ok {
				return nil, &pyError{"TypeError", fmt.Sprintf("'%s' object cannot be interpreted as a number", typeName(v)), st.line}, ""
			}
			if secs < 0 {
				return nil, &pyError{"ValueError", "sleep length must be non-negative", st.line}, ""
			}
			if why := sleep(ctx, time.Duration(secs*float64(time.Second)), deadline); why != "" {
				return nil, nil, why
			}
		case stExpr:
			v, perr := m.eval(st.expr, st.line)
			if perr != nil {
				return nil, perr, ""
			}
			if i == len(stmts)-1 {
				last = v
			}
		}
	}
	return last, nil, ""
}

// Statement kinds.
const (
	stExpr = iota
	stAssign
	stPrint
	stSleep
	stImport
)

type stmt struct {
	kind   int
	line   int
	name   string // of an assignment
	expr   expr   // assigned, slept or evaluated
	args   []expr // printed
	stderr bool   // print(..., file=sys.stderr)
}

// parseProgram splits code into statements: lines, and ';' outside
// string literals.
func parseProgram(code string) ([]stmt, *pyError) {
	var out []stmt
	for i, line := range strings.Split(code, "\n") {
		n := i + 1
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			return nil, &pyError{"IndentationError", "unexpected indent (the fake Python has no blocks)", n}
		}
		toks, perr := lex(line, n)
		if perr != nil {
			return nil, perr
		}
		start := 0
		for j := 0; j <= len(toks); j++ {
			if j < len(toks) && toks[j].text != ";" {
				continue
			}
			if j > start {
				st, perr := parseStmt(toks[start:j], n)
				if perr != nil {
					return nil, perr
				}
				out = append(out, st)
			}
			start = j + 1
		}
	}
	return out, nil
}

func syntaxError(line int, format string, args ...any) *pyError {
	return &pyError{"SyntaxError", fmt.Sprintf(format, args...) + " (the fake Python understands assignments, print, time.sleep and arithmetic)", line}
}

func parseStmt(toks []token, line int) (stmt, *pyError) {
	first := toks[0]
	switch {
	case first.kind == tName && (first.text == "import" || first.text == "from"):
		return stmt{kind: stImport, line: line}, nil
	case first.kind == tName && len(toks) > 1 && toks[1].text == "=":
		if strings.Contains(first.text, ".") || isKeyword(first.text) {
			return stmt{}, syntaxError(line, "cannot assign to %s", first.text)
		}
		e, perr := parseWhole(toks[2:], line)
		return stmt{kind: stAssign, line: line, name: first.text, expr: e}, perr
	case first.kind == tName && first.text == "print" && len(toks) > 1 && toks[1].text == "(":
		return parsePrint(toks, line)
	case first.kind == tName && first.text == "time.sleep" && len(toks) > 1 && toks[1].text == "(":
		if toks[len(toks)-1].text != ")" {
			return stmt{}, syntaxError(line, "'(' was never closed")
		}
		e, perr := parseWhole(toks[2:len(toks)-1], line)
		return stmt{kind: stSleep, line: line, expr: e}, perr
	}
	e, perr := parseWhole(toks, line)
	return stmt{kind: stExpr, line: line, expr: e}, perr
}

// parsePrint parses print(a, b, file=sys.stderr).
func parsePrint(toks []token, line int) (stmt, *pyError) {
	if toks[len(toks)-1].text != ")" {
		return stmt{}, syntaxError(line, "'(' was never closed")
	}
	st := stmt{kind: stPrint, line: line}
	inner := toks[2 : len(toks)-1]
	for len(inner) > 0 {
		// One argument runs to the next ',' outside parentheses.
		depth, end := 0, len(inner)
		for k, t := range inner {
			if t.text == "(" {
				depth++
			} else if t.text == ")" {
				depth--
			} else if t.text == "," && depth == 0 {
				end = k
				break
			}
		}
		arg := inner[:end]
		if len(arg) >= 2 && arg[0].kind == tName && arg[1].text == "=" {
			if arg[0].text != "file" || len(arg) != 3 || (arg[2].text != "sys.stderr" && arg[2].text != "sys.stdout") {
				return stmt{}, syntaxError(line, "print takes only file=sys.stdout or file=sys.stderr")
			}
			st.stderr = arg[2].text == "sys.stderr"
		} else {
			e, perr := parseWhole(arg, line)
			if perr != nil {
				return stmt{}, perr
			}
			st.args = append(st.args, e)
		}
		if end == len(inner) {
			break
		}
		inner = inner[end+1:]
	}
	return st, nil
}

// Tokens.
const (
	tNum = iota
	tStr
	tName
	tOp
)

type token struct {
	kind int
	text string // for tStr, the decoded string
}

// lex cuts a line into tokens.
func lex(s string, line int) ([]token, *pyError) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#':
			return out, nil
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			j := i
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.' || s[j] == '_' || s[j] == 'e' || s[j] == 'E' ||
				(s[j] == '+' || s[j] == '-') && (s[j-1] == 'e' || s[j-1] == 'E')) {
				j++
			}
			out = append(out, token{tNum, s[i:j]})
			i = j
		case c == '\'' || c == '"':
			text, n, ok := unquote(s[i:])
			if !ok {
				return nil, syntaxError(line, "unterminated string literal")
			}
			out = append(out, token{tStr, text})
			i += n
		case c == '_' || c < utf8.RuneSelf && unicode.IsLetter(rune(c)):
			j := i
			for j < len(s) && (s[j] == '_' || s[j] == '.' || s[j] < utf8.RuneSelf && (unicode.IsLetter(rune(s[j])) || unicode.IsDigit(rune(s[j])))) {
				j++
			}
			out = append(out, token{tName, s[i:j]})
			i = j
		case strings.HasPrefix(s[i:], "//") || strings.HasPrefix(s[i:], "=="):
			out = append(out, token{tOp, s[i : i+2]})
			i += 2
		case strings.ContainsRune("+-*/%(),;=", rune(c)):
			out = append(out, token{tOp, string(c)})
			i++
		default:
			return nil, syntaxError(line, "invalid syntax at %q", s[i:])
		}
	}
	return out, nil
}

// unquote decodes the string literal at the start of s and says how many
// bytes it took.
func unquote(s string) (string, int, bool) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == q:
			return b.String(), i + 1, true
		case c == '\\' && i+1 < len(s):
			i++
			switch s[i] {
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case '0':
				b.WriteByte(0)
			default:
				b.WriteByte(s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, false
}

// expr is a parsed expression.
type expr interface{}

type (
	literal struct{ v value }
	name    struct{ name string }
	unary   struct {
		op string
		x  expr
	}
	binary struct {
		op   string
		x, y expr
	}
)

// parseWhole parses tokens that must make one expression.
func parseWhole(toks []token, line int) (expr, *pyError) {
	if len(toks) == 0 {
		return nil, syntaxError(line, "invalid syntax: an expression is missing")
	}
	p := &parser{toks: toks, line: line}
	e, perr := p.expr(0)
	if perr == nil && p.i < len(toks) {
		perr = syntaxError(line, "invalid syntax at %q", toks[p.i].text)
	}
	return e, perr
}

type parser struct {
	toks []token
	i    int
	line int
}

func precedence(op string) int {
	switch op {
	case "+", "-":
		return 1
	case "*", "/", "//", "%":
		return 2
	}
	return 0
}

// expr parses binary operators binding tighter than min.
func (p *parser) expr(min int) (expr, *pyError) {
	x, perr := p.unary()
	if perr != nil {
		return nil, perr
	}
	for p.i < len(p.toks) {
		t := p.toks[p.i]
		prec := precedence(t.text)
		if t.kind != tOp || prec <= min {
			break
		}
		p.i++
		y, perr := p.expr(prec)
		if perr != nil {
			return nil, perr
		}
		x = binary{t.text, x, y}
	}
	return x, nil
}

func (p *parser) unary() (expr, *pyError) {
	if p.i >= len(p.toks) {
		return nil, syntaxError(p.line, "invalid syntax: the expression ends early")
	}
	t := p.toks[p.i]
	p.i++
	switch {
	case t.kind == tOp && (t.text == "-" || t.text == "+"):
		x, perr := p.unary()
		return unary{t.text, x}, perr
	case t.kind == tOp && t.text == "(":
		x, perr := p.expr(0)
		if perr != nil {
			return nil, perr
		}
		if p.i >= len(p.toks) || p.toks[p.i].text != ")" {
			return nil, syntaxError(p.line, "'(' was never closed")
		}
		p.i++
		return x, nil
	case t.kind == tNum:
		digits := strings.ReplaceAll(t.text, "_", "")
		if n, err := strconv.ParseInt(digits, 10, 64); err == nil {
			return literal{n}, nil
		}
		if f, err := strconv.ParseFloat(digits, 64); err == nil && strings.ContainsAny(digits, ".eE") {
			return literal{f}, nil
		}
		return nil, syntaxError(p.line, "a number the fake Python cannot hold: %s", t.text)
	case t.kind == tStr:
		s := t.text
		for p.i < len(p.toks) && p.toks[p.i].kind == tStr { // 'a' 'b' is 'ab'
			s += p.toks[p.i].text
			p.i++
		}
		return literal{s}, nil
	case t.kind == tName:
		switch t.text {
		case "None":
			return literal{nil}, nil
		case "True":
			return literal{true}, nil
		case "False":
			return literal{false}, nil
		}
		if p.i < len(p.toks) && p.toks[p.i].text == "(" {
			return nil, syntaxError(p.line, "the fake Python calls no functions but print and time.sleep (%s)", t.text)
		}
		if isKeyword(t.text) {
			return nil, syntaxError(p.line, "invalid syntax at %q", t.text)
		}
		return name{t.text}, nil
	}
	return nil, syntaxError(p.line, "invalid syntax at %q", t.text)
}

func isKeyword(s string) bool {
	switch s {
	case "def", "class", "if", "else", "elif", "for", "while", "return", "lambda", "with", "try", "except",
		"raise", "import", "from", "as", "in", "is", "not", "and", "or", "del", "pass", "yield", "global":
		return true
	}
	return false
}

// eval evaluates an expression against the machine's variables.
func (m *Machine) eval(e expr, line int) (value, *pyError) {
	switch e := e.(type) {
	case literal:
		return e.v, nil
	case name:
		m.b.mu.Lock()
		v, ok := m.vars[e.name]
		m.b.mu.Unlock()
		if !ok {
			return nil, &pyError{"NameError", fmt.Sprintf("name '%s' is not defined", e.name), line}
		}
		return v, nil
	case unary:
		x, perr := m.eval(e.x, line)
		if perr != nil {
			return nil, perr
		}
		return negate(e.op, x, line)
	case binary:
		x, perr := m.eval(e.x, line)
		if perr != nil {
			return nil, perr
		}
		y, perr := m.eval(e.y, line)
		if perr != nil {
			return nil, perr
		}
		return arith(e.op, x, y, line)
	}
	return nil, &pyError{"SystemError", fmt.Sprintf("unknown expression %T", e), line}
}

func negate(op string, x value, line int) (value, *pyError) {
	if b, ok := x.(bool); ok {
		x = boolInt(b)
	}
	switch x := x.(type) {
	case int64:
		if op == "-" {
			if x == math.MinInt64 {
				return nil, overflow(line)
			}
			return -x, nil
		}
		return x, nil
	case float64:
		if op == "-" {
			return -x, nil
		}
		return x, nil
	}
	return nil, &pyError{"TypeError", fmt.Sprintf("bad operand type for unary %s: '%s'", op, typeName(x)), line}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func overflow(line int) *pyError {
	return &pyError{"OverflowError", "the fake Python's integers have 64 bits", line}
}

// arith applies a binary operator as Python does, for the fake's types.
func arith(op string, x, y value, line int) (value, *pyError) {
	if b, ok := x.(bool); ok {
		x = boolInt(b)
	}
	if b, ok := y.(bool); ok {
		y = boolInt(b)
	}
	unsupported := &pyError{"TypeError", fmt.Sprintf("unsupported operand type(s) for %s: '%s' and '%s'", op, typeName(x), typeName(y)), line}
	switch x := x.(type) {
	case string:
		switch y := y.(type) {
		case string:
			if op == "+" {
				return x + y, nil
			}
		case int64:
			if op == "*" {
				if len(x) > 0 && y > int64(64<<20/len(x)) {
					return nil, &pyError{"MemoryError", "the fake Python makes strings of at most 64 MiB", line}
				}
				return strings.Repeat(x, int(max(y, 0))), nil
			}
		}
		return nil, unsupported
	case int64:
		if y, ok := y.(int64); ok {
			return intArith(op, x, y, line)
		}
	}
	fx, okx := number(x)
	fy, oky := number(y)
	if !okx || !oky {
		return nil, unsupported
	}
	switch op {
	case "+":
		return fx + fy, nil
	case "-":
		return fx - fy, nil
	case "*":
		return fx * fy, nil
	case "/":
		if fy == 0 {
			return nil, &pyError{"ZeroDivisionError", "float division by zero", line}
		}
		return fx / fy, nil
	case "//", "%":
		if fy == 0 {
			return nil, &pyError{"ZeroDivisionError", "float floor division by zero", line}
		}
		q := math.Floor(fx / fy)
		if op == "//" {
			return q, nil
		}
		return fx - fy*q, nil
	}
	return nil, unsupported
}

func intArith(op string, x, y int64, line int) (value, *pyError) {
	switch op {
	case "+":
		r := x + y
		if (r > x) != (y > 0) {
			return nil, overflow(line)
		}
		return r, nil
	case "-":
		r := x - y
		if (r < x) != (y > 0) {
			return nil, overflow(line)
		}
		return r, nil
	case "*":
		if x == 0 || y == 0 {
			return int64(0), nil
		}
		r := x * y
		if r/y != x || (x == -1 && y == math.MinInt64) || (y == -1 && x == math.MinInt64) {
			return nil, overflow(line)
		}
		return r, nil
	case "/":
		if y == 0 {
			return nil, &pyError{"ZeroDivisionError", "division by zero", line}
		}
		return float64(x) / float64(y), nil
	case "//", "%":
		if y == 0 {
			return nil, &pyError{"ZeroDivisionError", "integer division or modulo by zero", line}
		}
		if x == math.MinInt64 && y == -1 {
			return nil, overflow(line)
		}
		q, r := x/y, x%y
		if r != 0 && (r < 0) != (y < 0) { // Python floors
			q, r = q-1, r+y
		}
		if op == "//" {
			return q, nil
		}
		return r, nil
	}
	return nil, &pyError{"SyntaxError", "unknown operator " + op, line}
}

// number is a numeric value as a float.
func number(v value) (float64, bool) {
	switch v := v.(type) {
	case int64:
		return float64(v), true
	case float64:
		return v, true
	case bool:
		return float64(boolInt(v)), true
	}
	return 0, false
}

func typeName(v value) string {
	switch v.(type) {
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case bool:
		return "bool"
	}
	return "NoneType"
}

// str is Python's str() of a value.
func str(v value) string {
	if s, ok := v.(string); ok {
		return s
	}
	if v == nil {
		return "None"
	}
	return repr(v)
}

// repr is Python's repr() of a value.
func repr(v value) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		if v {
			return "True"
		}
		return "False"
	case int64:
		return strconv.FormatInt(v, 10)
	case float64:
		return floatRepr(v)
	case string:
		return strRepr(v)
	}
	return fmt.Sprint(v)
}

// floatRepr is Python's shortest repr of a float: positional from 1e-4 to
// 1e16, scientific outside.
func floatRepr(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	sci := strconv.FormatFloat(f, 'e', -1, 64)
	exp, _ := strconv.Atoi(sci[strings.IndexByte(sci, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return sci
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsRune(s, '.') {
		s += ".0"
	}
	return s
}

// strRepr quotes a string as Python's repr does.
func strRepr(s string) string {
	q := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		q = '"'
	}
	var b strings.Builder
	b.WriteByte(q)
	for _, r := range s {
		switch {
		case r == rune(q) || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte(q)
	return b.String()
}
