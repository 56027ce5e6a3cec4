#!/bin/sh
# Exit 0 when the MariaDB Galera node at HOST:PORT may take the service's traffic: it is in the
# primary component (wsrep_cluster_status=Primary), ready (wsrep_ready=ON) and synced
# (wsrep_local_state=4; not a joiner, not a donor or desynced). Otherwise print why, exit 1.
# A node outside the primary component still accepts connections (and answers every query with
# error 1047), so a TCP or login check would keep sending traffic to it; this one does not.
#
#   galera-check.sh HOST PORT                          (compose healthcheck, by hand)
#   galera-check.sh PROXY_ADDR PROXY_PORT HOST PORT    (HAProxy external-check)
#
# Credentials: the [client] group of $GALERA_CHECK_CNF (default /etc/galera-check.cnf;
# HAProxy clears the environment, so it gets the default), an account with no privileges
# (galera-users.sql).
set -u
if [ $# -ge 4 ]; then host=$3 port=$4; else host=${1:-127.0.0.1} port=${2:-3306}; fi
cnf=${GALERA_CHECK_CNF:-/etc/galera-check.cnf}

status=$(mariadb --defaults-extra-file="$cnf" --host="$host" --port="$port" --protocol=tcp \
  --connect-timeout=2 --batch --skip-column-names \
  --execute="SHOW GLOBAL STATUS WHERE Variable_name IN
    ('wsrep_cluster_status', 'wsrep_ready', 'wsrep_local_state')" 2>&1) || {
  echo "galera-check: $host:$port: $status"
  exit 1
}
value() { printf '%s\n' "$status" | awk -v n="$1" '$1 == n { print $2 }'; }
cluster=$(value wsrep_cluster_status) ready=$(value wsrep_ready) state=$(value wsrep_local_state)
if [ "$cluster" = Primary ] && [ "$ready" = ON ] && [ "$state" = 4 ]; then
  exit 0
fi
echo "galera-check: $host:$port: cluster_status=${cluster:-?} ready=${ready:-?} local_state=${state:-?}"
exit 1
