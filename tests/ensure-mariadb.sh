#!/usr/bin/env bash
# Makes sure a MariaDB is up for the test suites, with the test user they use
# (flash/flash, allowed to create and drop the per-test databases).
#
# - TEST_MYSQL_URL set: that server is used as it is; nothing here runs.
# - mariadbd missing: installs Debian's mariadb-server with apt-get (root only), else fails.
# - not running: starts it the way this kind of machine needs (no init system), and waits.
# Fails loudly rather than letting the suites skip.
#
# "Running" means the shared server answers on its own socket, never "some mariadbd process
# exists": tests start private servers and Galera nodes (tests/src/servers.rs), and those must
# neither count as the shared server nor be touched. The server is started with a pidfile of its
# own, and start-stop-daemon matches by that pidfile (without --pidfile it would take ANY running
# mariadbd for this one and silently start nothing).
set -euo pipefail

SOCKET=/run/mysqld/mysqld.sock
PIDFILE=/run/mysqld/mysqld.pid

if [ -n "${TEST_MYSQL_URL:-}" ]; then
  echo "ensure-mariadb: using TEST_MYSQL_URL as given"
  exit 0
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "ensure-mariadb: need root to run: $*" >&2; return 1; fi; }

if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  echo "ensure-mariadb: mariadb-server is not installed; installing it with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
fi

shared_is_up() { mariadb-admin --socket="$SOCKET" ping --silent >/dev/null 2>&1; }

if ! shared_is_up; then
  echo "ensure-mariadb: starting mariadbd"
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  # --oknodo: the process named in OUR pidfile may be the shared server still starting up.
  as_root start-stop-daemon --start --oknodo --background --pidfile "$PIDFILE" \
    --exec /usr/sbin/mariadbd -- --user=mysql --pid-file="$PIDFILE" --socket="$SOCKET"
  for _ in $(seq 1 60); do
    shared_is_up && break
    sleep 1
  done
  shared_is_up || { echo "ensure-mariadb: mariadbd did not start" >&2; exit 1; }
fi

# Over the Unix socket as root: a fresh Debian install lets root in only that way.
as_root mariadb --socket="$SOCKET" -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'flash'@'127.0.0.1' IDENTIFIED BY 'flash';
CREATE USER IF NOT EXISTS 'flash'@'localhost' IDENTIFIED BY 'flash';
GRANT ALL PRIVILEGES ON *.* TO 'flash'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'flash'@'localhost';
CREATE DATABASE IF NOT EXISTS test;
-- Every test process has pools of its own; the default 151 is tight for a parallel run.
SET GLOBAL max_connections = GREATEST(@@max_connections, 500);
SQL

# Databases left behind by an interrupted run: only those whose tables are all over two hours
# old, so that a test run going on beside this one (another checkout, a CI job) keeps its own.
stale="SELECT s.SCHEMA_NAME FROM information_schema.SCHEMATA s \
  JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = s.SCHEMA_NAME \
  WHERE s.SCHEMA_NAME LIKE 'fs\\_test\\_%' GROUP BY s.SCHEMA_NAME \
  HAVING MAX(t.CREATE_TIME) < NOW() - INTERVAL 2 HOUR"
for db in $(mariadb -uflash -pflash -h127.0.0.1 -N -e "$stale"); do
  mariadb -uflash -pflash -h127.0.0.1 -e "DROP DATABASE \`$db\`"
done

mariadb -uflash -pflash -h127.0.0.1 -N -e "SELECT CONCAT('ensure-mariadb: ready, ', VERSION())"
