package guest

import _ "embed"

//go:embed driver.py
var driverSource string

// DriverSource is the Python REPL driver the engine runs in each machine
// (driver.py, run as python3 -I -c SOURCE), for hosts that run the same
// REPL in machines of other kinds.
func DriverSource() string { return driverSource }
