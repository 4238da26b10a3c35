package transport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// callTool is the fast path of a plain tools/call: it runs the tool's
// handler straight from the message decoded once by dispatch, where mcp-go's
// HandleMessage would decode it four more times, look for hooks, tasks and
// trace context, and hash the input schema. It serves requests of both
// protocol eras: a 2026-07-28 request carries its protocol version and
// client capabilities in _meta, which are applied as mcp-go applies them,
// and its result is stamped with the result type and server info. It
// reports false, having done nothing, for a request that needs the full
// path: one that is not JSON-RPC 2.0, has _meta keys other than a progress
// token and the protocol's own (io.modelcontextprotocol/...), declares a
// protocol version that is unknown or of the legacy era, lacks the client
// capabilities a modern request must carry, is task-augmented or a multi
// round-trip retry, has arguments that are not an object, or names an
// unknown tool (mcp-go's errors then); modern requests also need
// StdioOptions.ServerInfo.
//
// It serves the tools as vmcp registers them: without session tools, tool
// filters, handler middleware or trace propagation, each tool checking its
// own arguments (package tools); a panic is recovered here, as WithRecovery
// would. A handler that asks the client for input (a multi round-trip
// result) is called again on the full path, which fulfills the request for
// clients older than 2026-07-28: handlers that ask for input do so before
// acting, as the protocol requires of them, since a modern client retries
// the whole call.
func (s *stdio) callTool(ctx context.Context, env *envelope) bool {
	p := &env.Params
	if env.JSONRPC != mcp.JSONRPC_VERSION || len(p.Task) > 0 || len(p.InputResponses) > 0 || len(p.RequestState) > 0 {
		return false
	}
	if args := bytes.TrimSpace(p.Arguments); len(args) > 0 && args[0] != '{' && string(args) != "null" {
		return false
	}
	var meta *mcp.Meta
	info := &server.RequestProtocolInfo{}
	if len(p.Meta) > 0 && string(p.Meta) != "null" {
		meta = &mcp.Meta{}
		if json.Unmarshal(p.Meta, meta) != nil {
			return false
		}
		for key := range meta.AdditionalFields {
			if !strings.HasPrefix(key, "io.modelcontextprotocol/") {
				return false
			}
		}
		if version := meta.ProtocolVersion(); version != "" {
			if !mcp.IsModernProtocol(version) || !mcp.IsValidProtocolVersion(version) || s.serverInfo == nil {
				return false
			}
			caps := meta.ClientCapabilities()
			if caps == nil {
				return false
			}
			info = &server.RequestProtocolInfo{Modern: true, ProtocolVersion: version, ClientInfo: meta.ClientInfo(), ClientCapabilities: caps, LogLevel: meta.LogLevel()}
		}
	}
	tool := s.srv.GetTool(p.Name)
	if tool == nil {
		return false
	}
	if info.Modern {
		// What the initialize handshake used to establish.
		if c, ok := server.ClientSessionFromContext(ctx).(server.SessionWithClientInfo); ok {
			if info.ClientInfo != nil {
				c.SetClientInfo(*info.ClientInfo)
			}
			c.SetClientCapabilities(*info.ClientCapabilities)
		}
		if c := server.ClientSessionFromContext(ctx); c != nil && !c.Initialized() {
			c.Initialize()
		}
	}
	ctx = server.WithRequestProtocolInfo(ctx, info)

	var req mcp.CallToolRequest
	req.Method = string(mcp.MethodToolsCall)
	req.Params.Name = p.Name
	if len(p.Arguments) > 0 {
		req.Params.RawArguments = json.RawMessage(p.Arguments)
		req.Params.Arguments = json.RawMessage(p.Arguments)
	}
	req.Params.Meta = meta
	res, err := s.runHandler(ctx, tool.Handler, req)
	switch {
	case err != nil:
		s.reply(errorMessage(env.ID, mcp.INTERNAL_ERROR, err.Error()))
	case res == nil:
		s.reply(errorMessage(env.ID, mcp.INTERNAL_ERROR, fmt.Sprintf("tool %q returned no result", p.Name)))
	case res.ResultType == mcp.ResultTypeInputRequired:
		return false
	default:
		if info.Modern {
			if res.ResultType == "" {
				res.ResultType = mcp.ResultTypeComplete
			}
			if m := res.EnsureResultMeta(); m.ServerInfo() == nil {
				m.SetServerInfo(*s.serverInfo)
			}
		}
		s.respond(env.ID, toolResponse{JSONRPC: mcp.JSONRPC_VERSION, ID: env.ID, Result: wireResult(res)})
	}
	return true
}

// toolResponse is the JSON-RPC response to a tools/call.
type toolResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  any             `json:"result"`
}

// toolResultJSON is a CallToolResult as mcp-go writes it. Its MarshalJSON
// builds a map, so that the keys come out sorted (the order of the fields
// here), and encoding/json then scans the bytes it returned once more; a
// struct encodes the same JSON in one pass, which matters for large results.
type toolResultJSON struct {
	Meta              *mcp.Meta      `json:"_meta,omitempty"`
	Content           []mcp.Content  `json:"content"`
	IsError           bool           `json:"isError,omitempty"`
	ResultType        mcp.ResultType `json:"resultType,omitempty"`
	StructuredContent any            `json:"structuredContent,omitempty"`
}

// wireResult is what to encode for res: a toolResultJSON, or res itself
// when it has fields that toolResultJSON leaves out.
func wireResult(res *mcp.CallToolResult) any {
	if len(res.InputRequests) > 0 || res.RequestState != "" {
		return res
	}
	w := toolResultJSON{Meta: res.Meta, Content: res.Content, IsError: res.IsError, ResultType: res.ResultType, StructuredContent: res.StructuredContent}
	if w.Content == nil {
		w.Content = []mcp.Content{}
	}
	if len(res.RawStructuredContent) > 0 {
		w.StructuredContent = res.RawStructuredContent
	}
	return w
}

// runHandler calls a tool handler, turning a panic into an error.
func (s *stdio) runHandler(ctx context.Context, h func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error), req mcp.CallToolRequest) (res *mcp.CallToolResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Interface("panic", r).Str("tool", req.Params.Name).Msg("tool handler panicked")
			res, err = nil, fmt.Errorf("internal error in tool %s; the call may not have been carried out", req.Params.Name)
		}
	}()
	return h(ctx, req)
}
