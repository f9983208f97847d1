# Test stand-in for compose.yaml's `postgres:17-bookworm` (docker/stack-test/compose.override.yaml), built from
# Debian packages where no registry can be reached: PostgreSQL 17 from Debian trixie (bookworm has only 15), on the
# project's local Debian base upgraded to trixie, with an entrypoint that keeps the official image's contract:
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, the data folder /var/lib/postgresql/data (PGDATA), the scripts
# in /docker-entrypoint-initdb.d run once on an empty folder, password (scram-sha-256) logins from the network,
# `pg_isready` on PATH, the server running as `postgres`. Not for production: use the official image there.
ARG BASE=trafficlip/base:bookworm
FROM ${BASE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Debian's packaging would create a cluster of its own on install (create_main_cluster): turned off, the entrypoint
# makes the one cluster in PGDATA as the official image does.
# DL3008 (apt packages without versions), on purpose: the suite fixes the release, Debian keeps one version of each.
# hadolint ignore=DL3008
RUN sed -i 's/bookworm/trixie/g' /etc/apt/sources.list.d/debian.sources \
    && apt-get update \
    && apt-get full-upgrade -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-17 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p "$PGDATA" /run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql \
    && chmod 700 "$PGDATA" \
    && postgres --version

COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# fast shutdown, as the official image
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
