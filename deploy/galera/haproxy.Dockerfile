# syntax=docker/dockerfile:1
# Debian's HAProxy with the mariadb client that galera-check.sh uses (deploy/galera/compose.yaml):
#   docker build -f deploy/galera/haproxy.Dockerfile -t flash-sale-galera-haproxy deploy/galera
# The check's credentials are mounted at /etc/galera-check.cnf, not baked in.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy mariadb-client-core \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
COPY galera-check.sh /usr/local/bin/galera-check.sh
# Listen on every interface inside the container; the application containers connect to :3307.
ENV HAPROXY_BIND=:3307 \
    HAPROXY_STATS_BIND=:8404
EXPOSE 3307 8404
# Started as root only to drop to the haproxy user (`user haproxy` in haproxy.cfg).
# The healthcheck goes through the proxy: it passes when the node taking the writes is healthy.
HEALTHCHECK --interval=5s --timeout=4s --retries=3 \
    CMD ["galera-check.sh", "127.0.0.1", "3307"]
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
