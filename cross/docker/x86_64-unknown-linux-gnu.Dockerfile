# cross-rs build image for x86_64-unknown-linux-gnu (Cross.toml): Ubuntu 20.04, hence glibc 2.31,
# for the amd64 .deb. cross mounts the Rust toolchain; none is installed here.
FROM ubuntu:20.04
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates cmake make pkg-config gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*
