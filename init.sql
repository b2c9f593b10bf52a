-- Schema of the login pipeline. Safe to apply again, and to a database where the
-- exercise's user_logins already exists (as the exercise's postgres image makes it).

-- The exercise's table, exactly as its DDL gives it.
CREATE TABLE IF NOT EXISTS user_logins(
    user_id             varchar(128),
    device_type         varchar(32),
    masked_ip           varchar(256),
    masked_device_id    varchar(256),
    locale              varchar(32),
    app_version         integer,
    create_date         date
);

-- What the pipeline needs for itself: the SQS MessageId of the event, so that a
-- message delivered twice never makes two rows. Rows loaded by other means keep NULL.
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS message_id varchar(128);
CREATE UNIQUE INDEX IF NOT EXISTS user_logins_message_id_key ON user_logins (message_id);

-- Every record sent to login-queue-dlq, once, with its reason (no body, no PII).
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id          varchar(128) PRIMARY KEY,
    reason              text NOT NULL,
    dead_lettered_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per committed mask-and-insert execution: the pipeline's own ledger,
-- read by `status`, the drain summary and the Prometheus counters.
CREATE TABLE IF NOT EXISTS ingest_batches (
    id                  bigserial PRIMARY KEY,
    task_id             text,
    received            integer NOT NULL,
    inserted            integer NOT NULL,
    duplicates          integer NOT NULL,
    dead_lettered       integer NOT NULL,
    non_address_ips     integer NOT NULL DEFAULT 0,
    seconds             double precision NOT NULL DEFAULT 0,
    finished_at         timestamptz NOT NULL DEFAULT now()
);

-- Every recovery of a masked value: who, when, which token, under which filter, why.
-- Written only through record_unmask() below, which sets the time and the database user
-- itself: the recovery role can neither insert directly nor read, change or delete.
CREATE TABLE IF NOT EXISTS unmask_audit (
    id                  bigserial PRIMARY KEY,
    recovered_by        text NOT NULL DEFAULT session_user,
    os_user             text,  -- no longer written: the client could claim any name
    recovered_at        timestamptz NOT NULL DEFAULT now(),
    field               text NOT NULL,
    token               text NOT NULL,
    reason              text NOT NULL CHECK (length(trim(reason)) > 0)
);
ALTER TABLE unmask_audit ADD COLUMN IF NOT EXISTS filter text;
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint WHERE conname = 'unmask_audit_field_check') THEN
        ALTER TABLE unmask_audit ADD CONSTRAINT unmask_audit_field_check CHECK (field IN ('ip', 'device_id'));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION record_unmask(p_field text, p_tokens text[], p_reason text, p_filter text)
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH written AS (
        INSERT INTO public.unmask_audit (recovered_by, recovered_at, field, token, reason, filter)
        SELECT session_user, now(), p_field, token, p_reason, p_filter
        FROM unnest(p_tokens) AS token
        RETURNING 1
    )
    SELECT count(*)::integer FROM written
$$;
REVOKE ALL ON FUNCTION record_unmask(text, text[], text, text) FROM PUBLIC;

-- Least-privilege roles (NOLOGIN: grant them to login users of your own).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_pipeline_writer') THEN
        CREATE ROLE login_pipeline_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_analyst') THEN
        CREATE ROLE login_analyst NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_recovery') THEN
        CREATE ROLE login_recovery NOLOGIN;
    END IF;
END
$$;

-- The pipeline writes rows and its ledger. It may read message ids only: ON CONFLICT
-- (message_id) needs that, and RETURNING message_id on dead_letters too.
GRANT INSERT ON user_logins, ingest_batches TO login_pipeline_writer;
GRANT SELECT (message_id) ON user_logins TO login_pipeline_writer;
GRANT INSERT, SELECT (message_id) ON dead_letters TO login_pipeline_writer;
GRANT USAGE ON SEQUENCE ingest_batches_id_seq TO login_pipeline_writer;
-- The analyst reads the masked table and nothing else.
GRANT SELECT ON user_logins TO login_analyst;
-- Recovery reads tokens and audits only through record_unmask().
GRANT SELECT ON user_logins TO login_recovery;
REVOKE ALL ON unmask_audit FROM login_recovery;  -- whatever an older init.sql granted
REVOKE ALL ON SEQUENCE unmask_audit_id_seq FROM login_recovery;
GRANT EXECUTE ON FUNCTION record_unmask(text, text[], text, text) TO login_recovery;

-- ============================================================================
-- Metrics role (Flower's /metrics, tasks/ops/metrics.py). A block of its own, kept
-- at the end of this file: it reads the pipeline's ledger and nothing else, so the
-- login user that METRICS_DATABASE_URL names needs only this role.
-- ============================================================================
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_metrics') THEN
        CREATE ROLE login_metrics NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON ingest_batches TO login_metrics;
