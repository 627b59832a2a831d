# syntax=docker/dockerfile:1
#
# pretext: a multi-stage build. The builder compiles the release binary
# (RocksDB and librdkafka are C/C++ built from source by their -sys crates:
# expect ~20 minutes on 2 cores the first time); the runtime image is Debian
# slim with only the CA bundle and a non-root user. There is no Docker engine
# where pretext is developed and tested: this file is checked statically by
# tests/deploy.rs (and its sed run), never built there.
#
#   docker build -t pretext:0.1.0 .
#   docker run --rm pretext:0.1.0 replay --flush          # the bundled sample
#   docker run --rm -v $PWD/pretext.toml:/etc/pretext/pretext.toml pretext:0.1.0

FROM rust:1-bookworm AS builder
# libclang for RocksDB's bindgen; cmake and a C++ toolchain for the -sys crates.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY examples ./examples
# Cache the registry and the target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pretext \
 && cp target/release/pretext /usr/local/bin/pretext

FROM debian:bookworm-slim AS runtime
COPY config/default.toml /tmp/default.toml
# The image's own configuration file is config/default.toml with the two
# settings a container needs (every interface; the state on the volume). It
# is a file, not environment variables: PRETEXT__ variables win over the file,
# so an ENV here would silently override the chart's ConfigMap, which is
# mounted over this same path. tests/deploy.rs runs this sed on the repo's
# default.toml and loads the result.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pretext \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pretext --shell /usr/sbin/nologin pretext \
 && mkdir -p /etc/pretext /var/lib/pretext/state \
 && chown -R 10001:10001 /var/lib/pretext \
 && sed -e 's|^listen = .*|listen = "0.0.0.0:9464"|' -e 's|^dir = .*|dir = "/var/lib/pretext/state"|' /tmp/default.toml >/etc/pretext/pretext.toml \
 && rm /tmp/default.toml
COPY --from=builder /usr/local/bin/pretext /usr/local/bin/pretext
USER 10001:10001
WORKDIR /var/lib/pretext
VOLUME ["/var/lib/pretext"]
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/pretext"]
CMD ["run", "--config", "/etc/pretext/pretext.toml"]
