# syntax=docker/dockerfile:1
#
# tessera miner images: one builder set-up, two runtime targets.
#
#   docker build --target cpu  -t tessera:cpu  .   # CPU backend; also the default (last stage)
#   docker build --target cuda -t tessera:cuda .   # burn-cuda for NVIDIA GPUs
#
# Both runtimes are debian:bookworm-slim, the builder's Debian release, so the binary's glibc
# always matches. The CUDA image adds only NVRTC, copied from NVIDIA's CUDA runtime image
# (burn-cuda compiles its kernels with it at run time); the driver's libcuda.so.1 comes from
# the host through the NVIDIA Container Toolkit (docker --gpus, compose device reservations,
# the Kubernetes device plugin). The driver must support CUDA >= CUDA_VERSION (12.4: R550+).
#
# Build arguments:
#   CUDA_VERSION         NVRTC / CUDA API version of the cuda target (default 12.4.1).
#   CUDARC_CUDA_VERSION  The CUDA API the driver bindings (cudarc) are generated for;
#                        derived from CUDA_VERSION (12.4.1 -> 12040) so bindings, NVRTC and
#                        the minimum driver agree. Without it (no nvcc in the builder) cudarc
#                        falls back to its newest API (13.x), which needs a 13.x driver.
#   CUDA_FEATURES        cargo features of the cuda build (default tessera-model/cuda).
#
# Running (see deploy/README.md): state in /var/lib/tessera, the shared slice cache in
# /var/cache/tessera, the btcli wallet (hotkeys only) read-only at
# /home/tessera/.bittensor/wallets, S3 keys as TESSERA__S3__* variables, metrics and health
# on port 9464 (/metrics, /healthz, /readyz), JSON logs on stdout.

ARG RUST_VERSION=1.95
ARG CUDA_VERSION=12.4.1
ARG CUDA_IMAGE=nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------
# chef: cargo-chef caches the dependency build in its own layer (rebuilt only when
# Cargo.toml/Cargo.lock change, not on every source edit).
FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
    && rm -rf "${CARGO_HOME}/registry"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------------------
# builder-cpu: default features (the pure-Rust ndarray CPU backend).
FROM chef AS builder-cpu
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin tessera \
    && install -m 0755 target/release/tessera /usr/local/bin/tessera

# ---------------------------------------------------------------------------------------
# builder-cuda: burn-cuda loads libcuda and NVRTC at run time, so no CUDA toolkit here.
FROM chef AS builder-cuda
ARG CUDA_VERSION
ARG CUDARC_CUDA_VERSION=
ARG CUDA_FEATURES=tessera-model/cuda
COPY --from=planner /src/recipe.json recipe.json
RUN if [ -z "${CUDARC_CUDA_VERSION}" ]; then \
        major="${CUDA_VERSION%%.*}" && rest="${CUDA_VERSION#*.}" && minor="${rest%%.*}" \
        && CUDARC_CUDA_VERSION="$((major * 1000 + minor * 10))"; \
    fi \
    && export CUDARC_CUDA_VERSION \
    && echo "cudarc bindings for CUDA ${CUDARC_CUDA_VERSION}" \
    && echo "${CUDARC_CUDA_VERSION}" > /src/cudarc-cuda-version \
    && cargo chef cook --release --locked --features "${CUDA_FEATURES}" --recipe-path recipe.json
COPY . .
RUN CUDARC_CUDA_VERSION="$(cat /src/cudarc-cuda-version)" \
    && export CUDARC_CUDA_VERSION \
    && cargo build --release --locked --bin tessera --features "${CUDA_FEATURES}" \
    && install -m 0755 target/release/tessera /usr/local/bin/tessera

# ---------------------------------------------------------------------------------------
# nvrtc: NVIDIA's runtime image, only as the source of libnvrtc (redistributable). The
# libraries need nothing but glibc, so they run on bookworm.
FROM ${CUDA_IMAGE} AS nvrtc
RUN mkdir -p /nvrtc \
    && cp -a /usr/local/cuda/lib64/libnvrtc.so.* /usr/local/cuda/lib64/libnvrtc-builtins.so.* /nvrtc/ \
    && ls -l /nvrtc

# ---------------------------------------------------------------------------------------
# runtime-base: what both runtime images share. No USER here: the targets below add
# files as root first.
FROM debian:bookworm-slim AS runtime-base
ARG DEBIAN_FRONTEND=noninteractive
# curl: only for the HEALTHCHECK (tessera has no health subcommand).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 tessera \
    && useradd --uid 10001 --gid 10001 --home-dir /home/tessera --create-home \
        --shell /usr/sbin/nologin tessera \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/tessera /var/cache/tessera \
        /home/tessera/.bittensor /home/tessera/.bittensor/wallets \
    && install -d -m 0755 /etc/tessera /etc/tessera/conf.d
# The documented defaults (every key commented out). Mount extra files under
# /etc/tessera/conf.d and pass one with `--config`.
COPY --chmod=0644 config/default.toml /etc/tessera/default.toml
# Container settings. They are environment variables, so they beat a --config file (the
# layers: default.toml < --config < TESSERA__* < flags): override them with -e or flags.
#   XDG_CACHE_HOME: burn/cubecl's autotune cache, kept per miner on the state volume
#   (the root filesystem may be read-only).
ENV HOME=/home/tessera \
    TESSERA_CONFIG_DIR=/etc/tessera \
    TESSERA__STATE_DIR=/var/lib/tessera \
    TESSERA__RUNTIME__CACHE_DIR=/var/cache/tessera/slices \
    TESSERA__METRICS__LISTEN=0.0.0.0:9464 \
    TESSERA__LOG_FORMAT=json \
    XDG_CACHE_HOME=/var/lib/tessera/.cache
WORKDIR /var/lib/tessera
VOLUME ["/var/lib/tessera", "/var/cache/tessera"]
EXPOSE 9464
# SIGTERM: the miner checkpoints and exits 0 within runtime.shutdown_timeout_secs (30 s);
# give it longer than that (docker stop -t 60, compose stop_grace_period, k8s
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# Generous start period: model load and the start-up sync come before a steady state.
# The port must follow metrics.listen if that is changed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
    CMD ["curl", "-fsS", "--max-time", "4", "-o", "/dev/null", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["tessera"]
CMD ["miner"]
LABEL org.opencontainers.image.title="tessera" \
      org.opencontainers.image.description="Collaborative LLM-training miner for a Bittensor subnet" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# ---------------------------------------------------------------------------------------
# cuda: the CPU runtime plus NVRTC. Use --device cuda:0 / TESSERA__DEVICE=cuda:0: a
# container sees only the GPUs given to it, renumbered from 0.
FROM runtime-base AS cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=nvrtc /nvrtc/ /usr/local/lib/nvrtc/
RUN echo /usr/local/lib/nvrtc > /etc/ld.so.conf.d/nvrtc.conf \
    && ldconfig \
    && ldconfig -p | grep 'libnvrtc'
COPY --from=builder-cuda /usr/local/bin/tessera /usr/local/bin/tessera
# For the NVIDIA Container Toolkit (docker --gpus and the k8s device plugin override
# NVIDIA_VISIBLE_DEVICES with the GPUs actually granted). /usr/local/nvidia/lib64 is
# where older toolkits put the driver libraries.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/lib/nvrtc
USER 10001:10001
RUN tessera --version

# ---------------------------------------------------------------------------------------
# cpu (default target: last stage).
FROM runtime-base AS cpu
COPY --from=builder-cpu /usr/local/bin/tessera /usr/local/bin/tessera
USER 10001:10001
RUN tessera --version
