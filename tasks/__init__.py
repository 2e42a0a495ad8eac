"""Thin Prefect tasks over the driftloop library."""

# Tasks that talk to a server (MLflow, the S3 remote) retry with back-off for about a minute:
# long enough to ride out a server restart (an MLflow server takes 25-45 s to start on 2 busy
# cores), short enough that an outage fails the run (cleanly: registration is the last step and
# is atomic) instead of hanging it.
SERVER_RETRIES = {"retries": 6, "retry_delay_seconds": [1, 2, 5, 10, 20, 30]}
