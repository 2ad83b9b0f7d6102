# mixpeek-gateway container image. Untested here (no Docker engine on the
# build machine); the binary it builds is the one `cargo build --release`
# builds and tests.
#
#   docker build -t mixpeek-gateway .
#   docker run -p 8080:8080 -e MIXPEEK_API_KEY=sk_... \
#     -v $PWD/config:/etc/mixpeek-gateway:ro mixpeek-gateway
#
# The config is mounted at /etc/mixpeek-gateway/gateway.toml; set
# `listen = "0.0.0.0:8080"` in it (or MIXPEEK_GATEWAY_LISTEN, as below).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin mixpeek-gateway \
 && strip target/release/mixpeek-gateway

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/mixpeek-gateway
COPY --from=build /src/target/release/mixpeek-gateway /usr/local/bin/mixpeek-gateway
USER 10001:10001
ENV MIXPEEK_GATEWAY_CONFIG=/etc/mixpeek-gateway/gateway.toml \
    MIXPEEK_GATEWAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
STOPSIGNAL SIGTERM
# Probe GET /_gateway/ready (503 while draining) from the orchestrator.
ENTRYPOINT ["/usr/local/bin/mixpeek-gateway"]
CMD ["serve"]
