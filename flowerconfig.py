"""Flower's settings (`celery -A tasks flower --conf=flowerconfig.py`), from celeryconfig.

Basic auth comes from FLOWER_BASIC_AUTH ("user:password"); without it Flower listens
on 127.0.0.1 only, as the embedded stack runs it. The pipeline's own counters join
Flower's /metrics (tasks.metrics).
"""

import os

import celeryconfig as config
from tasks.ops import metrics

address = config.FLOWER_ADDRESS
port = config.FLOWER_PORT
if config.FLOWER_BASIC_AUTH:
    basic_auth = [config.FLOWER_BASIC_AUTH]
elif address in ("127.0.0.1", "localhost"):
    # Open on the loopback only (the embedded stack); Flower 2 closes its API without auth.
    os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
else:
    raise SystemExit("Flower on a non-local address needs FLOWER_BASIC_AUTH")
# Task arguments are shown as their argsrepr ("batch of 250 messages"), never records.
max_tasks = 10000
metrics.register()
