"""SQS as Celery's broker: the transport that carries Flower and `celery inspect`, the
batch task's request as inspect shows it, and the boto3 clients."""
