#!/bin/bash
# Entrypoint of the Galera nodes in compose.yaml, run before the mariadb image's own
# docker-entrypoint.sh. It adds to the server's flags what a Galera node needs at start and the
# image does not do by itself:
#   - never in a cluster yet (no grastate.dat), GALERA_BOOTSTRAP=if-new and none of
#     GALERA_PEERS answers on Galera's port 4567: --wsrep-new-cluster, so the first start of the
#     first node creates the cluster (every other node joins it), while a first node whose volume
#     was lost joins the running cluster instead of starting a second one beside it;
#   - GALERA_BOOTSTRAP=yes: --wsrep-new-cluster, to restart a cluster after all nodes stopped
#     (on the node whose grastate.dat says safe_to_bootstrap: 1, once; see deploy/galera/README.md);
#   - after a crash (kill -9, power loss: seqno -1 in grastate.dat): the position recovered with
#     `mariadbd --wsrep-recover` (galera_recovery), so the node rejoins by IST, sending only what
#     it missed, instead of a full state transfer.
set -euo pipefail
datadir=/var/lib/mysql
state=$datadir/grastate.dat
extra=()

case "${GALERA_BOOTSTRAP:-no}" in
  yes) extra+=(--wsrep-new-cluster) ;;
  if-new)
    if [ ! -e "$state" ]; then
      running=
      for peer in ${GALERA_PEERS:-}; do
        if timeout 2 bash -c "exec 3<>/dev/tcp/$peer/4567" 2>/dev/null; then running=$peer; fi
      done
      if [ -n "$running" ]; then
        echo "node-start: $running is up: joining the running cluster, not creating one"
      else
        extra+=(--wsrep-new-cluster)
      fi
    fi
    ;;
  no) ;;
  *) echo "node-start: GALERA_BOOTSTRAP must be yes, if-new or no" >&2; exit 2 ;;
esac

if [ -e "$state" ] && grep -Eq '^seqno:[[:space:]]+-1$' "$state" && [ -d "$datadir/mysql" ]; then
  echo "node-start: not shut down cleanly; recovering the position with --wsrep-recover"
  position=$(galera_recovery)
  [ -z "$position" ] || extra+=("$position")
fi

echo "node-start: docker-entrypoint.sh $* ${extra[*]}"
exec docker-entrypoint.sh "$@" "${extra[@]}"
