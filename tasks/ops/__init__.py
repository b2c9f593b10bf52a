"""The operator's side: the command line, provisioning, status, redrive, recovery, sweep,
the liveness probe, metrics and Flower on SQS. Ships in the image."""
