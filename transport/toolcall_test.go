//go:build linux

package transport

import (
	"context"
	"encoding/json"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// TestToolCallFastPathAnswersAsMCPGo sends tool calls through ServeStdio and
// checks each response against what mcp-go's HandleMessage answers for the
// same line, and that exactly the plain calls took the fast path (mcp-go's
// request hook sees only the others).
func TestToolCallFastPathAnswersAsMCPGo(t *testing.T) {
	var full atomic.Int64
	hooks := &server.Hooks{}
	hooks.AddOnRequestInitialization(func(ctx context.Context, id any, message any) error {
		full.Add(1)
		return nil
	})
	srv := server.NewMCPServer("test", "1", server.WithToolCapabilities(false), server.WithRecovery(), server.WithHooks(hooks))
	srv.AddTool(mcp.Tool{Name: "echo", InputSchema: mcp.ToolInputSchema{Type: "object"}}, func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		var args map[string]any
		if err := req.BindArguments(&args); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(args)
		return &mcp.CallToolResult{Content: []mcp.Content{mcp.NewTextContent(string(b))}, StructuredContent: map[string]any{"args": args}}, nil
	})
	srv.AddTool(mcp.Tool{Name: "token", InputSchema: mcp.ToolInputSchema{Type: "object"}}, func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		var token any
		if req.Params.Meta != nil {
			token = req.Params.Meta.ProgressToken
		}
		b, _ := json.Marshal(token)
		return mcp.NewToolResultText(string(b)), nil
	})
	srv.AddTool(mcp.Tool{Name: "fail", InputSchema: mcp.ToolInputSchema{Type: "object"}}, func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return mcp.NewToolResultError("it failed; try again"), nil
	})
	srv.AddTool(mcp.Tool{Name: "rich", InputSchema: mcp.ToolInputSchema{Type: "object"}}, func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		res := &mcp.CallToolResult{
			Content:              []mcp.Content{mcp.NewTextContent("a \"quoted\" <text>\n"), mcp.NewImageContent("iVBORw0KGgo=", "image/png")},
			RawStructuredContent: json.RawMessage(`{"z": 1, "a": [2, "\u00e9"]}`),
			IsError:              true,
		}
		res.Meta = mcp.NewMetaFromMap(map[string]any{"note": "kept"})
		return res, nil
	})
	srv.AddTool(mcp.Tool{Name: "empty", InputSchema: mcp.ToolInputSchema{Type: "object"}}, func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return &mcp.CallToolResult{}, nil
	})
	srv.AddTool(mcp.Tool{Name: "boom", InputSchema: mcp.ToolInputSchema{Type: "object"}}, func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		panic("boom")
	})

	c := startRaw(t, srv, StdioOptions{ServerInfo: &mcp.Implementation{Name: "test", Version: "1"}})
	c.initialize(t, `{}`)
	const modern = `"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"m","version":"2"},"io.modelcontextprotocol/clientCapabilities":{"roots":{}}`
	for _, tc := range []struct {
		line string
		fast bool
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":1.5,"b":"x","c":[1,{"d":null}]}}}`, true},
		{`{"jsonrpc":"2.0","id":"two","method":"tools/call","params":{"name":"echo","arguments":null}}`, true},
		{`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}`, true},
		{`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"token","_meta":{"progressToken":7}}}`, true},
		{`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"token","_meta":{"progressToken":"tok"},"arguments":{}}}`, true},
		{`{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"token","_meta":{}}}`, true},
		{`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"fail","arguments":{}}}`, true},
		{`{"jsonrpc":"2.0","id":71,"method":"tools/call","params":{"name":"rich"}}`, true},
		{`{"jsonrpc":"2.0","id":72,"method":"tools/call","params":{"name":"empty"}}`, true},
		{`{"jsonrpc":"2.0","id":73,"method":"tools/call","params":{"name":"echo","arguments":{"x":1},"_meta":{` + modern + `}}}`, true},
		{`{"jsonrpc":"2.0","id":74,"method":"tools/call","params":{"name":"token","_meta":{"progressToken":"m",` + modern + `}}}`, true},
		{`{"jsonrpc":"2.0","id":75,"method":"tools/call","params":{"name":"rich","_meta":{` + modern + `}}}`, true},
		{`{"jsonrpc":"2.0","id":76,"method":"tools/call","params":{"name":"fail","_meta":{` + modern + `}}}`, true},
		{`{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`, false},
		{`{"jsonrpc":"2.0","id":78,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}`, false},
		{`{"jsonrpc":"2.0","id":79,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2025-06-18"}}}`, false},
		{`{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"no_such_tool","arguments":{}}}`, false},
		{`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":[1]}}`, false},
		{`{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"token","_meta":{"progressToken":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}`, false},
		{`{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{},"inputResponses":{}}}`, false},
	} {
		before := full.Load()
		c.send(t, "%s", tc.line)
		got := c.recv(t)
		viaFull := full.Load() > before
		if viaFull == tc.fast {
			t.Errorf("%s: fast path %v, want %v", tc.line, !viaFull, tc.fast)
		}
		sameAnswer(t, srv, tc.line, got)
	}
	// mcp-go rejects this one before its hooks run: only the answer tells.
	line := `{"jsonrpc":"1.0","id":12,"method":"tools/call","params":{"name":"echo","arguments":{}}}`
	c.send(t, "%s", line)
	sameAnswer(t, srv, line, c.recv(t))

	// A panicking handler is an internal error, as with WithRecovery, and
	// the server serves on.
	c.send(t, `{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"boom","arguments":{}}}`)
	r := c.recv(t)
	if e, _ := r["error"].(map[string]any); e == nil || e["code"] != float64(mcp.INTERNAL_ERROR) || r["id"] != float64(20) {
		t.Errorf("panicking tool: %v", r)
	}
	c.send(t, `{"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"token","_meta":{"progressToken":"after"}}}`)
	if r := c.recv(t); r["id"] != float64(21) || r["result"] == nil {
		t.Errorf("after a panic: %v", r)
	}
}

// sameAnswer checks got against what HandleMessage answers to line.
func sameAnswer(t *testing.T, srv *server.MCPServer, line string, got map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(srv.HandleMessage(context.Background(), json.RawMessage(line)))
	var want map[string]any
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %v\nwant %v", line, got, want)
	}
}
