# cross-rs build image for aarch64-unknown-linux-gnu (Cross.toml): Ubuntu 20.04, hence glibc 2.31
# (JetPack 5), GCC 9.4 + binutils 2.34 for aarch64 (assemble tract-linalg's SDOT / fp16 kernels),
# CMake 3.16 (CharLS needs >= 3.13). cross mounts the Rust toolchain; none is installed here.
FROM ubuntu:20.04
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates cmake make pkg-config \
        gcc g++ libc6-dev \
        gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross \
    && rm -rf /var/lib/apt/lists/*
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
    AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
