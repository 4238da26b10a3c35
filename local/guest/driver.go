package guest

import (
	_ "embed"
	"strings"
)

//go:embed driver.py
var driverSource string

// DriverSource is the Python REPL driver the engine runs in each machine
// (driver.py, run as python3 -I -c SOURCE), for hosts that run the same
// REPL in machines of other kinds.
func DriverSource() string { return driverSource }

// ExceptionLine is the last line of a Python traceback the driver reports:
// the exception and its message ("no result" for none).
func ExceptionLine(traceback string) string {
	traceback = strings.TrimSpace(traceback)
	if i := strings.LastIndexByte(traceback, '\n'); i >= 0 {
		traceback = traceback[i+1:]
	}
	if traceback == "" {
		return "no result"
	}
	return traceback
}
