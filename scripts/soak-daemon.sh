#!/usr/bin/env bash
# Long SIGKILL soak of the daemon: the CI test daemon::soak with more exams and kills, several
# seeds, the real demo model. Usage: scripts/soak-daemon.sh [EXAMS] [KILLS] [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/mammo-edge/target}"
exams="${1:-25}"; kills="${2:-40}"; shift 2 || true
seeds=("${@:-1 2 3}")
export MAMMO_TEST_MODEL="${MAMMO_TEST_MODEL:-$PWD/models/mammo-mtl-demo.int8.onnx}"
for seed in ${seeds[@]}; do
  MAMMO_SOAK_EXAMS="$exams" MAMMO_SOAK_KILLS="$kills" MAMMO_SOAK_SEED="$seed" \
    cargo test --release --quiet --test it daemon::soak -- --nocapture 2>&1 | grep -E '^soak:|test result|panicked'
done
