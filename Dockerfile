# syntax=docker/dockerfile:1
# Build: docker build -t trove .   (a cold release build of DataFusion takes ~20 min)

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is
# copied out in the same step because the cached target dir is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin trove \
 && cp target/release/trove /usr/local/bin/trove

FROM debian:bookworm-slim
# ca-certificates for TLS to S3/PostgreSQL; curl for the container healthcheck.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# Run unprivileged; /data is owned by that user so a fresh named volume is writable.
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin trove \
 && mkdir -p /data && chown trove:trove /data
COPY --from=builder /usr/local/bin/trove /usr/local/bin/trove
USER trove
ENV TROVE_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/trove"]
CMD ["serve"]
