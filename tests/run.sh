#!/usr/bin/env bash
# The whole test suite: unit tests, and the end-to-end suites that start the real binaries
# against MariaDB and SQLite. A MariaDB (tests/ensure-mariadb.sh) and Debian's Chromium, for the
# Swagger UI test (tests/ensure-chromium.sh), are made ready first.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/ensure-mariadb.sh
tests/ensure-chromium.sh
# The end-to-end suites start target/debug/flash-sale-{api,worker}: build them first.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  # Tests that stop the shared MariaDB run alone, before everything else.
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 1 --run-ignored only "$@"
  tests/ensure-mariadb.sh >/dev/null # a restarted server lost its raised max_connections
  cargo nextest run --workspace --locked --no-fail-fast --test-threads "${TEST_THREADS:-4}" "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads 1 --ignored
  tests/ensure-mariadb.sh >/dev/null
  cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads "${TEST_THREADS:-4}"
fi
