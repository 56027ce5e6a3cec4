#!/usr/bin/env bash
# Starts the API and the worker on the embedded SQLite default (./flash_sale.db), with the demo
# product, for trying the service on a laptop: http://127.0.0.1:8000/docs. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --quiet
target/debug/flash-sale-api migrate --seed >/dev/null
target/debug/flash-sale-worker &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM
echo "API on http://127.0.0.1:8000 (Swagger UI: /docs), worker health on http://127.0.0.1:9101/healthz"
target/debug/flash-sale-api
