"""End to end with a real worker and beat: login-queue -> user_logins / login-queue-dlq."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest

import celeryconfig as config
from devkit import seed
from tasks.broker import aws
from tests.helpers import dead_letters, drained, python_m_tasks, send_with_ids

pytestmark = pytest.mark.usefixtures("clean")


def test_the_exercise_sample_flows_masked_into_the_table(worker, db) -> None:
    seed.send(config.SOURCE_QUEUE, seed.sample_bodies())
    totals = drained(db, 100)
    assert (totals["rows"], totals["dead_letters"], totals["duplicates"]) == (99, 1, 0)

    with db.cursor() as cur:
        cur.execute("SELECT masked_ip, masked_device_id, app_version, create_date FROM user_logins")
        rows = cur.fetchall()
    db.rollback()
    raw = {(e["ip"], e["device_id"]) for e in map(json.loads, seed.sample_bodies()) if "ip" in e}
    stored = {value for r in rows for value in r[:2]}
    assert not stored & {v for pair in raw for v in pair}
    assert all(ip.startswith("h1:") and dev.startswith("h1:") for ip, dev, *_ in rows)

    [letter] = dead_letters()
    assert letter["MessageAttributes"]["reason"]["StringValue"] == "user_id is missing"
    assert json.loads(letter["Body"]) == {"foo": "oops_wrong_msg_type", "bar": "123"}


def test_redelivered_messages_add_no_rows_and_are_counted(worker, db) -> None:
    messages = {f"id-{n}": body for n, (body, _) in enumerate(seed.generate(300))}
    send_with_ids(messages)
    first = drained(db, 300)
    assert first["rows"] + first["dead_letters"] == 300 and first["duplicates"] == 0
    send_with_ids(messages)  # every message delivered a second time
    second = drained(db, 600)
    assert (second["rows"], second["dead_letters"]) == (first["rows"], first["dead_letters"])
    assert second["duplicates"] == 300
    assert len(dead_letters()) == first["dead_letters"]  # and none dead-lettered twice


def test_a_batch_with_bad_records_inserts_the_good_ones(worker, db) -> None:
    good = [b for b, valid in seed.generate(40) if valid]
    bad = ["{oops", '{"user_id": "u", "app_version": "one"}', '{"user_id": "u", "locale": "%s"}' % ("L" * 40)]
    seed.send(config.SOURCE_QUEUE, good[:20] + bad + good[20:])
    totals = drained(db, len(good) + 3)
    assert totals["rows"] == len(good) and totals["dead_letters"] == 3
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dead_letters())
    assert reasons == [
        "app_version is not a dotted number of up to three parts",
        "body is not JSON",
        "locale is longer than 32 characters",
    ]


def test_redrive_replays_dead_letters_and_a_still_bad_record_comes_back_with_its_reason(worker, db) -> None:
    from tasks.ops.redrive import redrive
    from tasks.pipeline.deadletter import DeadLetterQueue
    from tasks.pipeline.records import DeadLetter, SourceMessage
    from tasks.pipeline.service import load_key_ring_checked

    seed.send(config.SOURCE_QUEUE, ["{still bad"])
    drained(db, 1)
    # A good record that a failing batch sent whole to the dead-letter path.
    good = SourceMessage("given-up-1", 1_700_000_000_000, json.dumps({"user_id": "u-1", "ip": "10.0.0.1"}))
    keys = load_key_ring_checked()
    DeadLetterQueue(config.DEAD_LETTER_QUEUE, keys).send(
        [DeadLetter(good, "gave up after 8 retries: OperationalError")]
    )

    dry = redrive(keys, dry_run=True)
    assert dry.dry_run and dry.moved == 2 and sum(dry.reasons.values()) == 2  # would move both
    assert aws.queue_depth(config.DEAD_LETTER_QUEUE)["visible"] == 2  # a dry run hands them back

    assert redrive(keys).moved == 2
    totals = drained(db, 3)
    assert totals["rows"] == 1 and totals["dead_letters"] == 1
    with db.cursor() as cur:  # replayed under its original id and date, not the redrive's
        cur.execute("SELECT message_id, create_date FROM user_logins")
        assert cur.fetchall() == [("given-up-1", date(2023, 11, 14))]
    db.rollback()
    [letter] = dead_letters()
    assert letter["MessageAttributes"]["reason"]["StringValue"] == "body is not JSON"


def test_a_large_invalid_message_is_one_dead_letter_with_its_body_and_its_batch_goes_on(worker, db) -> None:
    """200,000 'é' are 1.2 MB once kombu escapes them: past SQS's 1 MiB for a task message.
    The fetch reads it on receipt (tasks/pipeline/oversize.py): its device_id is too long."""
    good = [b for b, valid in seed.generate(12) if valid][:6]
    huge = json.dumps({"user_id": "u-huge", "ip": "10.0.0.1", "device_id": "\u00e9" * 200_000}, ensure_ascii=False)
    seed.send(config.SOURCE_QUEUE, good[:3])
    aws.client("sqs").send_message(QueueUrl=aws.queue_url(config.SOURCE_QUEUE), MessageBody=huge)  # 400 kB
    seed.send(config.SOURCE_QUEUE, good[3:])
    totals = drained(db, 7)
    assert (totals["rows"], totals["dead_letters"]) == (6, 1)
    [letter] = dead_letters()
    assert letter["MessageAttributes"]["reason"]["StringValue"] == "device_id is longer than 127 bytes"
    assert letter["Body"] == huge  # whole, for redrive


def test_a_batch_given_up_whole_is_in_the_ledger_and_the_metrics(db, database_url) -> None:
    from tasks.ops.metrics import PipelineCollector
    from tasks.pipeline.records import SourceMessage
    from tasks.pipeline.service import give_up, pipeline

    messages = [SourceMessage(f"gave-up-{n}", 1_700_000_000_000, '{"user_id": "u"}') for n in range(3)]
    counts = give_up(pipeline(), messages, "permanent failure: Example", "task-1")
    assert counts.dead_lettered == 3
    with db.cursor() as cur:
        cur.execute("SELECT reason FROM dead_letters WHERE message_id LIKE 'gave-up-%'")
        assert [r[0] for r in cur.fetchall()] == ["permanent failure: Example"] * 3
    db.rollback()
    metrics = {m.name: m.samples[0].value for m in PipelineCollector().collect()}
    assert metrics["login_pipeline_dead_lettered"] == 3
    assert len(dead_letters()) == 3


def _string_attributes(**values: str) -> dict[str, dict[str, str]]:
    return {name: {"DataType": "String", "StringValue": value} for name, value in values.items()}


# Originals no signature holds for: each used to raise out of the fetch's reading of its
# batch (issue 18), so that no batchmate was written.
CRAFTED_ORIGINALS = [
    _string_attributes(source_message_id="x", source_sent_timestamp="1", source_message_signature="1:\u00e9"),
    _string_attributes(
        source_message_id="x", source_sent_timestamp="9" * 5000, source_message_signature="1:" + "0" * 64
    ),
    _string_attributes(
        source_message_id="x", source_sent_timestamp="1", source_message_signature="9" * 5000 + ":" + "0" * 64
    ),
    {"source_message_signature": {"DataType": "Binary", "BinaryValue": b"\xff\x00"}},
    _string_attributes(source_message_id="\u0661", source_sent_timestamp="\u0661", source_message_signature="1"),
]


def _send_crafted(queue: str, good: list[str], crafted: list[str]) -> dict[str, str]:
    """One SendMessageBatch: good bodies, and crafted originals on bodies of their own,
    interleaved; returns SQS's MessageId of each crafted message -> its body."""
    entries = [{"Id": f"good-{i}", "MessageBody": body} for i, body in enumerate(good)]
    for i, (body, attributes) in enumerate(zip(crafted, CRAFTED_ORIGINALS, strict=True)):
        entries.insert(2 * i + 1, {"Id": f"crafted-{i}", "MessageBody": body, "MessageAttributes": attributes})
    response = aws.client("sqs").send_message_batch(QueueUrl=aws.queue_url(queue), Entries=entries)
    assert not response.get("Failed")
    return {e["MessageId"]: crafted[int(e["Id"].split("-")[1])] for e in response["Successful"] if "crafted" in e["Id"]}


def test_crafted_originals_cost_their_batchmates_nothing(worker, db) -> None:
    """The good batchmates are rows before any message could come back (the source
    visibility timeout); each crafted message keeps its own SQS id: a row if its body
    is good, a dead letter with its body's reason if not."""
    good = [b for b, valid in seed.generate(12) if valid][:5]
    crafted = [json.dumps({"user_id": f"crafted-{i}", "ip": "10.9.9.9"}) for i in range(4)] + ["{not json"]
    own_ids = _send_crafted(config.SOURCE_QUEUE, good, crafted)
    totals = drained(db, 10, timeout=config.SOURCE_VISIBILITY_TIMEOUT)
    assert (totals["rows"], totals["dead_letters"], totals["duplicates"]) == (9, 1, 0)
    with db.cursor() as cur:
        cur.execute("SELECT message_id FROM user_logins WHERE user_id LIKE 'crafted-%'")
        assert {r[0] for r in cur.fetchall()} == {i for i, body in own_ids.items() if body != "{not json"}
    db.rollback()
    [letter] = dead_letters()
    assert letter["MessageAttributes"]["reason"]["StringValue"] == "body is not JSON"


def test_redrive_moves_crafted_dead_letters_under_their_own_ids_and_exits_0(worker, db) -> None:
    good = [b for b, valid in seed.generate(12) if valid][:5]
    crafted = [json.dumps({"user_id": f"crafted-{i}", "ip": "10.9.9.9"}) for i in range(5)]
    own_ids = _send_crafted(config.DEAD_LETTER_QUEUE, good, crafted)
    result = python_m_tasks("redrive", timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[0].startswith("moved 10 messages"), result.stdout
    totals = drained(db, 10)
    assert (totals["rows"], totals["dead_letters"]) == (10, 0)
    with db.cursor() as cur:
        cur.execute("SELECT message_id FROM user_logins WHERE user_id LIKE 'crafted-%'")
        assert {r[0] for r in cur.fetchall()} == set(own_ids)
    db.rollback()


def test_redrive_shows_a_producers_reason_attribute_escaped(db) -> None:
    """A message SQS itself moved to the DLQ keeps the attributes its producer gave it,
    `reason` too: redrive prints it, its C1 control and newline escaped."""
    reason = "ip 198.51.100.77 of user alice@example.com\x9b2J\x85\n[05:00:00] INFO forged line"
    aws.client("sqs").send_message(
        QueueUrl=aws.queue_url(config.DEAD_LETTER_QUEUE),
        MessageBody=json.dumps({"user_id": "u"}),
        MessageAttributes={"reason": {"DataType": "String", "StringValue": reason}},
    )
    result = python_m_tasks("--debug", "redrive", "--dry-run", timeout=120)
    assert result.returncode == 0, result.stderr
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", result.stdout + result.stderr), repr(result.stdout)
    forged = "ip 198.51.100.77 of user alice@example.com\\x9b2J\\x85\\n[05:00:00] INFO forged line"
    assert result.stdout.splitlines()[1:] == [f"       1  {'other':<16}  {forged}"]


def _cpu_seconds(process_id: int) -> float:
    """CPU time of a process and its children (user and system), as the kernel counts it."""
    import psutil

    tree = psutil.Process(process_id)
    return sum(sum(p.cpu_times()[:2]) for p in [tree, *tree.children(recursive=True)])


def test_a_hostile_event_dead_letters_with_its_reason_and_its_batchmates_are_rows(worker, db) -> None:
    """90,000 combining marks took 24.6 s of CPU, and its batch 25.8 s; control characters
    in the masked fields are refused as in the others. Measured as the worker's CPU time."""
    from tests.unit.test_records import worst_normalisation_case

    good = [b for b, valid in seed.generate(12) if valid][:6]
    control = "contains a control or bidirectional formatting character"
    hostile = {
        json.dumps(
            {"user_id": worst_normalisation_case(90_000)}, ensure_ascii=False
        ): "user_id is longer than 128 characters",
        json.dumps({"user_id": "u", "device_id": "d-1\nforged"}): f"device_id {control}",
        json.dumps({"user_id": "u", "ip": "10.0.0.1\x1b]52;c;eA==\x07"}): f"ip {control}",
    }
    before = _cpu_seconds(worker.process.pid)
    seed.send(config.SOURCE_QUEUE, good[:3] + list(hostile) + good[3:])
    totals = drained(db, 9)
    cpu = _cpu_seconds(worker.process.pid) - before
    with db.cursor() as cur:
        cur.execute("SELECT max(seconds) FROM ingest_batches")
        longest = cur.fetchone()[0]
    db.rollback()
    print(f"worker CPU for 9 events, one of 90,000 combining marks: {cpu:.2f} s; longest batch {longest:.2f} s")
    assert (totals["rows"], totals["dead_letters"]) == (6, 3)
    assert sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dead_letters()) == sorted(hostile.values())
    assert cpu < 10  # generous: the worker idles, fetches and commits too; the attack alone was 24.6 s
