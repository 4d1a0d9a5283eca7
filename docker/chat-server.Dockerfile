# syntax=docker/dockerfile:1.7
# chat-server with the distributed backend (Kafka, ScyllaDB, Redis) — the image the operator
# runs for every role and for the setup Job. Build from the repository root:
#   docker build -f docker/chat-server.Dockerfile -t ghcr.io/tern/chat-server:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# rdkafka's bundled librdkafka needs a C toolchain (in the image) and nothing else.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chat-server --features distributed \
 && install -Dm755 target/release/chat-server /out/chat-server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tern \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tern \
 && install -d -o 10001 -g 10001 /var/lib/tern
COPY --from=build /out/chat-server /usr/local/bin/chat-server
USER 10001:10001
WORKDIR /var/lib/tern
ENV CHAT_LISTEN=0.0.0.0:8080 CHAT_DATA_DIR=/var/lib/tern
EXPOSE 8080
ENTRYPOINT ["chat-server"]
CMD ["serve"]
