#!/usr/bin/env bash
# The Galera suite (tests/tests/api/galera.rs) starts three Galera nodes of its own; it needs
# Debian's galera-4 (the wsrep provider) and rsync (the state transfer method). Installs them
# with apt-get when missing (root only), else fails loudly rather than letting the suite skip.
# It never touches the shared MariaDB.
set -euo pipefail

missing=()
[ -e /usr/lib/galera/libgalera_smm.so ] || missing+=(galera-4)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
if [ ${#missing[@]} -eq 0 ]; then
  echo "ensure-galera: galera-4 and rsync are installed"
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "ensure-galera: need root to run: $*" >&2; return 1; fi; }

echo "ensure-galera: installing ${missing[*]} with apt-get"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
[ -e /usr/lib/galera/libgalera_smm.so ] || { echo "ensure-galera: /usr/lib/galera/libgalera_smm.so still missing" >&2; exit 1; }
command -v rsync >/dev/null 2>&1 || { echo "ensure-galera: rsync still missing" >&2; exit 1; }
echo "ensure-galera: ready"
