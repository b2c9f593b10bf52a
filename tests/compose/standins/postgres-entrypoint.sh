#!/bin/sh
# The stand-in's entrypoint (postgres.Containerfile): the official image's contract, as far as
# docker-compose.yml uses it. As root it hands itself to the postgres user; on an empty data folder
# it makes the cluster with POSTGRES_PASSWORD for POSTGRES_USER, runs /docker-entrypoint-initdb.d
# in name order (.sql through psql, .sh with sh), once, then serves on every interface.
set -eu
if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
: "${POSTGRES_PASSWORD:?the stand-in, like postgres:16, needs POSTGRES_PASSWORD}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for f in $(ls /docker-entrypoint-initdb.d/ | sort); do
        path=/docker-entrypoint-initdb.d/$f
        case "$f" in
            *.sql) echo "initdb.d: running $f"; psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -q -f "$path" ;;
            *.sh) echo "initdb.d: running $f"; sh "$path" ;;
            *) echo "initdb.d: ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@" -c listen_addresses='*'
