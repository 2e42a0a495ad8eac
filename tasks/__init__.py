"""Thin Prefect tasks over the driftloop library."""

# Tasks that talk to a server (MLflow, the S3 remote) retry with back-off for about half a
# minute: long enough to ride out a server restart, short enough that an outage fails the run
# (cleanly: registration is the last step and is atomic) instead of hanging it.
SERVER_RETRIES = {"retries": 5, "retry_delay_seconds": [1, 2, 4, 8, 15]}
