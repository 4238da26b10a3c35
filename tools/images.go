package tools

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"

	"github.com/vmcp-dev/vmcp/backend"
	"github.com/vmcp-dev/vmcp/conversations"
)

// BuildImageInput is build_image's arguments.
type BuildImageInput struct {
	Dockerfile       string `json:"dockerfile,omitempty" jsonschema:"description=The Dockerfile's text (RUN\\, COPY\\, WORKDIR\\, ENV\\, ARG are carried out; FROM names the base). Default: the Dockerfile at the top of context_local_path."`
	ContextLocalPath string `json:"context_local_path,omitempty" jsonschema:"description=A host directory sent as the build context for COPY; it must be inside the server's allowed roots."`
	ImageRef         string `json:"image_ref,omitempty" jsonschema:"description=Base image when the Dockerfile has no FROM\\, e.g. python:3.13-slim."`
	Name             string `json:"name,omitempty" jsonschema:"description=A name for the resulting snapshot."`
	CallTimeout
	SessionArg
}

// BuildImageOutput is build_image's result.
type BuildImageOutput struct {
	SessionResult
	SnapshotID string   `json:"snapshot_id" jsonschema:"description=The image\\, as a snapshot: pass it as snapshot_id to launch_vm."`
	Backend    string   `json:"backend" jsonschema:"description=Where the snapshot is kept.,enum=fastvm"`
	Status     string   `json:"status" jsonschema:"description=The snapshot's status.,enum=ready"`
	Notes      []string `json:"notes,omitempty" jsonschema:"description=What the backend said of the build: the base image it really used\\, instructions it did not carry out."`
}

// SetFirewallInput is set_firewall's arguments.
type SetFirewallInput struct {
	Machine string         `json:"machine,omitempty" jsonschema:"description=Machine id; default: the conversation's default machine on a backend with a firewall."`
	Mode    string         `json:"mode" jsonschema:"description=open lets all inbound traffic in; restricted only what ingress allows.,enum=open,enum=restricted"`
	Ingress []IngressInput `json:"ingress,omitempty" jsonschema:"description=Inbound rules (for restricted mode)."`
	CallTimeout
	SessionArg
}

// IngressInput is one inbound rule.
type IngressInput struct {
	Protocol    string   `json:"protocol" jsonschema:"description=tcp or udp.,enum=tcp,enum=udp"`
	PortStart   int      `json:"port_start" jsonschema:"description=First port of the range.,minimum=1,maximum=65535"`
	PortEnd     int      `json:"port_end,omitempty" jsonschema:"description=Last port of the range; default port_start.,minimum=1,maximum=65535"`
	SourceCIDRs []string `json:"source_cidrs,omitempty" jsonschema:"description=IPv6 networks allowed (e.g. 2001:db8::/32); IPv4 is not supported. Default: any source."`
	Description string   `json:"description,omitempty" jsonschema:"description=What the rule is for."`
}

// SetFirewallOutput is set_firewall's result.
type SetFirewallOutput struct {
	SessionResult
	Machine string `json:"machine" jsonschema:"description=The machine whose policy was set."`
	Mode    string `json:"mode" jsonschema:"description=The policy's mode.,enum=open,enum=restricted"`
	Rules   int    `json:"rules" jsonschema:"description=How many ingress rules the policy has."`
}

func (s *Service) imageTools() []server.ServerTool {
	return []server.ServerTool{
		newTool[BuildImageInput, BuildImageOutput](s, toolSpec{
			name:    "build_image",
			timeout: 1800 * time.Second,
			title:   "Build an image",
			description: "Build a Dockerfile into a machine image (a snapshot) on a backend that builds images (FastVM); " +
				"launch_vm with its snapshot_id starts machines from it. Waits until the image is ready. Gives up after timeout_seconds (default 1800).",
			openWorld: true,
		}, s.buildImage),
		newTool[SetFirewallInput, SetFirewallOutput](s, toolSpec{
			name:    "set_firewall",
			timeout: 60 * time.Second,
			title:   "Set a machine's firewall",
			description: "Replace the inbound traffic policy of a machine on a backend with a firewall (FastVM): " +
				"open, or restricted to the given tcp/udp port ranges and IPv6 sources. Gives up after timeout_seconds (default 60).",
			idempotent: true,
			openWorld:  true,
		}, s.setFirewall),
	}
}

func (s *Service) buildImage(ctx context.Context, req mcp.CallToolRequest, in BuildImageInput) (*mcp.CallToolResult, error) {
	if in.Dockerfile == "" && in.ContextLocalPath == "" {
		return nil, errors.New("give dockerfile (the Dockerfile's text), context_local_path (a directory with a Dockerfile), or both")
	}
	c := conversationFrom(ctx)
	b := s.broker.BackendFor(c.Principal, backend.Build)
	if b == nil {
		return nil, fmt.Errorf("no configured backend builds images; FastVM does (set FASTVM_API_KEY)")
	}
	builder, ok := b.(backend.ImageBuilder)
	if !ok {
		return nil, &backend.UnsupportedError{Backend: b.Name(), Capability: backend.Build}
	}
	if err := s.conversations.CheckSnapshotLimit(c); err != nil {
		return nil, err
	}
	var dir *os.Root
	if in.ContextLocalPath != "" {
		access, ask := s.hostAccess(ctx, req, in.ContextLocalPath)
		if ask != nil {
			return ask, nil
		}
		src, err := access.openSource(in.ContextLocalPath)
		if err != nil {
			return nil, err
		}
		defer src.Close()
		if src.dir == nil {
			return nil, fmt.Errorf("context_local_path %s is not a directory", src.path)
		}
		dir = src.dir
	}
	snap, err := builder.BuildImage(ctx, backend.BuildSpec{Dockerfile: in.Dockerfile, Context: dir, ImageRef: in.ImageRef, Name: in.Name})
	if err != nil {
		return nil, err
	}
	if _, err := s.conversations.Update(ctx, c, func(c *conversations.Conversation) error {
		c.Snapshots = append(c.Snapshots, conversations.Snapshot{Backend: b.Name(), ID: snap.ID, CreatedAt: snap.CreatedAt})
		return nil
	}); err != nil {
		return nil, fmt.Errorf("record the image: %w", err)
	}
	out := BuildImageOutput{SnapshotID: snap.ID, Backend: b.Name(), Status: "ready", Notes: snap.Notes}
	text := fmt.Sprintf("Built image %s on %s; launch_vm with snapshot_id %q starts machines from it.", snap.ID, b.Name(), snap.ID)
	for _, n := range snap.Notes {
		text += "\nNote: " + n
	}
	return structured(out, false, mcp.NewTextContent(text)), nil
}

func (s *Service) setFirewall(ctx context.Context, _ mcp.CallToolRequest, in SetFirewallInput) (*mcp.CallToolResult, error) {
	if in.Mode != "open" && in.Mode != "restricted" {
		return nil, fmt.Errorf("mode %q: want open or restricted", in.Mode)
	}
	m, fw, err := machineAs[backend.FirewallSetter](ctx, s, in.Machine, backend.Firewall)
	if err != nil {
		return nil, err
	}
	p := backend.FirewallPolicy{Mode: in.Mode}
	for _, r := range in.Ingress {
		p.Ingress = append(p.Ingress, backend.FirewallRule{Protocol: r.Protocol, PortStart: r.PortStart, PortEnd: r.PortEnd, SourceCIDRs: r.SourceCIDRs, Description: r.Description})
	}
	if err := fw.SetFirewall(ctx, p); err != nil {
		return nil, err
	}
	out := SetFirewallOutput{Machine: m.ID(), Mode: in.Mode, Rules: len(in.Ingress)}
	return structured(out, false, mcp.NewTextContent(fmt.Sprintf("Firewall of %s set to %s with %d ingress %s.", m.ID(), in.Mode, len(in.Ingress), plural(len(in.Ingress), "rule", "rules")))), nil
}
