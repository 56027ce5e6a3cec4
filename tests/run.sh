#!/usr/bin/env bash
# The whole test suite: unit tests, and the end-to-end suites that start the real binaries
# against MariaDB and SQLite, and against Galera clusters of their own. Made ready first: the
# shared MariaDB (tests/ensure-mariadb.sh), Galera's packages (tests/ensure-galera.sh), Debian's
# Chromium, for the Swagger UI test (tests/ensure-chromium.sh), and Debian's Prometheus, for the
# alert rules' test (tests/ensure-prometheus.sh). The generated-client check
# (tests/clients/check.sh) installs its pinned npm and PyPI packages itself.
#
# Every phase runs even when an earlier one failed, each one's result is listed at the end, and
# the exit status is non-zero if any failed. Tests that stop, kill or isolate a database start
# servers of their own (tests/src/servers.rs), so every test runs in the parallel run; the Galera
# suite (three nodes per test) runs as a phase of its own with fewer tests at once.
# Arguments are passed on to both test phases.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

results=()
failed=0
phase() {
  local name=$1 start=$SECONDS
  shift
  echo "==> $name"
  if "$@"; then
    results+=("ok    $name ($((SECONDS - start)) s)")
  else
    results+=("FAIL  $name ($((SECONDS - start)) s)")
    failed=1
  fi
}

phase "ensure MariaDB" tests/ensure-mariadb.sh
phase "ensure Galera" tests/ensure-galera.sh
phase "ensure Chromium" tests/ensure-chromium.sh
phase "ensure Prometheus" tests/ensure-prometheus.sh
# The end-to-end suites start target/debug/flash-sale-{api,worker}: build them first.
phase "build binaries" cargo build --workspace --bins --locked
# The API and worker images, built from deploy/Dockerfile with podman and run against a MariaDB
# of their own (deploy/images/README.md).
phase "images" deploy/images/test.sh
# The OpenAPI document linted, and TypeScript and Python clients generated from it and run.
phase "generated clients" tests/clients/check.sh
if cargo nextest --version >/dev/null 2>&1; then
  phase "tests" cargo nextest run --workspace --locked --no-fail-fast \
    --test-threads "${TEST_THREADS:-4}" -E 'not test(/^galera::/)' "$@"
  phase "Galera tests" cargo nextest run -p flash-sale-tests --test api --locked --no-fail-fast \
    --test-threads "${GALERA_TEST_THREADS:-2}" -E 'test(/^galera::/)' "$@"
else
  phase "tests" cargo test --workspace --locked --no-fail-fast "$@" -- \
    --test-threads "${TEST_THREADS:-4}" --skip galera::
  phase "Galera tests" cargo test -p flash-sale-tests --test api --locked --no-fail-fast "$@" -- \
    --test-threads "${GALERA_TEST_THREADS:-2}" galera::
fi

echo
echo "==> summary"
printf '%s\n' "${results[@]}"
exit "$failed"
