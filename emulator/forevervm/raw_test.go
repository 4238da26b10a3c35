//go:build linux

package forevervm

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmcp-dev/vmcp/local"
)

// localSpecWithTags is a plain local machine, as another tool would make.
func localSpecWithTags(tags map[string]string) local.MachineSpec {
	return local.MachineSpec{Name: "not-forevervm", Tags: tags}
}

// rawHTTP sends a hand-written request and returns the whole raw response.
func rawHTTP(t testing.TB, e *emu, request string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.ts.Listener.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// WebSocket opcodes (RFC 6455 §5.2).
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

// rawWS is a WebSocket client written from RFC 6455 over a bare TCP
// connection, so the test sees every frame the server sends, control frames
// included, with no library in between.
type rawWS struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

// rawDial performs the opening handshake by hand. The Host header has no
// port and the authorization header is lower case, as the Rust and JS SDKs
// send them.
func rawDial(t testing.TB, e *emu, machine string) *rawWS {
	t.Helper()
	conn, err := net.DialTimeout("tcp", e.ts.Listener.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := "GET /v1/machine/" + machine + "/repl HTTP/1.1\r\n" +
		"Host: 127.0.0.1\r\n" +
		"Upgrade: websocket\r\n" +
		"Connection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\n" +
		"Sec-WebSocket-Version: 13\r\n" +
		"authorization: Bearer " + testToken + "\r\n" +
		"x-forevervm-sdk: rust\r\n\r\n"
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("handshake: %s %v", resp.Status, resp.Header)
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		t.Fatalf("the server negotiated %q; frames would not be plain", ext)
	}
	return &rawWS{t: t, conn: conn, br: br}
}

// writeFrame sends one final, masked frame (clients must mask).
func (w *rawWS) writeFrame(op byte, payload []byte) {
	w.t.Helper()
	frame := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		frame = append(frame, 0x80|byte(n))
	case n < 1<<16:
		frame = append(frame, 0x80|126, byte(n>>8), byte(n))
	default:
		frame = append(frame, 0x80|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i, b := range payload {
		frame = append(frame, b^mask[i%4])
	}
	w.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := w.conn.Write(frame); err != nil {
		w.t.Fatal(err)
	}
}

// readFrame reads one frame before the deadline; a timeout error if none
// came.
func (w *rawWS) readFrame(deadline time.Time) (op byte, payload []byte, err error) {
	w.conn.SetReadDeadline(deadline)
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 || h[0]&0x70 != 0 {
		w.t.Fatalf("frame header %08b: want FIN set and no RSV bits (no fragments, no compression)", h[0])
	}
	if h[1]&0x80 != 0 {
		w.t.Fatal("a server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(w.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(w.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

// Spec §3.6 (§7.1 #8): the server never sends Ping frames, not even during
// a long instruction, and answers the client's pings with pongs. Every
// frame it sends is a text frame holding one of the six message types.
func TestItem08_RawFramesNoServerPingAndPong(t *testing.T) {
	e := newEmu(t, nil, Options{})
	w := rawDial(t, e, "new")
	var sawPong, sawResult bool
	var types []string
	handle := func(op byte, payload []byte) {
		switch op {
		case opPing:
			t.Fatalf("the server sent a Ping frame (%q): it breaks the Rust SDK", payload)
		case opPong:
			if string(payload) != "are-you-there" {
				t.Fatalf("pong payload %q", payload)
			}
			sawPong = true
		case opText:
			var m msg
			if err := json.Unmarshal(payload, &m); err != nil {
				t.Fatalf("text frame %q is not JSON", payload)
			}
			switch m.typ() {
			case "connected", "exec_received", "output", "result":
			default:
				t.Fatalf("unexpected message %s", payload)
			}
			types = append(types, m.typ())
			sawResult = sawResult || m.typ() == "result"
		default:
			t.Fatalf("unexpected frame opcode %#x: %q", op, payload)
		}
	}
	op, payload, err := w.readFrame(time.Now().Add(30 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	handle(op, payload)
	if types[0] != "connected" {
		t.Fatalf("first frame %q, want connected", payload)
	}

	w.writeFrame(opText, []byte(`{"type":"exec","instruction":{"code":"import time\nfor i in range(3):\n    time.sleep(1)\n    print(i)","timeout_seconds":15},"request_id":0}`))
	pinged := false
	start := time.Now()
	for !sawResult {
		op, payload, err := w.readFrame(time.Now().Add(30 * time.Second))
		if err != nil {
			t.Fatalf("waiting for the result: %v", err)
		}
		handle(op, payload)
		if !pinged && len(types) >= 3 { // after the first output, mid-instruction
			w.writeFrame(opPing, []byte("are-you-there"))
			pinged = true
		}
	}
	if !sawPong {
		t.Fatal("no pong for the ping sent during the instruction")
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Fatalf("the 3 s instruction ended after %v", d)
	}
	want := "connected exec_received output output output result"
	if got := strings.Join(types, " "); got != want {
		t.Fatalf("frames %q, want %q", got, want)
	}

	// Idle: still no ping for a while; a ping now is answered too.
	sawPong = false
	w.writeFrame(opPing, []byte("are-you-there"))
	deadline := time.Now().Add(3 * time.Second)
	for {
		op, payload, err := w.readFrame(deadline)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		handle(op, payload)
	}
	if !sawPong {
		t.Fatal("no pong while idle")
	}
	w.writeFrame(opClose, []byte{0x03, 0xe8}) // 1000, normal closure
	if op, _, err := w.readFrame(time.Now().Add(10 * time.Second)); err != nil || op != opClose {
		t.Fatalf("close handshake: op %#x, %v", op, err)
	}
}
