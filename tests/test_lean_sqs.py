"""The lean SQS calls against the real LocalStack answer as boto3 does, errors included."""

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tasks.broker import aws
from tasks.broker.lean_sqs import LeanSQS

pytestmark = pytest.mark.usefixtures("test_stack")

RECEIVE = {
    "MaxNumberOfMessages": 10,
    "VisibilityTimeout": 30,
    "MessageSystemAttributeNames": ["SentTimestamp"],
    "MessageAttributeNames": ["source_message_id"],
}


def test_a_receive_and_a_delete_answer_as_boto3s_do() -> None:
    boto, lean = aws.client("sqs"), aws.lean_sqs()
    url = boto.create_queue(QueueName="lean-calls")["QueueUrl"]
    bodies = ['{"ip": "10.0.0.1", "é": "\\u2028"}', "not json", "x" * 200_000]
    for body in bodies:
        boto.send_message(
            QueueUrl=url,
            MessageBody=body,
            MessageAttributes={"source_message_id": {"DataType": "String", "StringValue": "id-1"}},
        )
    got = []
    while len(got) < len(bodies) and (messages := lean.receive_message(QueueUrl=url, **RECEIVE).get("Messages")):
        got += messages
    assert sorted(m["Body"] for m in got) == sorted(bodies)
    for message in got:
        assert {"MessageId", "ReceiptHandle", "MD5OfBody", "Body", "Attributes"} <= set(message)
        assert message["Attributes"]["SentTimestamp"].isdigit()
        assert message["MessageAttributes"]["source_message_id"]["StringValue"] == "id-1"
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
    entries.append({"Id": "stale", "ReceiptHandle": "not-a-receipt-handle"})
    theirs_failed = boto.delete_message_batch(QueueUrl=url, Entries=entries[-1:])["Failed"]
    answer = lean.delete_message_batch(QueueUrl=url, Entries=entries)
    assert len(answer["Successful"]) == len(bodies)
    assert [f["Code"] for f in answer["Failed"]] == [f["Code"] for f in theirs_failed]
    boto.delete_queue(QueueUrl=url)


def test_an_error_is_botocores_error_with_botocores_code() -> None:
    boto, lean = aws.client("sqs"), aws.lean_sqs()
    gone = boto.get_queue_url(QueueName="login-queue")["QueueUrl"].replace("login-queue", "no-such-queue")
    with pytest.raises(ClientError) as theirs:
        boto.receive_message(QueueUrl=gone)
    with pytest.raises(ClientError) as ours:
        lean.receive_message(QueueUrl=gone)
    assert ours.value.response["Error"]["Code"] == theirs.value.response["Error"]["Code"]


def test_an_unreachable_endpoint_is_botocores_connection_error() -> None:
    with pytest.raises(EndpointConnectionError):
        LeanSQS("http://127.0.0.1:9", "us-east-1", aws.credentials()).receive_message(QueueUrl="http://x/q")
