# vmcp: see README.md.
GO ?= go

.PHONY: run build test bench deps conformance cross dist image-check lint

# VERSION is what --version and the MCP handshake's serverInfo report.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# CROSS are the systems the server is built for besides Linux: there the
# cloud backends serve, and the local one says it needs Linux.
CROSS := darwin/arm64 darwin/amd64 windows/amd64

# run builds the server and serves MCP on stdin/stdout (what an MCP client
# starts; typed into a terminal it waits for JSON-RPC). Nothing but the
# protocol may reach stdout, hence the silent recipe.
run: build
	@exec bin/mcp-server

# build installs what the sandbox needs, when missing, and builds bin/mcp-server.
build: deps
	@$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/mcp-server ./cmd/mcp-server

# deps installs the Debian packages the sandbox engine needs, when missing.
deps:
	@scripts/install-deps

# test runs every test: vet, then the whole suite against real sandboxes.
test:
	@scripts/install-deps --test
	$(GO) vet ./...
	$(GO) test ./... -count=1 -timeout 20m

# lint runs staticcheck (pinned) over every package.
lint:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

# bench prints the engine's figures, then the MCP layer's cost over stdio.
bench: build
	$(GO) test ./local -run '^$$' -bench . -benchtime 2000x -timeout 20m
	$(GO) test ./backend/forevervm -run '^$$' -bench . -benchtime 10x -timeout 20m
	$(GO) test ./tools -run '^$$' -bench CallNamingMachine -benchtime 4000x -timeout 20m
	$(GO) run ./cmd/vmcp-bench --server bin/mcp-server --n 2000 --load-clients 100 --load-calls 20
	$(GO) run ./cmd/vmcp-bench --server bin/mcp-server --only load --load-clients 100 --load-calls 20 --load-warm-machines 100

# conformance runs the official MCP conformance suite against the streamable
# HTTP endpoint (it installs Node 22 and the suite from npm under .cache/).
conformance: deps
	scripts/conformance

# cross builds and vets every package for the other systems, checks that
# this system's binary reports the version, and runs the cloud backends'
# end-to-end tests against a server built without the local engine (the
# vmcp_nolocal tag gives Linux the code that macOS and Windows run).
cross:
	@set -e; for t in $(CROSS); do \
		echo "cross: GOOS=$${t%/*} GOARCH=$${t#*/} go build && go vet"; \
		GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) build ./... ; \
		GOOS=$${t%/*} GOARCH=$${t#*/} $(GO) vet ./... ; \
	done
	@$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/mcp-server ./cmd/mcp-server
	@test "$$(bin/mcp-server --version)" = "$(VERSION)" || { echo "cross: --version says $$(bin/mcp-server --version), not $(VERSION)"; exit 1; }
	@echo "cross: the server as built for macOS and Windows (no local engine), over stdio, HTTP and SSE, with both cloud backends"
	VMCP_E2E_SERVER_TAGS=vmcp_nolocal $(GO) test ./e2e -count=1 -timeout 10m \
		-run '^(TestServerWithoutLocalEngine|TestForeverVMConversation|TestFastVMTools|TestReplicasShareConversations)$$'
	@echo "cross: ok, version $(VERSION)"

# dist builds the release binaries into dist/: one per system, named
# mcp-server-VERSION-OS-ARCH (.exe on Windows), with their SHA-256 sums.
dist:
	@rm -rf dist && mkdir -p dist
	@set -e; for t in linux/amd64 linux/arm64 $(CROSS); do \
		os=$${t%/*}; arch=$${t#*/}; ext=; [ $$os = windows ] && ext=.exe; \
		out=dist/mcp-server-$(VERSION)-$$os-$$arch$$ext; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $$out ./cmd/mcp-server; \
		echo "dist: $$out"; \
	done
	@cd dist && sha256sum mcp-server-* > SHA256SUMS

# image-check builds the container image with Podman and drives it as the
# README says to run it (see scripts/image-check).
image-check:
	scripts/image-check $(IMAGE_CHECK_FLAGS)
