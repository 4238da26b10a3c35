package main

import (
	"log"
	"strings"

	"github.com/rs/zerolog"
)

// stdLogger routes a standard library logger (the stdio transport's error
// log) to zerolog at error level.
func stdLogger(l zerolog.Logger) *log.Logger {
	return log.New(writerFunc(func(p []byte) (int, error) {
		l.Error().Msg(strings.TrimRight(string(p), "\n"))
		return len(p), nil
	}), "", 0)
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
