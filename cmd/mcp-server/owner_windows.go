package main

// stateOwner cannot tell on Windows whether a server holds a state
// directory without waiting on its lock: it reports none, and the
// commands learn it when they open the directory (local.ErrStateDirInUse).
func stateOwner(string) (owned bool, pid int) { return false, 0 }
