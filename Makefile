# vmcp: see README.md.
GO ?= go

.PHONY: test bench deps

# deps installs the Debian packages the sandbox engine needs, when missing.
deps:
	@scripts/install-deps

# test runs every test: vet, then the whole suite against real sandboxes.
test: deps
	$(GO) vet ./...
	$(GO) test ./... -count=1 -timeout 20m

# bench prints the engine's latency and memory figures.
bench: deps
	$(GO) test ./local -run '^$$' -bench . -benchtime 2000x -timeout 20m
