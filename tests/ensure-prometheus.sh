#!/usr/bin/env bash
# The observability tests start Debian's prometheus (tests/src/prometheus.rs) and deploy/check.sh
# runs its promtool: install the package when missing (root only). Its postinst may start the
# packaged server on :9090; one started by this install is stopped again, by its pidfile (init
# script) or its unit (systemd), never by process name.
set -euo pipefail
if [ -x /usr/bin/prometheus ] && command -v promtool >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure-prometheus: prometheus is missing; install Debian's prometheus package" >&2
  exit 1
fi
pidfile=/run/prometheus/prometheus.pid
had_pidfile=false
[ -e "$pidfile" ] && had_pidfile=true
systemd=false
[ -d /run/systemd/system ] && systemd=true
had_unit=false
if $systemd && systemctl is-active --quiet prometheus.service 2>/dev/null; then had_unit=true; fi
echo "ensure-prometheus: installing prometheus with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
if [ "$had_pidfile" = false ] && [ -s "$pidfile" ]; then
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
fi
if [ "$had_unit" = false ] && $systemd && systemctl is-active --quiet prometheus.service 2>/dev/null; then
  systemctl disable --now --quiet prometheus.service
fi
