# syntax=docker/dockerfile:1.7
# chat-server with the distributed backend (Kafka, ScyllaDB, Redis) — the image the operator
# runs for every role and for the setup Job.
#
# With Docker + a registry (the normal way), from the repository root:
#   docker build -f docker/chat-server.Dockerfile -t <registry>/tern/chat-server:<tag> .
#   docker push <registry>/tern/chat-server:<tag>
# then point the ChatCluster at it (`spec.image`) or set the chart's image values.
#
# Without Docker (this repository's e2e node): e2e/env/images/build.sh chat-server runs this
# file with buildah and `--build-arg BINARY=prebuilt`: the Rust stage is skipped and the
# binary comes from a build context that holds just `chat-server` (a binary built on a
# Debian bookworm host, like the runtime stage below).

# Where the binary comes from: `build` (compile in the Rust stage, the default) or
# `prebuilt` (a `chat-server` file at the root of the build context).
ARG BINARY=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
# rdkafka's bundled librdkafka needs a C toolchain (in the image) and nothing else.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chat-server --features distributed \
 && install -Dm755 target/release/chat-server /out/chat-server

FROM scratch AS prebuilt
COPY chat-server /out/chat-server

FROM ${BINARY} AS binary

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tern \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tern \
 && install -d -o 10001 -g 10001 /var/lib/tern
COPY --from=binary --chmod=755 /out/chat-server /usr/local/bin/chat-server
USER 10001:10001
WORKDIR /var/lib/tern
ENV CHAT_LISTEN=0.0.0.0:8080 CHAT_DATA_DIR=/var/lib/tern
EXPOSE 8080
ENTRYPOINT ["chat-server"]
CMD ["serve"]
