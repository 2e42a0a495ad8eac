"""The S3 adapter for the stack's object store (SeaweedFS): a client, a readiness probe, the bucket.

DVC reaches the same bucket through its own S3 remote (adapters.versioning); this module is for the
stack's set-up and for reading what landed there.
"""

from __future__ import annotations

from typing import Any


def client(endpoint_url: str, access_key: str, secret_key: str) -> Any:
    """A boto3 S3 client with one attempt per call.

    The callers are the readiness probe (its wait paces the tries) and the bucket set-up right after
    the probe answered; not the server-call retry policy (driftloop.core.retry).
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5),
    )


def ready(s3: Any) -> bool:
    """Whether the S3 gateway answers a bucket listing."""
    try:
        s3.list_buckets()
        return True
    except Exception:  # noqa: BLE001  not up yet: connection refused, 503 while the filer starts
        return False


def ensure_bucket(s3: Any, bucket: str) -> None:
    """Create ``bucket`` unless it exists."""
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
