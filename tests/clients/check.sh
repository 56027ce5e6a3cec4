#!/usr/bin/env bash
# Generated clients, made the way a frontend team makes them, against a live API:
# 1. Redocly CLI lints the live /openapi.json with its recommended rules: 0 errors.
# 2. TypeScript: openapi-typescript generates types from the live document; the typed flow
#    (src/flow.ts: admin creates a product, buyer reads, holds, orders, gateway pays, a 409
#    branched on `code`) passes `tsc --strict --noEmit`, then runs against the API; and
#    src/must-not-compile.ts fails to compile on exactly its MUST-FAIL lines.
# 3. Python: openapi-python-client generates a client with no warning; flow.py passes
#    `mypy --strict`, then runs against the API.
# Everything is pinned (ts/package-lock.json, python/requirements.txt) and installed here.
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
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
api_url="http://127.0.0.1:$port"
token=clients-admin
DATABASE_URL="sqlite://$work/clients.db?mode=rwc" BIND_ADDR="127.0.0.1:$port" ADMIN_TOKEN=$token \
  LOG_DIR="$work/logs" RUST_LOG=warn target/debug/flash-sale-api >"$work/api.log" 2>&1 &
api=$!
trap 'kill $api 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -fsS "$api_url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$api_url/openapi.json" -o "$work/openapi.json"

echo "--- Redocly lint (recommended rules) of the live document"
(cd "$ts" && npx redocly lint "$work/openapi.json" --extends=recommended --format=stylish)

echo "--- TypeScript: generate, type-check, run"
(cd "$ts" && npx openapi-typescript "$api_url/openapi.json" -o src/generated/api.d.ts)
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
echo "must-not-compile.ts refused on lines $(tr '\n' ' ' <<<"$expected")(misspelled status, misspelled code, admin call without token)"
(cd "$ts" && rm -rf dist && npx tsc -p tsconfig.json --noEmit false --outDir dist)
API_URL=$api_url ADMIN_TOKEN=$token node "$ts/dist/flow.js"

echo "--- Python: generate (no warnings), mypy --strict, run"
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
PYTHONPATH="$work/py" "$venv/bin/mypy" --strict --cache-dir "$work/mypy-cache" "$py/flow.py"
API_URL=$api_url ADMIN_TOKEN=$token PYTHONPATH="$work/py" "$venv/bin/python" "$py/flow.py"
echo "--- generated clients: ok"
