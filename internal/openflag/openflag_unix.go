//go:build unix

// Package openflag holds the open flags that differ between systems.
package openflag

import "syscall"

// NonBlock opens a file without waiting for a writer or a device: a FIFO or
// a device planted where a regular file is expected must not hang the
// call. Callers check what they opened before reading it.
const NonBlock = syscall.O_NONBLOCK
