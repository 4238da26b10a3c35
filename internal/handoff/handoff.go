// Package handoff is a net.Listener of connections that something else
// accepted and handed over: an http.Server can then serve the connections
// the local engine takes from a machine's loopback (local.Machine.ServeLoopback).
package handoff

import (
	"net"
	"sync"
)

// Listener hands its Accept the connections given to Serve.
type Listener struct {
	name  string
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// New returns a Listener whose Addr is name.
func New(name string) *Listener {
	return &Listener{name: name, conns: make(chan net.Conn), done: make(chan struct{})}
}

// Serve hands c to Accept; once the Listener is closed, it closes c.
func (l *Listener) Serve(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next connection handed over.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close ends Accept; connections handed over later are closed.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr names the listener.
func (l *Listener) Addr() net.Addr { return &net.UnixAddr{Name: l.name, Net: "unix"} }
