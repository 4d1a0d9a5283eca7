# syntax=docker/dockerfile:1.7
# The Tern operator.
#
# With Docker + a registry (the normal way), from the repository root:
#   docker build -f docker/operator.Dockerfile -t <registry>/tern/tern-operator:<tag> .
#   docker push <registry>/tern/tern-operator:<tag>
# then set the chart's operator image values to it.
#
# Without Docker (this repository's e2e node): e2e/env/images/build.sh operator runs this
# file with buildah and `--build-arg BINARY=prebuilt`: the Rust stage is skipped and the
# binary comes from a build context that holds just `tern-operator`.

# Where the binary comes from: `build` (compile in the Rust stage, the default) or
# `prebuilt` (a `tern-operator` file at the root of the build context).
ARG BINARY=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tern-operator --bin tern-operator \
 && install -Dm755 target/release/tern-operator /out/tern-operator

FROM scratch AS prebuilt
COPY tern-operator /out/tern-operator

FROM ${BINARY} AS binary

# The operator needs only libc and CA certificates (TLS to the API server is rustls).
# Runtime base: debian:bookworm-slim, not gcr.io/distroless/cc-debian12:nonroot as before —
# the same Debian 12 libc, but an image that can also be built locally from Debian's own
# packages (debootstrap) on machines without a registry, and the one the chat-server image
# uses (one base layer for both). The price is a shell and apt in the image (~75 MB instead
# of ~25 MB). Non-root uid/gid 10001 as before.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tern \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tern
COPY --from=binary --chmod=755 /out/tern-operator /usr/local/bin/tern-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tern-operator"]
