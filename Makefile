# vmcp: see README.md.
GO ?= go

.PHONY: run build test bench deps conformance

# run builds the server and serves MCP on stdin/stdout (what an MCP client
# starts; typed into a terminal it waits for JSON-RPC). Nothing but the
# protocol may reach stdout, hence the silent recipe.
run: build
	@exec bin/mcp-server

# build installs what the sandbox needs, when missing, and builds bin/mcp-server.
build: deps
	@$(GO) build -o bin/mcp-server ./cmd/mcp-server

# deps installs the Debian packages the sandbox engine needs, when missing.
deps:
	@scripts/install-deps

# test runs every test: vet, then the whole suite against real sandboxes.
test:
	@scripts/install-deps --test
	$(GO) vet ./...
	$(GO) test ./... -count=1 -timeout 20m

# bench prints the engine's figures, then the MCP layer's cost over stdio.
bench: build
	$(GO) test ./local -run '^$$' -bench . -benchtime 2000x -timeout 20m
	$(GO) test ./backend/forevervm -run '^$$' -bench . -benchtime 10x -timeout 20m
	$(GO) run ./cmd/vmcp-bench --server bin/mcp-server --n 2000 --load-clients 100 --load-calls 20

# conformance runs the official MCP conformance suite against the streamable
# HTTP endpoint (it installs Node 22 and the suite from npm under .cache/).
conformance: deps
	scripts/conformance
