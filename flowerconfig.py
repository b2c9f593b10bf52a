"""Flower's settings (`celery -A tasks flower --conf=flowerconfig.py`), from celeryconfig.

Flower here is a read-only monitor: tasks.ops.flower checks the options Flower will
really use (after the command line too), refuses to listen beyond the loopback without
basic auth (FLOWER_BASIC_AUTH, "user:password", no empty part, a password of 12 or more
characters beyond the loopback), answers only loopback Host names without auth, keeps
every control off unless FLOWER_ALLOW_CONTROL is set, gives the Broker page SQS's queue depths and puts /metrics
behind the auth. The pipeline's own counters join Flower's /metrics (tasks.ops.metrics).
"""

import celeryconfig as config
from tasks.ops import flower, metrics

address = config.FLOWER_ADDRESS
port = config.FLOWER_PORT
if config.FLOWER_BASIC_AUTH:  # comma-separated entries, as Flower reads its own variable
    basic_auth = config.FLOWER_BASIC_AUTH.split(",")
read_only = not config.FLOWER_ALLOW_CONTROL
# Task arguments are shown as their argsrepr ("batch of 250 messages"), never records;
# a batch's result is its counts (received, inserted, duplicates, dead-lettered).
tasks_columns = "name,uuid,state,args,result,received,runtime,retries,worker"
max_tasks = 10000
flower.install()
metrics.register()
