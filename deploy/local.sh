#!/usr/bin/env bash
# Starts the API and the worker on the embedded SQLite default (./flash_sale.db), with the demo
# product, for trying the service on a laptop: http://127.0.0.1:8000/docs. Ctrl-C stops both.
# Both listen on 127.0.0.1 only (BIND_ADDR, WORKER_ADDR), whatever the environment says.
#
# What a laptop needs and a server must not have, made here unless you set it yourself (in the
# environment or in ./.env):
#   ADMIN_TOKEN     bearer token of the admin routes: when unset, a random one (48 hex
#                   characters) for this run, printed below. To keep one across runs:
#                     export ADMIN_TOKEN=$(openssl rand -hex 24)
#   WEBHOOK_SECRET  when unset, payment webhooks are accepted UNSIGNED
#                   (WEBHOOK_ALLOW_UNSIGNED=true): anyone who can reach the API could then pay or
#                   cancel any order, which is why this is for a laptop only and why the API
#                   listens on 127.0.0.1. To require signatures as a real gateway sends them:
#                     WEBHOOK_SECRET="whsec_$(openssl rand -base64 32)" deploy/local.sh
#                   (docs/payment-gateway.md signs a webhook by hand).
#
# For a frontend dev server on another port, its origin must be allowed (CORS): the usual dev
# servers' are by default; set CORS_ALLOWED_ORIGINS to change that, e.g.
#   CORS_ALLOWED_ORIGINS=http://localhost:4200 deploy/local.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# $1 random bytes as hex: openssl when there is one, else the kernel's generator.
random_hex() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex "$1"
  else
    od -An -v -tx1 -N"$1" /dev/urandom | tr -d ' \n'
  fi
}

export CORS_ALLOWED_ORIGINS="${CORS_ALLOWED_ORIGINS-http://localhost:5173,http://127.0.0.1:5173,http://localhost:3000,http://127.0.0.1:3000,http://localhost:8080,http://127.0.0.1:8080}"
export BIND_ADDR=127.0.0.1:8000 WORKER_ADDR=127.0.0.1:9101

# Whether ./.env (which both binaries read, under the environment) sets $1.
in_dotenv() { [ -f .env ] && grep -Eq "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=[[:space:]]*[^[:space:]#]" .env; }

if [ -n "${ADMIN_TOKEN:-}" ]; then
  export ADMIN_TOKEN
  admin_shown="$ADMIN_TOKEN (yours, from ADMIN_TOKEN)"
elif in_dotenv ADMIN_TOKEN; then
  unset ADMIN_TOKEN
  admin_shown="the one in .env"
else
  export ADMIN_TOKEN
  ADMIN_TOKEN=$(random_hex 24)
  admin_shown="$ADMIN_TOKEN (generated for this run; set ADMIN_TOKEN to keep one)"
fi

if [ -n "${WEBHOOK_SECRET:-}" ] || in_dotenv WEBHOOK_SECRET; then
  # A secret was given (here or in .env): every webhook must be signed with it, never unsigned.
  if [ -n "${WEBHOOK_SECRET:-}" ]; then export WEBHOOK_SECRET; else unset WEBHOOK_SECRET; fi
  export WEBHOOK_ALLOW_UNSIGNED=false
else
  unset WEBHOOK_SECRET
  export WEBHOOK_ALLOW_UNSIGNED=true
fi

# Cargo shows its progress: the first build takes several minutes, later ones seconds.
echo "building (the first build takes a few minutes)..."
cargo build --workspace --bins
target/debug/flash-sale-api migrate --seed >/dev/null

target/debug/flash-sale-worker &
worker=$!
trap 'kill $worker 2>/dev/null; wait $worker 2>/dev/null' EXIT INT TERM
echo "API on http://127.0.0.1:8000 (Swagger UI: /docs), worker health on http://127.0.0.1:9101/healthz"
echo "  both on 127.0.0.1 only; browsers allowed from: ${CORS_ALLOWED_ORIGINS:-none}"
echo "admin token: $admin_shown"
echo "  (header 'Authorization: Bearer <token>'; in Swagger UI: Authorize)"
if [ "$WEBHOOK_ALLOW_UNSIGNED" = true ]; then
  cat <<EOF
payment webhooks: UNSIGNED ones are accepted (WEBHOOK_ALLOW_UNSIGNED=true), because WEBHOOK_SECRET
  is not set. For a laptop only: anyone who can reach the API can pay or cancel any order with
  them, so it listens on 127.0.0.1 alone. To require signed webhooks, as in production:
    WEBHOOK_SECRET="whsec_\$(openssl rand -base64 32)" deploy/local.sh
  and sign as docs/payment-gateway.md shows.
EOF
else
  echo "payment webhooks: signed ones only, with WEBHOOK_SECRET (docs/payment-gateway.md)"
fi
target/debug/flash-sale-api
