# vmcp MCP server (stdio) with the local sandbox engine.
#   docker build -t vmcp .
#   docker run -i --rm --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     -v vmcp-state:/home/vmcp/.local/state/vmcp vmcp
# bubblewrap needs user namespaces inside the container: Docker's default
# seccomp and AppArmor profiles forbid them, hence the two options (or a
# seccomp profile that allows clone/unshare with CLONE_NEWUSER).

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/mcp-server ./cmd/mcp-server

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      bubblewrap util-linux ca-certificates \
      python3 python3-numpy python3-pandas python3-matplotlib \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 vmcp
COPY --from=build /out/mcp-server /usr/local/bin/mcp-server
USER vmcp
WORKDIR /home/vmcp
# The container's own filesystem is not the place for host files: local_path
# copies are limited to this directory (mount one here to use them).
ENV VMCP_ALLOWED_ROOTS=/home/vmcp/shared
RUN mkdir -p /home/vmcp/shared /home/vmcp/.local/state/vmcp
ENTRYPOINT ["/usr/local/bin/mcp-server"]
