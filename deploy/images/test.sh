#!/usr/bin/env bash
# The container images, built and run: deploy/Dockerfile's `api` and `worker` targets, built by
# podman from binaries built here (no registry is reachable: the base image comes from
# deploy/images/base.sh), run against a MariaDB of this test's own.
#
#   deploy/images/test.sh            # the debug binaries, target/debug/flash-sale-{api,worker}
#   IMAGE_BINARIES_DIR=target/release deploy/images/test.sh
#
# Checks, in order:
#   - the images run as uid 10001 (the image's user and `id -u` inside), with no build tools;
#   - the API container migrates its empty database and answers /readyz, also to curl inside it
#     (the HEALTHCHECK's command);
#   - through the API container: a product (admin API), a hold, its order, paid by a signed
#     webhook;
#   - the worker container (a sweep every second) expires a hold of 2 s: its stock comes back and
#     the worker's /metrics counts it (holds_expired_total{by="worker"}), so the worker did it;
#   - `podman stop --time 15` stops both with exit code 0: they drain on SIGTERM, no SIGKILL.
#
# Everything is its own: podman configuration, locks, container databases, runtime state and
# containers in a temporary directory, the image storage under IMAGES_CACHE (default
# target/images: the base image and the layer cache, kept between runs), so no other podman
# state is touched; a mariadbd on a free port with its datadir, socket and pidfile in that
# directory, stopped by its pidfile. Containers, server and directory go at the end, also on
# failure or Ctrl-C.
#
# Needs root (rootful podman, debootstrap, mariadbd runs as user mysql), Debian's podman, runc
# and debootstrap (installed with apt-get when missing), mariadb-server (tests/ensure-mariadb.sh
# installs it), curl and python3.
# Why podman with runc, host networking and lowered ulimits: deploy/images/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache=$(realpath -m "${IMAGES_CACHE:-target/images}")
# overlay cannot stack on overlayfs (a CI runner that is itself a container): vfs there.
mkdir -p "$cache"
driver=overlay
[ "$(findmnt -no FSTYPE -T "$cache" 2>/dev/null)" = overlay ] && driver=vfs
bins=${IMAGE_BINARIES_DIR:-target/debug}
api_image=localhost/flash-sale-api:images-test
worker_image=localhost/flash-sale-worker:images-test
started=$SECONDS

say() { echo "images/test: $*"; }
fail() { echo "images/test: FAIL: $*" >&2; exit 1; }
passed=()
ok() { passed+=("$*"); say "ok: $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (rootful podman, debootstrap, mariadbd as user mysql)"
# Debian's podman, runc and debootstrap when missing (as tests/ensure-mariadb.sh does for
# mariadb-server, which it is left to).
missing=()
for pkg in podman runc debootstrap; do command -v "$pkg" >/dev/null || missing+=("$pkg"); done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for tool in podman runc debootstrap curl python3 /usr/sbin/mariadbd mariadb-install-db mariadb-admin mariadb; do
  command -v "$tool" >/dev/null || fail "$tool not found (mariadb-server: tests/ensure-mariadb.sh installs it)"
done
for b in flash-sale-api flash-sale-worker; do
  [ -x "$bins/$b" ] || fail "$bins/$b not found: build it first (cargo build --bins), or set IMAGE_BINARIES_DIR"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/flash-sale-images.XXXXXX")
chmod 755 "$work" # user mysql traverses it to its datadir
mkdir -p "$cache/storage" "$work/bin" "$work/mariadb" "$work/ports"

# --- podman, all of its own -----------------------------------------------------------------
# Two podman set-ups, each with its own configuration files (with CONTAINERS_CONF and
# CONTAINERS_STORAGE_CONF set, no other containers.conf or storage.conf is read): file locks
# (not the machine's shared-memory lock table), its own container database, events and
# runtime state in $work:
# - images: the image storage under the cache, kept between runs (the base image and the
#   build's layer cache); base.sh imports and podman build builds there. No container runs in
#   it, so its container database can be a fresh one in $work each run.
# - containers: a storage in $work, which reads the images from the cache's storage
#   (additionalimagestores, read-only). Its database is <graphroot>/libpod: conmon starts
#   `podman --root <graphroot> container cleanup` when a container exits, and with --root podman
#   takes the database from there whatever containers.conf says; conmon passes these
#   configuration files on to it (conmon_env_vars), so it uses the same locks and storage.
# Neither is ever named with --root: podman then drops storage.conf's options and puts its
# database in <root>/libpod, which would insist on the first run's runroot forever after.
podman_conf() { # DIR GRAPHROOT DATABASE [ADDITIONAL_IMAGE_STORE]
  local dir=$1 graphroot=$2 database=$3 store=${4:-}
  mkdir -p "$dir"
  cat >"$dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dir/events.log"
lock_type = "file"
tmp_dir = "$dir/tmp"
static_dir = "$database"
volume_path = "$dir/volumes"
conmon_env_vars = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF=$dir/containers.conf", "CONTAINERS_STORAGE_CONF=$dir/storage.conf", "CONTAINERS_REGISTRIES_CONF=$work/registries.conf"]
EOF
  cat >"$dir/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$graphroot"
runroot = "$dir/run"
EOF
  if [ -n "$store" ]; then
    printf '[storage.options]\nadditionalimagestores = ["%s"]\n' "$store" >>"$dir/storage.conf"
  fi
}
# No registry: nothing is ever pulled.
echo 'unqualified-search-registries = []' >"$work/registries.conf"
export CONTAINERS_REGISTRIES_CONF=$work/registries.conf
podman_conf "$work/images" "$cache/storage" "$work/images/db"
podman_conf "$work/containers" "$work/containers/storage" "$work/containers/storage/libpod" "$cache/storage"
images_env=(CONTAINERS_CONF="$work/images/containers.conf" CONTAINERS_STORAGE_CONF="$work/images/storage.conf")
containers_env=(CONTAINERS_CONF="$work/containers/containers.conf" CONTAINERS_STORAGE_CONF="$work/containers/storage.conf")
# runc: crun refuses this kind of machine's hybrid cgroups. No systemd: cgroupfs, events in a file.
podman_global=(--runtime runc --cgroup-manager cgroupfs --events-backend file)
pm_images() { env "${images_env[@]}" podman "${podman_global[@]}" "$@"; }
pm() { env "${containers_env[@]}" podman "${podman_global[@]}" "$@"; }
# Host network: no network set-up in a sandbox. ulimits below podman's defaults (1048576 open
# files), which a sandbox may refuse.
run_opts=(--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --pull=never)

api_ctr=flash-images-api
worker_ctr=flash-images-worker
db=$work/mariadb
db_pid=
stop_mariadb() {
  [ -n "$db_pid" ] || return 0
  local pid
  # The pid in this server's own pidfile, which is the child started here (mariadbd does not
  # fork); without a pidfile yet, that child. Never a process found by its name.
  pid=$(cat "$db/mysqld.pid" 2>/dev/null || echo "$db_pid")
  [ "$pid" = "$db_pid" ] || { echo "images/test: $db/mysqld.pid names $pid, not $db_pid: stopping $db_pid" >&2; pid=$db_pid; }
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  wait "$db_pid" 2>/dev/null
  db_pid=
}
release_ports() { for p in "$work"/ports/*; do [ -L "$p" ] && rm -f "$(readlink "$p")"; done; }
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ]; then
    for c in "$api_ctr" "$worker_ctr"; do
      if pm container exists "$c" 2>/dev/null; then
        echo "--- podman logs $c (last 40 lines)" >&2
        pm logs --tail 40 "$c" >&2 2>&1
      fi
    done
    if [ -n "$db_pid" ] && ! kill -0 "$db_pid" 2>/dev/null; then
      echo "--- mariadbd exited; its error.log (last 20 lines)" >&2
      tail -n 20 "$db/error.log" >&2
    fi
  fi
  # Every container of this run (their storage and database are this run's alone).
  pm rm --force --all --time 0 >/dev/null 2>&1
  stop_mariadb
  release_ports
  # Images of earlier runs' binaries, now untagged; the base and the cached layers stay.
  pm_images image prune --force >/dev/null 2>&1
  # Nothing may stay mounted in $work; rm never leaves $work's own filesystem.
  findmnt -rn -o TARGET | grep -F -e "$work/" -e "$cache/storage/" | sort -r \
    | xargs -r umount -l 2>/dev/null
  rm -rf --one-file-system "$work"
  if [ "$rc" = 0 ]; then
    say "passed in $((SECONDS - started)) s:"
    printf '  ok  %s\n' "${passed[@]}"
  else
    say "FAILED after $((SECONDS - started)) s (passed before the failure: ${#passed[@]} checks)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A build killed half-way leaves its working container in the image storage: unknown to this
# run's database (`--external`), removed from storage.
for id in $(pm_images ps --all --external --quiet 2>/dev/null); do
  pm_images rm --force "$id" >/dev/null 2>&1 || true
done

# A free port below Linux's ephemeral range, claimed the way tests/src/servers.rs claims its
# ports (a file in the same folder), so a test run beside this one does not take it.
claims=${TMPDIR:-/tmp}/flash-sale-test-ports
free_port() {
  local port
  mkdir -p "$claims"
  while :; do
    port=$((20000 + RANDOM % 12000))
    python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null || continue
    if (set -o noclobber; : >"$claims/$port") 2>/dev/null; then
      ln -s "$claims/$port" "$work/ports/$port"
      echo "$port"
      return
    fi
  done
}

# --- the images ------------------------------------------------------------------------------
step=$SECONDS
env "${images_env[@]}" IMAGES_CACHE="$cache" deploy/images/base.sh "${podman_global[@]}"
ok "base image docker.io/library/debian:bookworm-slim ($((SECONDS - step)) s)"

cp "$bins/flash-sale-api" "$bins/flash-sale-worker" "$work/bin/"
for target in api worker; do
  step=$SECONDS
  image=$api_image
  [ "$target" = worker ] && image=$worker_image
  if ! pm_images build --pull=never --network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
    -f deploy/Dockerfile --target "$target" \
    --build-context binaries="$work/bin" \
    -t "$image" . >"$work/build-$target.log" 2>&1; then
    tail -n 30 "$work/build-$target.log" >&2
    fail "podman build --target $target"
  fi
  ok "built $image from deploy/Dockerfile with $bins's binaries ($((SECONDS - step)) s)"
done

for image in "$api_image" "$worker_image"; do
  user=$(pm_images image inspect --format '{{.Config.User}}' "$image")
  case "$user" in "" | 0 | 0:* | root | root:*) fail "$image runs as '${user:-root}'" ;; esac
  uid=$(pm run --rm "${run_opts[@]}" --entrypoint sh "$image" -c 'id -u')
  [ "$uid" = 10001 ] || fail "$image: id -u is $uid, not 10001"
  # shellcheck disable=SC2016 # expanded by the container's sh
  found=$(pm run --rm "${run_opts[@]}" --entrypoint sh "$image" -c \
    'for t in cc c++ gcc g++ clang cargo rustc rustup make ld as; do command -v "$t" || true; done')
  [ -z "$found" ] || fail "$image has build tools: $(echo "$found" | tr '\n' ' ')"
  size=$(pm_images image inspect --format '{{.Size}}' "$image")
  ok "$image ($((size / 1000000)) MB): user $user, id -u $uid, no cc/c++/gcc/g++/clang/cargo/rustc/rustup/make/ld/as"
done

# --- a MariaDB of the test's own ----------------------------------------------------------------
# As tests/src/servers.rs starts one: --no-defaults (the machine's /etc/mysql names the shared
# server's port, socket and datadir), user mysql, loopback only, a port of its own.
db_port=$(free_port)
db_user=flash
db_password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
step=$SECONDS
cat >"$work/users.sql" <<EOF
FLUSH PRIVILEGES;
CREATE USER '$db_user'@'127.0.0.1' IDENTIFIED BY '$db_password';
GRANT ALL PRIVILEGES ON flash_images.* TO '$db_user'@'127.0.0.1';
CREATE DATABASE flash_images;
EOF
chown mysql: "$db"
mariadb-install-db --no-defaults --user=mysql --auth-root-authentication-method=normal --skip-test-db \
  --datadir="$db/data" --extra-file="$work/users.sql" >"$work/install-db.log" 2>&1 \
  || { cat "$work/install-db.log" >&2; fail "mariadb-install-db"; }
/usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db/data" --port="$db_port" \
  --bind-address=127.0.0.1 --socket="$db/mysqld.sock" --pid-file="$db/mysqld.pid" \
  --log-error="$db/error.log" --skip-log-bin --innodb-buffer-pool-size=64M \
  --innodb-log-file-size=16M </dev/null >"$db/console.log" 2>&1 &
db_pid=$!
for _ in $(seq 1 300); do
  mariadb-admin --no-defaults --socket="$db/mysqld.sock" --user=root ping >/dev/null 2>&1 && break
  kill -0 "$db_pid" 2>/dev/null || fail "mariadbd exited: $(tail -n 5 "$db/error.log" 2>/dev/null)"
  sleep 0.2
done
mariadb-admin --no-defaults --socket="$db/mysqld.sock" --user=root ping >/dev/null 2>&1 \
  || fail "mariadbd did not answer in 60 s"
ok "MariaDB of its own on 127.0.0.1:$db_port ($((SECONDS - step)) s)"

# --- HTTP helpers -------------------------------------------------------------------------------
# http METHOD URL [curl options...]: sets $status and $body.
http() {
  local method=$1 url=$2
  shift 2
  if status=$(curl -sS -o "$work/body" -w '%{http_code}' --max-time 10 -X "$method" "$url" "$@" 2>"$work/curl.err"); then
    body=$(cat "$work/body")
  else
    status=000 body=$(cat "$work/curl.err")
  fi
}
# json FIELD: that member of $body (a number or string), or empty.
json() {
  python3 -c 'import json, sys
v = json.loads(sys.argv[1]).get(sys.argv[2])
print("" if v is None else v)' "$body" "$1" 2>/dev/null || true
}
expect() { [ "$status" = "$1" ] || fail "$2: expected $1, got $status: $body"; }
# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within $limit s"
    sleep 0.2
  done
}
running() { [ "$(pm inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || fail "container $1 exited"; }
ready() { running "$1" && http GET "$2/readyz" && [ "$status" = 200 ]; }

# --- the API container ----------------------------------------------------------------------------
api_port=$(free_port)
api=http://127.0.0.1:$api_port
admin_token=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
webhook_secret="whsec_$(head -c 32 /dev/urandom | base64)"
step=$SECONDS
# AUTO_MIGRATE (default true): the API makes its schema at start. A hold lasts 2 s (the worker's
# part below); the first hold becomes an order at once.
pm run -d --name "$api_ctr" "${run_opts[@]}" \
  -e DATABASE_URL="mysql://${db_user}:${db_password}@127.0.0.1:${db_port}/flash_images" \
  -e DATABASE_MAX_CONNECTIONS=4 \
  -e BIND_ADDR="127.0.0.1:$api_port" \
  -e ADMIN_TOKEN="$admin_token" \
  -e WEBHOOK_SECRET="$webhook_secret" \
  -e HOLD_TTL_SECONDS=2 \
  "$api_image" >/dev/null
wait_until 60 "the API container's /readyz 200" ready "$api_ctr" "$api"
ok "API container: migrated, /readyz 200 on 127.0.0.1:$api_port ($((SECONDS - step)) s)"
# The HEALTHCHECK's tool, inside (podman keeps no HEALTHCHECK in OCI images: run by hand here).
pm exec "$api_ctr" curl -fsS -o /dev/null "http://127.0.0.1:$api_port/readyz" \
  || fail "curl inside the API container does not reach /readyz"
ok "curl inside the API container (the HEALTHCHECK's command) gets /readyz"

http POST "$api/api/admin/products" -H "Authorization: Bearer $admin_token" \
  -H 'Content-Type: application/json' -d '{"name":"Images test","price":"12.50","stock":5}'
expect 201 "POST /api/admin/products"
product=$(json id)

http POST "$api/api/holds" -H 'Content-Type: application/json' -d "{\"product_id\":$product,\"qty\":2}"
expect 201 "POST /api/holds"
hold=$(json hold_id)
secret=$(json client_secret)
http POST "$api/api/orders" -H 'Content-Type: application/json' -H "Client-Secret: $secret" \
  -d "{\"hold_id\":$hold}"
expect 201 "POST /api/orders"
order=$(json order_id)
[ "$(json total_price)" = 25.00 ] || fail "order $order: total_price $(json total_price), not 25.00"
ok "through the API container: product $product, hold $hold (201), order $order (201, 25.00)"

# The gateway's webhook, signed the Standard Webhooks way (docs/payment-gateway.md): HMAC-SHA256
# over "{id}.{timestamp}.{body}", keyed with the bytes the secret's base64 decodes to.
pay="{\"idempotency_key\":\"images-pay-$order\",\"order_id\":$order,\"status\":\"success\",\"amount\":\"25.00\"}"
msg_id=msg_images_$order
ts=$(date +%s)
sig=$(WEBHOOK_SECRET=$webhook_secret python3 -c 'import base64, hashlib, hmac, os, sys
key = base64.b64decode(os.environ["WEBHOOK_SECRET"].removeprefix("whsec_"))
print(base64.b64encode(hmac.new(key, sys.argv[1].encode(), hashlib.sha256).digest()).decode())' \
  "$msg_id.$ts.$pay")
http POST "$api/api/payments/webhook" -H 'Content-Type: application/json' \
  -H "webhook-id: $msg_id" -H "webhook-timestamp: $ts" -H "webhook-signature: v1,$sig" \
  --data-binary "$pay"
expect 200 "POST /api/payments/webhook"
[ "$(json order_status)" = paid ] || fail "webhook: order_status $(json order_status): $body"
http GET "$api/api/orders/$order" -H "Client-Secret: $secret"
expect 200 "GET /api/orders/$order"
[ "$(json status)" = paid ] || fail "order $order is $(json status), not paid"
ok "signed webhook: order $order paid"

# --- the worker container -------------------------------------------------------------------------
worker_port=$(free_port)
worker=http://127.0.0.1:$worker_port
step=$SECONDS
pm run -d --name "$worker_ctr" "${run_opts[@]}" \
  -e DATABASE_URL="mysql://${db_user}:${db_password}@127.0.0.1:${db_port}/flash_images" \
  -e DATABASE_MAX_CONNECTIONS=4 \
  -e WORKER_ADDR="127.0.0.1:$worker_port" \
  -e EXPIRY_SCHEDULE='* * * * * *' \
  "$worker_image" >/dev/null
wait_until 60 "the worker container's /readyz 200" ready "$worker_ctr" "$worker"
ok "worker container: /readyz 200 on 127.0.0.1:$worker_port ($((SECONDS - step)) s)"

http POST "$api/api/holds" -H 'Content-Type: application/json' -d "{\"product_id\":$product,\"qty\":3}"
expect 201 "POST /api/holds (the one to expire)"
hold2=$(json hold_id)
secret2=$(json client_secret)
http GET "$api/api/products/$product"
[ "$(json available_stock)" = 0 ] || fail "product $product: available_stock $(json available_stock) with 5 - 2 - 3 taken"
step=$SECONDS
# Nothing but reads goes to the API from here: only a sweep gives the 3 units back.
swept() {
  running "$worker_ctr"
  http GET "$api/api/products/$product"
  [ "$(json available_stock)" = 3 ] || return 1
  http GET "$api/api/holds/$hold2" -H "Client-Secret: $secret2"
  [ "$(json status)" = expired ] || return 1
  http GET "$worker/metrics"
  [ "$status" = 200 ] && grep -Eq '^holds_expired_total\{by="worker"\} [1-9]' <<<"$body"
}
wait_until 30 "hold $hold2 (2 s) expired by the worker's sweep" swept
ok "worker container swept hold $hold2: status expired, available_stock 3 again, worker's holds_expired_total{by=\"worker\"} $(grep -E '^holds_expired_total\{by="worker"\}' <<<"$body" | cut -d' ' -f2) ($((SECONDS - step)) s after the hold)"

# --- podman stop: SIGTERM, a clean exit ---------------------------------------------------------
for c in "$api_ctr" "$worker_ctr"; do
  step=$SECONDS
  pm stop --time 15 "$c" >/dev/null
  code=$(pm inspect --format '{{.State.ExitCode}}' "$c")
  [ "$code" = 0 ] || fail "$c exited with $code after podman stop (137: it needed SIGKILL)"
  logs=$(pm logs "$c" 2>&1)
  grep -q 'shutdown signal received' <<<"$logs" || fail "$c did not log its SIGTERM drain"
  ok "podman stop $c: drained on SIGTERM, exit code 0 ($((SECONDS - step)) s)"
done
