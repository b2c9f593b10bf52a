#!/bin/sh
# PostgreSQL logins for compose's pipeline processes, made once when the database is first
# created (docker-entrypoint-initdb.d, after 10-init.sql made the NOLOGIN roles). Each
# process logs in with only its role's rights; only the init service uses the superuser.
#   login_pipeline_worker  -> login_pipeline_writer  (worker: rows, ledger, dead letters)
#   login_pipeline_metrics -> login_metrics          (Flower's /metrics: reads ingest_batches)
# Passwords come from the environment and reach SQL as psql variables, quoted by psql.
set -eu
: "${WORKER_DB_PASSWORD:?set WORKER_DB_PASSWORD}" "${METRICS_DB_PASSWORD:?set METRICS_DB_PASSWORD}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=worker_password="$WORKER_DB_PASSWORD" --set=metrics_password="$METRICS_DB_PASSWORD" <<'SQL'
-- login_metrics and its SELECT on ingest_batches come with init.sql; the role is made
-- here too when an older init.sql lacks it (the init service re-applies init.sql).
SELECT 'CREATE ROLE login_metrics NOLOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_metrics')
\gexec
CREATE ROLE login_pipeline_worker LOGIN PASSWORD :'worker_password' IN ROLE login_pipeline_writer;
CREATE ROLE login_pipeline_metrics LOGIN PASSWORD :'metrics_password' IN ROLE login_metrics;
SQL
