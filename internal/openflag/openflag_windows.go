// Package openflag holds the open flags that differ between systems.
package openflag

// NonBlock is zero on Windows, whose opens do not wait on FIFOs.
const NonBlock = 0
