"""Flower's settings (`celery -A tasks flower --conf=flowerconfig.py`), from celeryconfig.

Basic auth comes from FLOWER_BASIC_AUTH ("user:password"); without it Flower listens
on 127.0.0.1 only, as the embedded stack runs it. The pipeline's own counters join
Flower's /metrics (tasks.metrics).
"""

import celeryconfig as config
from tasks import metrics

address = config.FLOWER_ADDRESS
port = config.FLOWER_PORT
if config.FLOWER_BASIC_AUTH:
    basic_auth = [config.FLOWER_BASIC_AUTH]
elif address not in ("127.0.0.1", "localhost"):
    raise SystemExit("Flower on a non-local address needs FLOWER_BASIC_AUTH")
# Task arguments are shown as their argsrepr ("batch of 250 messages"), never records.
max_tasks = 10000
metrics.register()
