//go:build linux && !vmcp_nolocal

package local

// Egress for machines whose network policy is an allow-list. Such a
// machine has no network of its own (a network namespace with loopback
// only). Its agent listens on loopback port wire.EgressPort and hands each
// connection to the engine over a socket pair it inherited (SCM_RIGHTS);
// the engine serves an HTTP proxy on it (CONNECT for HTTPS, absolute URLs
// for HTTP) that resolves names itself and lets through only the machine's
// allow-list.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/local/wire"
	"golang.org/x/sys/unix"
)

// egress is one machine's proxy.
type egress struct {
	machine string
	allow   []string
	opts    EgressOptions
	log     *os.File // the machine's network log, for the operator
	logMu   sync.Mutex
}

// proxied reports whether the machine reaches its allow-list through the
// engine's proxy.
func (i MachineInfo) proxied() bool { return len(i.NetworkAllow) > 0 && !i.AllowNetwork }

// serveEgress serves the connections the machine's agent hands over on ctl,
// until ctl ends (the machine stopped): those to the proxy's port with the
// proxy, those to a loopback service's port (Machine.ServeLoopback) with
// the service. Each comes with the port it was made to (2 bytes, big
// endian).
func (e *Engine) serveEgress(ctl *os.File, m *Machine, info MachineInfo, logPath string) {
	defer ctl.Close()
	log, _ := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if log != nil {
		defer log.Close()
	}
	g := &egress{machine: info.ID, allow: info.NetworkAllow, opts: e.opts.Egress, log: log}
	fd := int(ctl.Fd())
	oob := make([]byte, unix.CmsgSpace(4))
	var b [2]byte
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, b[:], oob, 0)
		if err != nil || n == 0 {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		port := wire.EgressPort
		if n == 2 {
			port = int(binary.BigEndian.Uint16(b[:]))
		}
		serve := g.serve
		if port != wire.EgressPort || !info.proxied() {
			serve = m.loopbackServer(port) // nil: no longer served
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for i := range msgs {
			fds, err := unix.ParseUnixRights(&msgs[i])
			if err != nil {
				continue
			}
			for _, cfd := range fds {
				f := os.NewFile(uintptr(cfd), "egress")
				c, err := net.FileConn(f)
				f.Close()
				switch {
				case err != nil:
				case serve == nil:
					c.Close()
				default:
					go serve(c)
				}
			}
		}
	}
}

// note writes a line of the machine's network log.
func (g *egress) note(verdict, dest, why string) {
	if g.log == nil {
		return
	}
	g.logMu.Lock()
	defer g.logMu.Unlock()
	line := time.Now().UTC().Format(time.RFC3339) + " " + verdict + " " + dest
	if why != "" {
		line += " " + why
	}
	g.log.WriteString(line + "\n")
}

// egressHeaderTimeout bounds how long a connection may take to send its
// request line and headers.
const egressHeaderTimeout = 30 * time.Second

// serve is one connection from the machine: one CONNECT tunnel, or one
// plain HTTP request.
func (g *egress) serve(c net.Conn) {
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(egressHeaderTimeout))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	host, port := req.Host, ""
	if req.Method != http.MethodConnect {
		if req.URL == nil || req.URL.Host == "" || req.URL.Scheme != "http" {
			g.refuse(c, "", http.StatusBadRequest, "vmcp: this is the machine's HTTP proxy: send absolute http:// URLs, or CONNECT for https")
			return
		}
		host = req.URL.Host
	}
	if h, p, err := net.SplitHostPort(host); err == nil {
		host, port = h, p
	} else if req.Method == http.MethodConnect {
		port = "443"
	} else {
		port = "80"
	}
	dest := net.JoinHostPort(host, port)
	target, why := g.check(host)
	if why != "" {
		g.note("refused", dest, why)
		g.refuse(c, dest, http.StatusForbidden, "vmcp: "+why)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	up, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(target.String(), port))
	cancel()
	if err != nil {
		g.note("failed", dest, err.Error())
		g.refuse(c, dest, http.StatusBadGateway, fmt.Sprintf("vmcp: could not connect to %s: %v", dest, err))
		return
	}
	defer up.Close()
	g.note("allowed", dest, "")
	if req.Method == http.MethodConnect {
		if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
		splice(c, br, up)
		return
	}
	// One request per connection: the proxy reads no further requests,
	// which could name other hosts.
	req.Header.Del("Proxy-Connection")
	req.Header.Del("Proxy-Authorization")
	req.Header.Set("Connection", "close")
	req.Close = true
	if err := req.Write(up); err != nil {
		return
	}
	io.Copy(c, up)
}

// splice copies both ways until both sides are done.
func splice(c net.Conn, fromC io.Reader, up net.Conn) {
	done := make(chan struct{})
	go func() {
		io.Copy(up, fromC)
		if tc, ok := up.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	io.Copy(c, up)
	if uc, ok := c.(interface{ CloseWrite() error }); ok {
		uc.CloseWrite()
	}
	<-done
}

// check decides on a destination: the address to dial, or why not.
func (g *egress) check(host string) (netip.Addr, string) {
	host = strings.ToLower(strings.Trim(host, "[]"))
	if _, err := netip.ParseAddr(host); err == nil {
		return netip.Addr{}, fmt.Sprintf("%s is an address; a machine reaches only the names in its allow-list (allowed: %s)", host, strings.Join(g.allow, ", "))
	}
	if !backend.DomainAllowed(g.allow, host) {
		return netip.Addr{}, fmt.Sprintf("%s is not in this machine's allow-list (allowed: %s)", host, strings.Join(g.allow, ", "))
	}
	resolve := g.opts.Resolve
	if resolve == nil {
		resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	addrs, err := resolve(ctx, host)
	if err != nil || len(addrs) == 0 {
		return netip.Addr{}, fmt.Sprintf("%s could not be resolved: %v", host, err)
	}
	for _, a := range addrs {
		a = a.Unmap()
		if privateAddr(a) && !backend.DomainAllowed(g.opts.PrivateAllowed, host) {
			return netip.Addr{}, fmt.Sprintf("%s resolves to %s, a loopback, link-local or private address, which the operator did not allow for it", host, a)
		}
	}
	return addrs[0].Unmap(), ""
}

// privateAddr: loopback, link-local, private, unspecified or multicast.
func privateAddr(a netip.Addr) bool {
	return a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsPrivate() ||
		a.IsUnspecified() || a.IsMulticast() || a.IsInterfaceLocalMulticast() ||
		netip.MustParsePrefix("100.64.0.0/10").Contains(a) // carrier-grade NAT
}

// refuse answers with status and a one-line body.
func (g *egress) refuse(c net.Conn, dest string, status int, msg string) {
	body := msg + "\n"
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s",
		status, http.StatusText(status), strconv.Itoa(len(body)), body)
}
