#!/bin/dash
# Entrypoint of the outpost-postgres image (compose/images/postgres.Dockerfile): at the first
# start (no PG_VERSION in $PGDATA) `initdb` as the postgres user, password authentication for
# every TCP client, then the database $POSTGRES_DB; then the server in the foreground.
# The same variables as the public postgres image, so compose/docker-compose.yml runs either:
#   POSTGRES_PASSWORD  the password of $POSTGRES_USER; required at the first start (never
#                      stored in the image: compose/docker-compose.yml takes it from the
#                      operator's OUTPOST_POSTGRES_PASSWORD)
#   POSTGRES_USER      the superuser the server is initialised with (default postgres)
#   POSTGRES_DB        a database created at the first start (default $POSTGRES_USER)
#   PGDATA             the data directory (default /var/lib/postgresql/data, the volume)
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "outpost-postgres: POSTGRES_PASSWORD is not set: it is needed to initialise $PGDATA" >&2
    exit 1
  fi
  echo "outpost-postgres: initialising $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
  # The password through a pipe: no file holds it, and it is not on a command line.
  printf '%s\n' "$POSTGRES_PASSWORD" |
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile=/dev/stdin \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale --no-instructions
  # initdb allows TCP from loopback only; the container's own network is private to the
  # compose project, and every client there must still give the password.
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    printf 'CREATE DATABASE "%s";\n' "$POSTGRES_DB" |
      postgres --single -D "$PGDATA" -c log_min_messages=warning postgres >/dev/null
  fi
fi
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
