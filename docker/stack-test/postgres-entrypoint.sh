#!/usr/bin/env bash
# The entrypoint of the PostgreSQL stand-in (postgres.Dockerfile), the official postgres image's contract in short:
# on an empty PGDATA, initdb with POSTGRES_USER and POSTGRES_PASSWORD, POSTGRES_DB created, every file of
# /docker-entrypoint-initdb.d run in name order against a server that listens on its socket only (*.sh executed
# when executable, else sourced; *.sql through psql); then the server in the foreground as `postgres`, listening on
# every address, passwords required from the network (scram-sha-256). No password is ever printed.
set -euo pipefail

if [[ ${1:-} != postgres ]]; then exec "$@"; fi

if [[ $(id -u) == 0 ]]; then
  mkdir -p "$PGDATA" /run/postgresql
  chown -R postgres:postgres "$PGDATA" /run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

export POSTGRES_USER=${POSTGRES_USER:-postgres}
export POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set: the stand-in, like the official image, needs a password}"
  echo "postgres stand-in: initialising $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") --encoding=UTF8 \
    --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" > /dev/null
  printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  # a server on the socket only while the init scripts run
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
  if [[ $POSTGRES_DB != postgres ]]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --set db="$POSTGRES_DB" -q \
      <<< 'CREATE DATABASE :"db";'
  fi
  export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
  for script in /docker-entrypoint-initdb.d/*; do
    case $script in
      *.sh)
        if [[ -x $script ]]; then echo "postgres stand-in: running $script"; "$script"
        else echo "postgres stand-in: sourcing $script"; . "$script"; fi ;;
      *.sql) echo "postgres stand-in: running $script"
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$script" ;;
      *) [[ -e $script ]] && echo "postgres stand-in: ignoring $script" ;;
    esac
  done
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
  echo "postgres stand-in: initialised"
fi

exec "$@"
