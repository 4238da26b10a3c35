# vmcp MCP server with the local sandbox engine. README.md ("Run it in a
# container") gives the commands for Docker and Podman, stdio and HTTP;
# `make image-check` builds this file with Podman and runs exactly those.
# bubblewrap needs user namespaces and a /proc of its own inside the
# container: Docker's default seccomp and AppArmor profiles forbid the
# first, its masked /proc paths the second, hence the three --security-opt.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION is what --version and serverInfo report (git describe).
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/mcp-server ./cmd/mcp-server

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bubblewrap util-linux ca-certificates \
      python3 python3-numpy python3-pandas python3-matplotlib python3-dill \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 vmcp
COPY --from=build /out/mcp-server /usr/local/bin/mcp-server
USER vmcp
WORKDIR /home/vmcp
# The container's own filesystem is not the place for host files: local_path
# copies are limited to this directory (mount one here to use them).
ENV VMCP_ALLOWED_ROOTS=/home/vmcp/shared
# In HTTP mode, a published port reaches only an address beyond the
# container's loopback.
ENV VMCP_LISTEN=0.0.0.0:8080
RUN mkdir -p /home/vmcp/shared /home/vmcp/.local/state/vmcp
ENTRYPOINT ["/usr/local/bin/mcp-server"]
