#!/usr/bin/env bash
# Generated clients, made the way a frontend team makes them, against a live API and a worker
# (whose admission runs, every second, let queued buyers in), once for each way buyers are known
# (BUYER_AUTH=none, then jwt):
# 1. Redocly CLI lints the live /openapi.json with its recommended rules: 0 errors.
# 2. TypeScript: openapi-typescript generates types from the live document, and the paths each
#    security scheme guards are read from its `security` (src/generated/security.ts), so that a
#    guarded route is reachable only through the client carrying its credential (src/api.ts).
#    The typed flow (none: src/flow.ts, admin creates a product, an anonymous buyer holds, reads
#    and orders with the hold's client_secret, the gateway pays; jwt: src/flow-token.ts, a
#    signed-in buyer does the same with its token) passes `tsc --strict --noEmit`, then runs
#    against the API; src/must-not-compile.ts fails to compile on exactly its MUST-FAIL lines.
#    Each flow then runs the fair queue of a product with `queue` admission: buyers join (201,
#    joining again 200 with the same ticket), a hold without an admitted ticket is 403
#    `admission_required`, the ticket is polled (its client_secret, or the token) until the worker
#    admits it, a stranger reading it gets 404, a second buyer leaves (200, `left`); with jwt the
#    admitted buyer holds (the ticket reads `used`), orders and pays. With none, createHold
#    declares no `Client-Secret` in the document, so the typed client cannot send the ticket's
#    secret: its hold with `ticket_id` is 403 too (see src/flow.ts).
#    With none, a cart follows: two products held together in one `lines` request, a second
#    cart refused with its failing line named in the problem's `lines`, the cart extended
#    (`extendHold`), ordered as one order with both lines, and paid for its exact total.
# 3. Python: openapi-python-client generates a client with no warning; flow.py (none) and
#    flow_token.py (jwt) pass `mypy --strict`, then run against the API, queue included (with
#    none, create_hold takes any AuthenticatedClient, so the ticket's secret is sent as for the
#    ticket's reads and the admitted buyer holds, orders and pays).
# The webhooks of these flows are unsigned (WEBHOOK_ALLOW_UNSIGNED=true): they stand in for the
# gateway, whose signing the end-to-end suites check. Everything is pinned (ts/package-lock.json,
# python/requirements.txt) and installed here.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
ts=tests/clients/ts
py=tests/clients/python

[ -x target/debug/flash-sale-api ] || cargo build --workspace --bins --locked

echo "--- installing the pinned tools"
(cd "$ts" && npm ci --no-audit --no-fund --loglevel=error)
venv=target/clients-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$py/requirements.txt"

work=$(mktemp -d)
token=clients-admin-token-of-32-characters
jwt_secret=clients-buyer-token-key-of-at-least-32-bytes
api=
worker=
trap 'kill $api $worker 2>/dev/null; rm -rf "$work"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts the API in buyer mode $1 on a fresh SQLite file, then a worker on the same file (the
# queues' admissions); sets api_url.
start_api() {
  local mode=$1 port worker_port db
  for pid in $worker $api; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
  port=$(free_port)
  api_url="http://127.0.0.1:$port"
  db="sqlite://$work/clients-$mode.db?mode=rwc"
  local env=(DATABASE_URL="$db" BIND_ADDR="127.0.0.1:$port"
    ADMIN_TOKEN=$token WEBHOOK_ALLOW_UNSIGNED=true LOG_DIR="$work/logs" RUST_LOG=warn BUYER_AUTH=$mode)
  [ "$mode" = jwt ] && env+=(BUYER_JWT_SECRET=$jwt_secret)
  env "${env[@]}" target/debug/flash-sale-api >"$work/api-$mode.log" 2>&1 &
  api=$!
  for _ in $(seq 1 100); do curl -fsS "$api_url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$api_url/openapi.json" -o "$work/openapi.json"
  # After the API's start, which has migrated the database.
  worker_port=$(free_port)
  env DATABASE_URL="$db" WORKER_ADDR="127.0.0.1:$worker_port" LOG_DIR="$work/logs" RUST_LOG=warn \
    target/debug/flash-sale-worker >"$work/worker-$mode.log" 2>&1 &
  worker=$!
  local health="http://127.0.0.1:$worker_port/healthz"
  for _ in $(seq 1 100); do curl -fsS "$health" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "$health" >/dev/null || { cat "$work/worker-$mode.log" >&2; exit 1; }
}

# The TypeScript types of the live document: openapi-typescript's, and the paths of each
# security scheme (a scheme this server does not use guards no path: `never`).
generate_ts() {
  (cd "$ts" && npx openapi-typescript "$api_url/openapi.json" -o src/generated/api.d.ts)
  python3 - "$work/openapi.json" "$ts/src/generated/security.ts" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
guarded = {"AdminToken": set(), "BuyerToken": set(), "ClientSecret": set()}
for path, item in doc["paths"].items():
    for op in item.values():
        for requirement in op.get("security", []):
            for scheme in requirement:
                guarded[scheme].add(path)
lines = ["// Generated by tests/clients/check.sh from the live document's `security`."]
for scheme, paths in guarded.items():
    union = " | ".join(json.dumps(p) for p in sorted(paths)) or "never"
    lines.append(f"export type {scheme}Path = {union};")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
}

generate_py() {
  rm -rf "$work/py"
  # The generator formats its output with ruff, found on PATH.
  (cd "$work" && PATH="$root/$venv/bin:$PATH" "$root/$venv/bin/openapi-python-client" generate \
    --url "$api_url/openapi.json" --meta none --output-path "$work/py/flash_sale_client") >"$work/gen.txt" 2>&1 \
    || { cat "$work/gen.txt" >&2; exit 1; }
  if grep -qi 'warning' "$work/gen.txt"; then
    echo "openapi-python-client warned:" >&2
    cat "$work/gen.txt" >&2
    exit 1
  fi
  # Used as a team uses a generated client: an installed, typed package (py.typed, which the
  # generator adds only with packaging metadata), so --strict judges the flow against its types.
  touch "$work/py/flash_sale_client/py.typed"
}

echo "=== BUYER_AUTH=none"
start_api none

echo "--- Redocly lint (recommended rules) of the live document"
(cd "$ts" && npx redocly lint "$work/openapi.json" --extends=recommended --format=stylish)

echo "--- TypeScript: generate, type-check, run"
generate_ts
(cd "$ts" && npx tsc --strict --noEmit -p tsconfig.json)
# The mistakes file must fail, on its marked lines and nowhere else.
expected=$(grep -n '// MUST-FAIL$' "$ts/src/must-not-compile.ts" | cut -d: -f1 | sort -u)
if (cd "$ts" && npx tsc --strict --noEmit -p tsconfig.must-not-compile.json) >"$work/tsc-bad.txt" 2>&1; then
  echo "src/must-not-compile.ts compiled, but must not" >&2
  exit 1
fi
got=$(sed -n 's/^src\/must-not-compile\.ts(\([0-9]*\),.*/\1/p' "$work/tsc-bad.txt" | sort -u)
if [ "$got" != "$expected" ] || grep -v '^src/must-not-compile\.ts(' "$work/tsc-bad.txt" | grep -q 'error TS'; then
  echo "src/must-not-compile.ts failed on lines [$got], expected exactly [$expected]:" >&2
  cat "$work/tsc-bad.txt" >&2
  exit 1
fi
echo "must-not-compile.ts refused on lines $(tr '\n' ' ' <<<"$expected")(misspelled status and ticket state, a hold without its secret, a hold's client making holds, misspelled code, admin call without token)"
(cd "$ts" && rm -rf dist && npx tsc -p tsconfig.json --noEmit false --outDir dist)
API_URL=$api_url ADMIN_TOKEN=$token node "$ts/dist/flow.js"

echo "--- Python: generate (no warnings), mypy --strict, run"
generate_py
PYTHONPATH="$work/py" "$venv/bin/mypy" --strict --cache-dir "$work/mypy-cache" "$py/flow.py"
API_URL=$api_url ADMIN_TOKEN=$token PYTHONPATH="$work/py" "$venv/bin/python" "$py/flow.py"

echo "=== BUYER_AUTH=jwt"
start_api jwt
(cd "$ts" && npx redocly lint "$work/openapi.json" --extends=recommended --format=stylish)
generate_ts
(cd "$ts" && rm -rf dist && npx tsc --strict -p tsconfig.token.json --noEmit false --outDir dist)
API_URL=$api_url ADMIN_TOKEN=$token BUYER_JWT_SECRET=$jwt_secret node "$ts/dist/flow-token.js"
generate_py
PYTHONPATH="$work/py" "$venv/bin/mypy" --strict --cache-dir "$work/mypy-cache" "$py/flow_token.py"
API_URL=$api_url ADMIN_TOKEN=$token BUYER_JWT_SECRET=$jwt_secret PYTHONPATH="$work/py" \
  "$venv/bin/python" "$py/flow_token.py"
echo "--- generated clients: ok"
