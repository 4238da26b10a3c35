// Package faultproxy is a TCP proxy on loopback that misbehaves on demand,
// for tests of clients of remote services: it passes traffic through, or
// stalls it, trickles the answers a byte at a time, resets connections, or
// answers every new request with an HTTP 500 or 429. A mode applies to the
// connections already open as well as to new ones, so that a stream (a
// WebSocket) opened while all was well stalls mid-way.
package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is how the proxy treats traffic.
type Mode int32

// The modes.
const (
	Pass      Mode = iota // forward everything
	Stall                 // forward nothing, hold every connection open
	Trickle               // forward answers one byte every TrickleDelay
	Reset                 // reset every connection
	Status500             // answer new requests 500, drop open connections
	Status429             // answer new requests 429 (Retry-After: 1), drop open connections
)

// TrickleDelay is the pause between two bytes in Trickle mode.
const TrickleDelay = 200 * time.Millisecond

// Proxy forwards connections to one target address.
type Proxy struct {
	ln     net.Listener
	target string
	mode   atomic.Int32
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed chan struct{}
}

// Start listens on a free loopback port and forwards to target
// ("host:port").
func Start(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]bool{}, closed: make(chan struct{})}
	go p.serve()
	return p, nil
}

// Addr is the proxy's address ("127.0.0.1:port").
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL is the proxy's address as an http URL.
func (p *Proxy) URL() string { return "http://" + p.Addr() }

// Set changes the mode, for open connections and new ones.
func (p *Proxy) Set(m Mode) {
	p.mode.Store(int32(m))
	if m == Reset || m == Status500 || m == Status429 {
		p.mu.Lock()
		for c := range p.conns {
			reset(c)
		}
		p.mu.Unlock()
	}
}

// Mode is the current mode.
func (p *Proxy) Mode() Mode { return Mode(p.mode.Load()) }

// Close stops the proxy and drops every connection.
func (p *Proxy) Close() {
	close(p.closed)
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

func (p *Proxy) track(c net.Conn, on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on {
		p.conns[c] = true
	} else {
		delete(p.conns, c)
	}
}

func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *Proxy) handle(client net.Conn) {
	p.track(client, true)
	defer p.track(client, false)
	switch m := p.Mode(); m {
	case Reset:
		reset(client)
		return
	case Status500, Status429:
		answer(client, m)
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		reset(client)
		return
	}
	p.track(server, true)
	defer p.track(server, false)
	done := make(chan struct{}, 2)
	go func() { p.pipe(server, client, false); done <- struct{}{} }()
	go func() { p.pipe(client, server, true); done <- struct{}{} }()
	<-done
	client.Close()
	server.Close()
	<-done
}

// pipe copies src to dst, as the mode says; answers is the direction from
// the service to the client.
func (p *Proxy) pipe(dst, src net.Conn, answers bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.deliver(dst, buf[:n], answers) {
			return
		}
		if err != nil {
			if tc, ok := dst.(*net.TCPConn); ok && errors.Is(err, io.EOF) {
				tc.CloseWrite()
				continue
			}
			return
		}
	}
}

// deliver writes b to dst under the current mode; false once the
// connection is to end.
func (p *Proxy) deliver(dst net.Conn, b []byte, answers bool) bool {
	for len(b) > 0 {
		select {
		case <-p.closed:
			return false
		default:
		}
		switch p.Mode() {
		case Pass:
			_, err := dst.Write(b)
			return err == nil
		case Stall:
			time.Sleep(50 * time.Millisecond)
		case Trickle:
			if !answers {
				_, err := dst.Write(b)
				return err == nil
			}
			if _, err := dst.Write(b[:1]); err != nil {
				return false
			}
			b = b[1:]
			time.Sleep(TrickleDelay)
		default:
			return false
		}
	}
	return true
}

// answer reads one HTTP request's head from c and answers it with the
// mode's status.
func answer(c net.Conn, m Mode) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
		return
	}
	status, extra := "500 Internal Server Error", ""
	if m == Status429 {
		status, extra = "429 Too Many Requests", "Retry-After: 1\r\n"
	}
	io.WriteString(c, "HTTP/1.1 "+status+"\r\n"+extra+"Content-Type: application/json\r\nContent-Length: 31\r\nConnection: close\r\n\r\n{\"error\":\"injected by a test\"}\n")
}
