#!/usr/bin/env bash
# The hot-product benchmark in one command: MariaDB ready, Galera's packages (galera-4, rsync)
# and wrk installed, release binaries built, then flash-sale-bench. Results:
# tests/bench-results/results.{json,md,svg} (results.md: the run's tables, with its time and
# commit; BENCH_ONLY=report renders it again from results.json).
# BENCH_ONLY=holds runs only the hold paths and the plain-SQL anchor, into results-holds.json;
# BENCH_BIN_DIR names an API and worker built elsewhere (to compare two builds).
# BENCH_SECONDS (default 8) sets the length of each measured point.
# BENCH_ONLY=galera runs only the Galera section (three nodes of the run's own on loopback: one
# API on one node, then three APIs on three nodes, same hot product) and writes
# tests/bench-results/results-galera.json instead.
# BENCH_ONLY=stream runs only the live stock section (0 to 5,000 SSE listeners on one API, over a
# MariaDB of its own) and writes tests/bench-results/results-stream.json instead.
# BENCH_ONLY=queue runs only a queued sale's opening storm, into results-queue.{json,md}.
# BENCH_ONLY=carts runs only one-product holds on the hot product alone against the same with
# 10% two-line carts that include it, into results-carts.json.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/ensure-mariadb.sh
if [ -x tests/ensure-galera.sh ]; then
  tests/ensure-galera.sh
elif [ ! -e /usr/lib/galera/libgalera_smm.so ] || ! command -v rsync >/dev/null 2>&1; then
  echo "bench: installing galera-4 and rsync with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq galera-4 rsync >/dev/null
fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk with apt-get"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked -p flash-sale-api -p flash-sale-worker -p flash-sale-tests --bins
ulimit -n 65536 2>/dev/null || true
exec target/release/flash-sale-bench "$@"
