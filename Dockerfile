# syntax=docker/dockerfile:1
# pgferry container image: build with the Rust toolchain, run on slim Debian.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --profile dist --bin pgferry \
    && install -D -m 0755 target/dist/pgferry /out/pgferry

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin pgferry \
    && mkdir -p /etc/pgferry
COPY --from=builder /out/pgferry /usr/local/bin/pgferry
USER pgferry
# 6432: client connections; 9127: admin/metrics HTTP.
EXPOSE 6432 9127
ENTRYPOINT ["pgferry"]
CMD ["--config", "/etc/pgferry/pgferry.toml"]
