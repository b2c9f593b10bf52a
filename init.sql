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

-- What /metrics reads (tasks/ops/metrics.py). Each batch row carries its histogram
-- bucket counts (not cumulative; the bounds are in tasks/pipeline/histogram.py), and
-- each dead letter its reason class (a bounded set, tasks/pipeline/reasons.py).
ALTER TABLE ingest_batches ADD COLUMN IF NOT EXISTS freshness_counts integer[] NOT NULL DEFAULT '{}';
ALTER TABLE ingest_batches ADD COLUMN IF NOT EXISTS freshness_sum double precision NOT NULL DEFAULT 0;
ALTER TABLE ingest_batches ADD COLUMN IF NOT EXISTS duration_counts integer[] NOT NULL DEFAULT '{}';
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS reason_class text;
-- Events of a forgotten user, sent before their erasure, that a batch dropped (docs/privacy.md).
ALTER TABLE ingest_batches ADD COLUMN IF NOT EXISTS forgotten integer NOT NULL DEFAULT 0;

-- The ledgers' running totals, kept by triggers in the writing transaction, so that a
-- scrape reads a few rows however long the ledgers grow. A batch writes one
-- ingest_batches row (rolled up per row) and its dead letters in one statement (rolled
-- up per statement); a bulk insert of many ledger rows in one transaction is slow. One row per shard (the
-- writing connection's backend pid mod 16): concurrent batches never wait on one row.
CREATE TABLE IF NOT EXISTS ledger_rollup (
    shard               integer PRIMARY KEY,
    received            bigint NOT NULL DEFAULT 0,
    inserted            bigint NOT NULL DEFAULT 0,
    duplicates          bigint NOT NULL DEFAULT 0,
    dead_lettered       bigint NOT NULL DEFAULT 0,
    non_address_ips     bigint NOT NULL DEFAULT 0,
    batches             bigint NOT NULL DEFAULT 0,
    seconds             double precision NOT NULL DEFAULT 0,
    freshness_counts    bigint[] NOT NULL DEFAULT '{}',
    freshness_sum       double precision NOT NULL DEFAULT 0,
    duration_counts     bigint[] NOT NULL DEFAULT '{}',
    last_commit         timestamptz
);
ALTER TABLE ledger_rollup ADD COLUMN IF NOT EXISTS forgotten bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS dead_letter_rollup (
    reason_class        text NOT NULL,
    shard               integer NOT NULL,
    letters             bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (reason_class, shard)
);
-- Liveness marks: 'fetch' is the start of the last beat-scheduled fetch (beat's
-- heartbeat on /metrics) and the newest SentTimestamp that fetch received.
CREATE TABLE IF NOT EXISTS heartbeats (
    name                text PRIMARY KEY,
    at                  timestamptz NOT NULL,
    newest_sent_at      timestamptz
);

-- Element-wise sum of two bucket-count arrays (the shorter one padded with zeros).
CREATE OR REPLACE FUNCTION ledger_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}'::bigint[])
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

CREATE OR REPLACE FUNCTION roll_up_batch() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO public.ledger_rollup AS r (shard, received, inserted, duplicates, dead_lettered, non_address_ips,
        batches, seconds, freshness_counts, freshness_sum, duration_counts, last_commit, forgotten)
    VALUES (pg_backend_pid() % 16, NEW.received, NEW.inserted, NEW.duplicates, NEW.dead_lettered,
        NEW.non_address_ips, 1, NEW.seconds, NEW.freshness_counts::bigint[], NEW.freshness_sum,
        NEW.duration_counts::bigint[], clock_timestamp(), NEW.forgotten)
    ON CONFLICT (shard) DO UPDATE SET
        received = r.received + EXCLUDED.received,
        inserted = r.inserted + EXCLUDED.inserted,
        duplicates = r.duplicates + EXCLUDED.duplicates,
        dead_lettered = r.dead_lettered + EXCLUDED.dead_lettered,
        non_address_ips = r.non_address_ips + EXCLUDED.non_address_ips,
        batches = r.batches + 1,
        seconds = r.seconds + EXCLUDED.seconds,
        freshness_counts = public.ledger_add(r.freshness_counts, EXCLUDED.freshness_counts),
        freshness_sum = r.freshness_sum + EXCLUDED.freshness_sum,
        duration_counts = public.ledger_add(r.duration_counts, EXCLUDED.duration_counts),
        last_commit = greatest(r.last_commit, EXCLUDED.last_commit),
        forgotten = r.forgotten + EXCLUDED.forgotten;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION roll_up_dead_letter() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN  -- once per statement: a batch notes its dead letters in one INSERT
    INSERT INTO public.dead_letter_rollup AS r (reason_class, shard, letters)
    SELECT coalesce(reason_class, 'other'), pg_backend_pid() % 16, count(*) FROM new_letters GROUP BY 1
    ON CONFLICT (reason_class, shard) DO UPDATE SET letters = r.letters + EXCLUDED.letters;
    RETURN NULL;
END
$$;

-- A ledger emptied with TRUNCATE (the tests do) empties its totals too.
CREATE OR REPLACE FUNCTION clear_rollup() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME = 'ingest_batches' THEN
        TRUNCATE public.ledger_rollup;
    ELSE
        TRUNCATE public.dead_letter_rollup;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION roll_up_batch(), roll_up_dead_letter(), clear_rollup() FROM PUBLIC;

-- An existing ledger (init.sql applied to an older schema) is rolled up once.
INSERT INTO ledger_rollup (shard, received, inserted, duplicates, dead_lettered, non_address_ips, batches,
    seconds, last_commit)
SELECT 0, sum(received), sum(inserted), sum(duplicates), sum(dead_lettered), sum(non_address_ips), count(*),
    sum(seconds), max(finished_at)
FROM ingest_batches
HAVING count(*) > 0 AND NOT EXISTS (SELECT FROM ledger_rollup);
INSERT INTO dead_letter_rollup (reason_class, shard, letters)
SELECT 'other', 0, count(*) FROM dead_letters
HAVING count(*) > 0 AND NOT EXISTS (SELECT FROM dead_letter_rollup);

DROP TRIGGER IF EXISTS ingest_batches_roll_up ON ingest_batches;
CREATE TRIGGER ingest_batches_roll_up AFTER INSERT ON ingest_batches
    FOR EACH ROW EXECUTE FUNCTION roll_up_batch();
DROP TRIGGER IF EXISTS ingest_batches_truncated ON ingest_batches;
CREATE TRIGGER ingest_batches_truncated AFTER TRUNCATE ON ingest_batches
    FOR EACH STATEMENT EXECUTE FUNCTION clear_rollup();
DROP TRIGGER IF EXISTS dead_letters_roll_up ON dead_letters;
CREATE TRIGGER dead_letters_roll_up AFTER INSERT ON dead_letters REFERENCING NEW TABLE AS new_letters
    FOR EACH STATEMENT EXECUTE FUNCTION roll_up_dead_letter();
DROP TRIGGER IF EXISTS dead_letters_truncated ON dead_letters;
CREATE TRIGGER dead_letters_truncated AFTER TRUNCATE ON dead_letters
    FOR EACH STATEMENT EXECUTE FUNCTION clear_rollup();

-- Every recovery of a masked value: who, when, which token, under which filter, why.
-- Written only through recover_tokens() below, which sets the time and the database user
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

-- The old way in took any tokens and any filter text from its caller, so the recovery
-- role could record recoveries that never happened. Gone: recover_tokens() below.
DROP FUNCTION IF EXISTS record_unmask(text, text[], text, text);

-- Whether a reason has visible text: something left once white space, control
-- characters and the invisible format characters (zero-width space and joiners, bidi
-- marks, soft hyphen, BOM, variation selectors, Hangul fillers, tags...) are removed.
CREATE OR REPLACE FUNCTION unmask_reason_is_visible(p_reason text)
RETURNS boolean
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(length(regexp_replace(p_reason,
        '[[:space:][:cntrl:]\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U000e0000-\U000e0fff]',
        '', 'g')) > 0, false)
$$;

-- The only way to recover: the database picks the tokens itself (those of user_logins
-- that the filter selects, or the given tokens that are in user_logins, all of them or
-- none), writes one audit row per token with who, when, the filter and the reason, and
-- returns exactly those tokens. `unmask` decrypts what this returns and nothing else,
-- in the same transaction: a token that fails to decrypt rolls the audit back.
CREATE OR REPLACE FUNCTION recover_tokens(
    p_field text, p_reason text, p_user_id text, p_since date, p_until date, p_tokens text[]
)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_filter text;
    v_missing integer;
BEGIN
    IF p_field IS NULL OR p_field NOT IN ('ip', 'device_id') THEN
        RAISE EXCEPTION 'the field must be ip or device_id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT public.unmask_reason_is_visible(p_reason) THEN
        RAISE EXCEPTION 'a reason with visible text is required for every recovery'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(cardinality(p_tokens), 0) > 0 THEN
        IF p_user_id IS NOT NULL OR p_since IS NOT NULL OR p_until IS NOT NULL THEN
            RAISE EXCEPTION 'give tokens or filters, not both' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT count(*) INTO v_missing FROM (SELECT DISTINCT unnest(p_tokens) AS token) AS given
        WHERE given.token IS NULL OR NOT EXISTS (
            SELECT FROM public.user_logins AS u
            WHERE CASE p_field WHEN 'ip' THEN u.masked_ip ELSE u.masked_device_id END = given.token);
        IF v_missing > 0 THEN
            RAISE EXCEPTION '% of the given tokens are not % tokens of user_logins: nothing recovered',
                v_missing, p_field USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_filter := 'tokens given';
    ELSE
        IF p_user_id IS NULL AND p_since IS NULL AND p_until IS NULL THEN
            RAISE EXCEPTION 'give tokens, or at least one of user id, since, until'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_filter := concat_ws(' ', 'user_id=' || p_user_id, 'since=' || p_since, 'until=' || p_until);
    END IF;
    RETURN QUERY
    WITH chosen AS (
        SELECT DISTINCT CASE p_field WHEN 'ip' THEN u.masked_ip ELSE u.masked_device_id END AS token
        FROM public.user_logins AS u
        WHERE CASE WHEN coalesce(cardinality(p_tokens), 0) > 0
            THEN CASE p_field WHEN 'ip' THEN u.masked_ip ELSE u.masked_device_id END = ANY (p_tokens)
            ELSE (p_user_id IS NULL OR u.user_id = p_user_id)
                AND (p_since IS NULL OR u.create_date >= p_since)
                AND (p_until IS NULL OR u.create_date <= p_until)
            END
    ), written AS (
        INSERT INTO public.unmask_audit (recovered_by, recovered_at, field, token, reason, filter)
        SELECT session_user, now(), p_field, chosen.token, p_reason, v_filter
        FROM chosen WHERE chosen.token IS NOT NULL
        RETURNING unmask_audit.token
    )
    SELECT written.token FROM written ORDER BY written.token;
END
$$;
REVOKE ALL ON FUNCTION recover_tokens(text, text, text, date, date, text[]) FROM PUBLIC;

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
-- Its fetch marks its start (no record's values in that table).
GRANT SELECT, INSERT, UPDATE ON heartbeats TO login_pipeline_writer;
-- The analyst reads the masked table and nothing else.
GRANT SELECT ON user_logins TO login_analyst;
-- Recovery reads tokens, and recovers (audited) only through recover_tokens().
GRANT SELECT ON user_logins TO login_recovery;
REVOKE ALL ON unmask_audit FROM login_recovery;  -- whatever an older init.sql granted
REVOKE ALL ON SEQUENCE unmask_audit_id_seq FROM login_recovery;
GRANT EXECUTE ON FUNCTION recover_tokens(text, text, text, date, date, text[]) TO login_recovery;

-- ============================================================================
-- Erasure (`python -m tasks forget`, tasks/ops/erasure.py). A forgotten user is known
-- only by a keyed hash of their id ('version:hex', an HMAC under a key derived from the
-- masking key ring), never by the id itself.
-- ============================================================================
-- One tombstone per forgotten user: a batch or a redrive drops their events sent before
-- erased_at. The pipeline reads it; the analyst and recovery roles cannot.
CREATE TABLE IF NOT EXISTS erasure_tombstones (
    subject_hash        text PRIMARY KEY,
    erased_at           timestamptz NOT NULL
);
-- One row per erasure: whose (the keyed hash), why, who ran it, when, and what it removed.
-- Written only through record_erasure(), which sets who and when itself.
CREATE TABLE IF NOT EXISTS erasure_audit (
    id                  bigserial PRIMARY KEY,
    subject_hash        text NOT NULL,
    reason              text NOT NULL CHECK (length(trim(reason)) > 0),
    erased_by           text NOT NULL DEFAULT session_user,
    erased_at           timestamptz NOT NULL DEFAULT now(),
    rows_deleted        integer NOT NULL,
    dead_letters_deleted integer NOT NULL,
    queued_deleted      integer NOT NULL,
    batch_events_removed integer NOT NULL,
    unreached           integer NOT NULL
);

CREATE OR REPLACE FUNCTION record_erasure(
    p_subject_hash text, p_reason text, p_rows integer, p_dead_letters integer, p_queued integer,
    p_batch_events integer, p_unreached integer
)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_subject_hash IS NULL OR p_subject_hash !~ '^[1-9][0-9]{0,8}:[0-9a-f]{64}$' THEN
        RAISE EXCEPTION 'the subject must be a keyed hash' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT public.unmask_reason_is_visible(p_reason) THEN
        RAISE EXCEPTION 'a reason with visible text is required for every erasure'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.erasure_audit (subject_hash, reason, erased_by, erased_at, rows_deleted,
        dead_letters_deleted, queued_deleted, batch_events_removed, unreached)
    VALUES (p_subject_hash, p_reason, session_user, now(), p_rows, p_dead_letters, p_queued, p_batch_events,
        p_unreached)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
REVOKE ALL ON FUNCTION record_erasure(text, text, integer, integer, integer, integer, integer) FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_eraser') THEN
        CREATE ROLE login_eraser NOLOGIN;
    END IF;
END
$$;
-- The eraser deletes a user's rows and dead letters, keeps the tombstones, and writes the
-- audit only through record_erasure(). It reads no masked value and no audit row.
GRANT SELECT (user_id, message_id), DELETE ON user_logins TO login_eraser;
GRANT SELECT (message_id), DELETE ON dead_letters TO login_eraser;
GRANT SELECT, INSERT, UPDATE ON erasure_tombstones TO login_eraser;
GRANT EXECUTE ON FUNCTION record_erasure(text, text, integer, integer, integer, integer, integer) TO login_eraser;
-- The pipeline drops a forgotten user's earlier events: it reads the tombstones.
GRANT SELECT ON erasure_tombstones TO login_pipeline_writer;
REVOKE ALL ON erasure_tombstones, erasure_audit FROM login_analyst, login_recovery;

-- ============================================================================
-- Retention (RETENTION_DAYS, tasks/retention.py): rows older than the limit are deleted
-- in short batches, through expire_logins() only. The index keeps both the batches and
-- the oldest row's age (a metric) cheap. On a large existing table, build it first with
-- CREATE INDEX CONCURRENTLY under this name: this statement then finds it.
-- ============================================================================
CREATE INDEX IF NOT EXISTS user_logins_create_date_idx ON user_logins (create_date);

-- Delete at most p_rows rows created before current_date - p_days; returns how many.
CREATE OR REPLACE FUNCTION expire_logins(p_days integer, p_rows integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_deleted integer;
BEGIN
    IF p_days IS NULL OR p_days < 1 OR p_rows IS NULL OR p_rows < 1 THEN
        RAISE EXCEPTION 'days and rows must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM public.user_logins WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM public.user_logins WHERE create_date < (now() AT TIME ZONE 'UTC')::date - p_days
        ORDER BY create_date LIMIT p_rows FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;
REVOKE ALL ON FUNCTION expire_logins(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION expire_logins(integer, integer) TO login_pipeline_writer;

-- The create_date of the oldest row (NULL: none), for /metrics: no row's values.
CREATE OR REPLACE FUNCTION oldest_login_date()
RETURNS date
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT min(create_date) FROM public.user_logins
$$;
REVOKE ALL ON FUNCTION oldest_login_date() FROM PUBLIC;

-- ============================================================================
-- Metrics role (Flower's /metrics, tasks/ops/metrics.py). A block of its own, kept
-- at the end of this file: it reads the ledger, its totals and the heartbeats, never a
-- row of user_logins or dead_letters, so the login user that METRICS_DATABASE_URL names
-- needs only this role.
-- ============================================================================
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'login_metrics') THEN
        CREATE ROLE login_metrics NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON ingest_batches, ledger_rollup, dead_letter_rollup, heartbeats TO login_metrics;
GRANT EXECUTE ON FUNCTION oldest_login_date() TO login_metrics;
