# syntax=docker/dockerfile:1
# tsad in a container: a builder that installs libtorch the way every checkout does
# (scripts/libtorch.sh: the PyPI wheel torch==2.13.0 in a virtualenv) and builds the release
# binary, then a slim runtime with the binary, torch's shared libraries at the same absolute
# path the binary's rpath names (build.rs), and the shipped model. docs/DEPLOY.md.

# The toolchain the project is developed with (Cargo.toml's rust-version is the minimum).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The virtualenv lives here; build.rs bakes the canonical path of its torch/lib into the
# binary's rpath, so the runtime stage puts the libraries at exactly this path.
ENV TSAD_CACHE=/opt/tsad \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# libtorch first and alone: its layer (about 5 GB, the wheel with its CUDA libraries) stays
# cached while the sources change.
COPY scripts/libtorch.sh scripts/libtorch.sh
RUN bash scripts/libtorch.sh
COPY . .
# target/ and the registry are cache mounts, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tsad \
 && install -D -m 0755 target/release/tsad /out/usr/local/bin/tsad
# Everything the runtime needs from the virtualenv, under /out at its absolute path:
# torch/lib, and nvidia/ (the CUDA libraries libtorch_cuda.so and libtorch_cpu.so load
# through their own $ORIGIN/../../nvidia/... rpath) when the wheel has them.
RUN set -eu; \
    torch=$(readlink -f .tsad/libtorch); site=$(dirname "$torch"); \
    readelf -d /out/usr/local/bin/tsad | grep -F "$torch/lib" \
      || { echo "tsad's rpath does not name $torch/lib (build.rs)" >&2; exit 1; }; \
    mkdir -p "/out$torch" "/out$site"; \
    cp -a "$torch/lib" "/out$torch/"; \
    if [ -d "$site/nvidia" ]; then cp -a "$site/nvidia" "/out$site/"; fi

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/ /
# A build that lost a library fails here, not at the first `docker run`.
RUN if ldd /usr/local/bin/tsad | grep 'not found'; then exit 1; fi \
 && tsad --version
RUN groupadd --system --gid 10001 tsad \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tsad --shell /usr/sbin/nologin tsad \
 && install -d -o 10001 -g 10001 /var/lib/tsad /var/lib/tsad/models
# The models directory is writable: training writes new versions and `ACTIVE` pins there
# (docker-compose.yml keeps it on a volume).
COPY --from=builder --chown=10001:10001 /src/models/default /var/lib/tsad/models/default
USER tsad
WORKDIR /var/lib/tsad
# Every setting is also a TSAD_* variable (README.md, `tsad serve --help`). A non-loopback
# address needs TSAD_API_KEYS (scope:key,…; keys of 16+ printable characters), else
# `tsad serve` refuses to start. SQLite here unless DATABASE_URL says postgres://….
ENV TSAD_LISTEN=0.0.0.0:8080 \
    TSAD_MODELS_DIR=/var/lib/tsad/models \
    DATABASE_URL=sqlite:///var/lib/tsad/tsad.db \
    TSAD_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM (docker stop) drains and flushes before exit; flags would override the
# environment above, so the command has none.
CMD ["tsad", "serve"]
