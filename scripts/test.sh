#!/usr/bin/env bash
# The README's test command: install what the tests need (scripts/test-deps.sh), then run them
# all. The real data folder comes from MAMMO_TEST_DATA (default ../shared/data); tests that need
# it fail with a message naming it when it is absent.
#   scripts/test.sh [cargo test arguments, e.g. a test name]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
export MAMMO_TEST_DATA="${MAMMO_TEST_DATA:-$(cd .. && pwd)/shared/data}"
exec cargo test --features libtorch "$@"
