package tools

import (
	"context"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// progressInterval is the least time between two progress notifications.
const progressInterval = 100 * time.Millisecond

// progress sends the latest output line of a running call as
// notifications/progress, at most once per progressInterval. Its line
// method is quick and never blocks, so it can be an OnOutput callback.
type progress struct {
	send func(n float64, msg string)

	mu      sync.Mutex
	latest  string
	count   float64
	pending bool
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
}

// immediateNotifier is a session that writes a notification before
// returning (vmcp's stdio transport): a call's last progress notification
// then reaches the client before its result. Other sessions queue them.
type immediateNotifier interface {
	NotifyNow(method string, params map[string]any) error
}

// startProgress returns a progress reporter for the request, or nil when
// the client asked for none (no progress token).
func startProgress(ctx context.Context, req mcp.CallToolRequest) *progress {
	if req.Params.Meta == nil || req.Params.Meta.ProgressToken == nil {
		return nil
	}
	token := req.Params.Meta.ProgressToken
	notify := func(params map[string]any) {}
	if s, ok := server.ClientSessionFromContext(ctx).(immediateNotifier); ok {
		notify = func(params map[string]any) { _ = s.NotifyNow(string(mcp.MethodNotificationProgress), params) }
	} else if srv := server.ServerFromContext(ctx); srv != nil {
		notify = func(params map[string]any) {
			_ = srv.SendNotificationToClient(ctx, string(mcp.MethodNotificationProgress), params)
		}
	} else {
		return nil
	}
	return newProgress(func(n float64, msg string) {
		notify(map[string]any{"progressToken": token, "progress": n, "message": msg})
	})
}

func newProgress(send func(n float64, msg string)) *progress {
	p := &progress{
		send:    send,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go p.loop()
	return p
}

// line records an output line; stream is "stdout" or "stderr".
func (p *progress) line(stream, line string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.latest = stream + ": " + line
	p.count++
	p.pending = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *progress) flush() {
	p.mu.Lock()
	if !p.pending {
		p.mu.Unlock()
		return
	}
	p.pending = false
	n, msg := p.count, p.latest
	p.mu.Unlock()
	p.send(n, msg)
}

func (p *progress) loop() {
	defer close(p.stopped)
	for {
		select {
		case <-p.wake:
			p.flush()
			select {
			case <-time.After(progressInterval):
			case <-p.done:
				p.flush()
				return
			}
		case <-p.done:
			p.flush()
			return
		}
	}
}

// stop sends the last pending line and ends the reporter.
func (p *progress) stop() {
	if p == nil {
		return
	}
	close(p.done)
	<-p.stopped
}

// onOutput is the OnOutput callback for p (nil without a reporter).
func (p *progress) onOutput() func(stream, line string) {
	if p == nil {
		return nil
	}
	return p.line
}
