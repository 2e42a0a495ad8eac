"""Thin Prefect tasks over the driftloop library."""

from driftloop.core.retry import server_retries

# Tasks that talk to a server (MLflow, the S3 remote) retry with back-off for about a minute: the
# one policy, driftloop.core.retry (why about a minute is there).
_RETRIES, _DELAYS = server_retries()
SERVER_RETRIES = {"retries": _RETRIES, "retry_delay_seconds": _DELAYS}
