"""The operator's side: provisioning, status, redrive, recovery, sweep,
the liveness probe, metrics and Flower on SQS. Ships in the image."""
