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
