#!/usr/bin/env bash
# Starts the API and the worker on the embedded SQLite default (./flash_sale.db), with the demo
# product, for trying the service on a laptop: http://127.0.0.1:8000/docs. Ctrl-C stops both.
#
# For a frontend dev server on another port, its origin must be allowed (CORS): the usual dev
# servers' are by default; set CORS_ALLOWED_ORIGINS to change that, e.g.
#   CORS_ALLOWED_ORIGINS=http://localhost:4200 deploy/local.sh
# The admin routes take the bearer token ADMIN_TOKEN (default below).
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo shows its progress: the first build takes several minutes, later ones seconds.
echo "building (the first build takes a few minutes)..."
cargo build --workspace --bins
target/debug/flash-sale-api migrate --seed >/dev/null

export CORS_ALLOWED_ORIGINS="${CORS_ALLOWED_ORIGINS-http://localhost:5173,http://127.0.0.1:5173,http://localhost:3000,http://127.0.0.1:3000,http://localhost:8080,http://127.0.0.1:8080}"
export ADMIN_TOKEN="${ADMIN_TOKEN:-local-admin}"

target/debug/flash-sale-worker &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM
echo "API on http://127.0.0.1:8000 (Swagger UI: /docs), worker health on http://127.0.0.1:9101/healthz"
echo "admin token: $ADMIN_TOKEN (Swagger UI: Authorize); browsers allowed from: ${CORS_ALLOWED_ORIGINS:-none}"
target/debug/flash-sale-api
