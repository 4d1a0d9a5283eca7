# syntax=docker/dockerfile:1.7
# The Tern operator. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/tern/tern-operator:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tern-operator --bin tern-operator \
 && install -Dm755 target/release/tern-operator /out/tern-operator

# The operator needs only libc and CA certificates (TLS to the API server is rustls).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tern-operator /usr/local/bin/tern-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tern-operator"]
