package local

// The engine talks to the agent inside each sandbox over the sandbox's stdin
// and stdout: one JSON object per line in each direction. Requests carry an id
// chosen by the engine; every event names the request it belongs to.

// Request operations.
const (
	opPython     = "py"          // run Python code in the machine's interpreter
	opRun        = "run"         // start a command
	opStdin      = "stdin"       // a chunk of a command's standard input
	opStdinClose = "stdin_close" // end of a command's standard input
	opKill       = "kill"        // kill a command's process tree, or interrupt Python
	opResize     = "resize"      // new window size of a TTY command's terminal
)

// Event kinds.
const (
	evOutput   = "out"       // a chunk of stdout or stderr
	evPython   = "py_result" // the result of an opPython request
	evExit     = "exit"      // a command ended
	evStdinAck = "stdin_ack" // a stdin chunk was written to the command
	evError    = "error"     // the request failed before it could run
)

type request struct {
	Op        string            `json:"op"`
	ID        uint64            `json:"id"`
	Code      string            `json:"code,omitempty"`
	Argv      []string          `json:"argv,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	Dir       string            `json:"dir,omitempty"`
	Stdin     bool              `json:"stdin,omitempty"`
	Data      []byte            `json:"data,omitempty"`
	TimeoutMS int64             `json:"timeout_ms,omitempty"`
	// TTY runs the command on a pseudo-terminal of Rows × Cols (also the
	// new size in an opResize).
	TTY  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Reason says why an opKill was sent: "timeout" or "interrupt".
	Reason string `json:"reason,omitempty"`
}

type event struct {
	Ev     string `json:"ev"`
	ID     uint64 `json:"id"`
	Stream string `json:"stream,omitempty"`
	Data   []byte `json:"data,omitempty"`

	// Python results.
	Value       *string  `json:"value,omitempty"`
	Error       string   `json:"error,omitempty"`
	PNG         [][]byte `json:"png,omitempty"`
	RuntimeMS   int64    `json:"runtime_ms,omitempty"`
	Interpreter int      `json:"interpreter,omitempty"` // which interpreter (1, 2, …) of this agent ran the code
	TimedOut    bool     `json:"timed_out,omitempty"`
	Interrupted bool     `json:"interrupted,omitempty"`
	Died        bool     `json:"died,omitempty"` // the interpreter exited while running the code

	// Command exits.
	ExitCode int    `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	Killed   string `json:"killed,omitempty"` // why the agent killed the command: "timeout" or "kill"
}
