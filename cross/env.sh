# shellcheck shell=bash
# shellcheck disable=SC2034  # variables for the scripts that source this file
# cross/env.sh: settings shared by the cross/ scripts (sourced, not run): pinned tool versions,
# where the tools and the build cache live, the two appliance targets and their binaries.

# Pinned tools. zig comes from the `ziglang` PyPI wheel, cargo-zigbuild and cargo-deb from crates.io.
CROSS_ZIG_VERSION=0.14.1
CROSS_ZIGBUILD_VERSION=0.24.1
CROSS_CARGO_DEB_VERSION=3.8.0

# Highest glibc the binaries may require: Ubuntu 20.04 / JetPack 5. And, should C++ code ever be
# linked against libstdc++ instead of zig's static libc++, Ubuntu 20.04's libstdc++ (GCC 10).
GLIBC_MAX=2.31
GLIBCXX_MAX=3.4.28
CXXABI_MAX=1.3.12

# Tools live outside the clone so that CI runs on this machine reuse them.
CROSS_TOOLS="${MAMMO_CROSS_TOOLS:-/var/cache/mammo-edge/tools}"
export PATH="$CROSS_TOOLS/bin:$CROSS_TOOLS/ziglang-$CROSS_ZIG_VERSION/ziglang:$PATH"
# Own build cache (the zig-linked artifacts do not mix with the host debug build of .ci/run).
export CARGO_TARGET_DIR="${MAMMO_CROSS_TARGET_DIR:-/var/cache/mammo-edge/target-cross}"
export CARGO_TERM_COLOR=never

A64=aarch64-unknown-linux-gnu
X64=x86_64-unknown-linux-gnu
A64_BIN="$CARGO_TARGET_DIR/$A64/release/mammo-edge"
X64_BIN="$CARGO_TARGET_DIR/$X64/release/mammo-edge"
# Debian's libc6-arm64-cross: the aarch64 loader and libc that qemu-aarch64 runs the binary with.
A64_SYSROOT=/usr/aarch64-linux-gnu
# Emulated CPU: Cortex-A76 has what the Jetson Orin's Cortex-A78AE has for tract (ASIMD,
# FEAT_DotProd = SDOT, FEAT_FP16) and, like it, no SVE.
QEMU_CPU="${MAMMO_QEMU_CPU:-cortex-a76}"
qemu_a64() { qemu-aarch64 -cpu "$QEMU_CPU" -L "$A64_SYSROOT" "$@"; }

# Appliance builds never include optional (demo) features such as the embedded broker.
CARGO_FEATURE_ARGS=(--no-default-features)

# Seconds since $1 (a `date +%s` value).
since() { echo $(($(date +%s) - $1)); }
