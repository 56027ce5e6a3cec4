-- Accounts the Galera deployment needs besides the service's own (flash / DATABASE_URL).
-- Run once, on the first node (the others receive it: DDL on users replicates, and a joining
-- node's state transfer copies everything). The compose file runs it at the first node's
-- initialisation; on VMs: `mariadb -uroot < galera-users.sql` on the bootstrapped node.

-- State transfer (wsrep_sst_method=mariabackup, wsrep_sst_auth=mysql:): mariabackup runs as the
-- OS user mysql on the donor and logs in through the Unix socket, so no password is stored.
-- Debian's mariadb-install-db already made this account (with every privilege); the grant is
-- what mariabackup needs at least.
CREATE USER IF NOT EXISTS 'mysql'@'localhost' IDENTIFIED VIA unix_socket;
GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO 'mysql'@'localhost';

-- Health checks (galera-check.sh, called by HAProxy and by the compose healthchecks): reads
-- SHOW GLOBAL STATUS only, which needs no privilege, and is granted nothing. Its password below
-- is public (it is in this repository): enough in compose.yaml, where no database port is
-- published. Wherever a node's port is reachable from hosts you do not trust (VMs), make a new
-- one (openssl rand -hex 24) and put it here and in galera-check.cnf together.
CREATE USER IF NOT EXISTS 'galera_check'@'%' IDENTIFIED BY 'galera-check-status-only';
