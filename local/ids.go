package local

import "regexp"

// The shapes of the ids that the engine makes (newID: a prefix and 10
// random bytes in hex). Ids that come from outside the engine (a command
// line) are checked against them before they name anything on disk, so
// that no id can lead out of the state directory.
var (
	machineIDShape  = regexp.MustCompile(`^m-[0-9a-f]{20}$`)
	snapshotIDShape = regexp.MustCompile(`^s-[0-9a-f]{20}$`)
)

// ValidMachineID reports whether id has the shape of a machine id.
func ValidMachineID(id string) bool { return machineIDShape.MatchString(id) }

// ValidSnapshotID reports whether id has the shape of a snapshot id.
func ValidSnapshotID(id string) bool { return snapshotIDShape.MatchString(id) }
