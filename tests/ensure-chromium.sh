#!/usr/bin/env bash
# The Swagger UI test drives Debian's headless Chromium; install it when missing (root only).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-chromium: chromium is missing; install Debian's chromium package" >&2
  exit 1
fi
echo "ensure-chromium: installing chromium with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
