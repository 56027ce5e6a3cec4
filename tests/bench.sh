#!/usr/bin/env bash
# The hot-product benchmark in one command: MariaDB ready, wrk installed, release binaries
# built, then flash-sale-bench. Results: tests/bench-results/results.{json,svg}.
# BENCH_SECONDS (default 8) sets the length of each measured point.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/ensure-mariadb.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked -p flash-sale-api -p flash-sale-worker -p flash-sale-tests --bins
ulimit -n 65536 2>/dev/null || true
exec target/release/flash-sale-bench "$@"
