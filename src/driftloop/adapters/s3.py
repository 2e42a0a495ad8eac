"""The S3 adapter for the stack's object store (SeaweedFS): a client, a readiness probe, the bucket.

DVC reaches the same bucket through its own S3 remote (adapters.versioning); this module is for the
stack's set-up, and the object store the prediction and feedback logs live in on the stack
(:class:`ObjectStore`, used by adapters.logremote).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from driftloop.adapters.private import write_private
from driftloop.core.errors import DriftloopError, RunFailed, ServerUnreachable


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


# -- the object store the logs live in (adapters.logremote) -----------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key (from the bucket's root), size in bytes and last change."""

    key: str
    size: int
    modified: datetime


# An object that is not there, a condition that did not hold: answers, not failures.
_MISSING = {"404", "NoSuchKey", "NotFound"}
_PRECONDITION = {"412", "PreconditionFailed", "ConditionalRequestConflict", "409"}


class ObjectStore:
    """One bucket of an S3-compatible server (SeaweedFS on the stack), through boto3.

    Every failure that is not an answer (a missing key, a condition that did not hold) raises
    :class:`~driftloop.core.errors.ServerUnreachable` (no answer) or
    :class:`~driftloop.core.errors.RunFailed` (an error answer), naming the server's URL, the
    operation and the key. Keys come from the environment's credentials (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``) unless given. Thread-safe (boto3 clients are)."""

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        timeout_s: float = 10.0,
    ):
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self._credentials = (access_key, secret_key)
        self._timeout_s = timeout_s
        self._client: Any = None
        self._client_lock = threading.Lock()

    @property
    def _s3(self) -> Any:
        """The boto3 client, made on first use: a serving process that forks its workers first
        imports boto3 in each worker, after the fork, and only once it ships a part."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    access_key, secret_key = self._credentials
                    # boto3's own retries (3 tries, with backoff) on throttling and 5xx; a refused
                    # connection fails within connect_timeout so that a writer's shipper simply
                    # tries again later.
                    self._client = boto3.client(
                        "s3",
                        endpoint_url=self.endpoint_url,
                        aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key,
                        region_name="us-east-1",
                        config=Config(
                            retries={"max_attempts": 3, "mode": "standard"},
                            connect_timeout=min(self._timeout_s, 3.0),
                            read_timeout=self._timeout_s,
                            max_pool_connections=16,
                        ),
                    )
        return self._client

    @property
    def url(self) -> str:
        """The server and bucket, for messages."""
        return f"{self.endpoint_url or 'https://s3.amazonaws.com'} (bucket {self.bucket})"

    def _fail(self, op: str, key: str, exc: Exception) -> DriftloopError:
        from botocore.exceptions import ClientError

        where = f"S3 {op} s3://{self.bucket}/{key} at {self.endpoint_url or 'AWS'}"
        if isinstance(exc, ClientError):
            return RunFailed(f"{where} failed: {exc}")
        return ServerUnreachable(f"{where}: the server did not answer ({type(exc).__name__}: {exc})", self.endpoint_url)

    @staticmethod
    def _code(exc: Exception) -> str | None:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return None
        err = exc.response.get("Error", {})
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return str(err.get("Code") or status) if err.get("Code") else status

    def objects(self, prefix: str, start_after: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` whose key sorts after ``start_after``, in key order."""
        out: list[ObjectInfo] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(**kwargs):
                out.extend(ObjectInfo(o["Key"], int(o["Size"]), o["LastModified"]) for o in page.get("Contents", []))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        return out

    def dirs(self, prefix: str) -> list[str]:
        """The "folders" right under ``prefix`` (which ends with "/"): their names, without the prefix."""
        out: list[str] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                out.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        except Exception as exc:
            raise self._fail("list", prefix, exc) from exc
        return out

    def get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is no such key."""
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=key)
            return got["Body"].read(), str(got["ETag"])
        except Exception as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._fail("get", key, exc) from exc

    def download(self, key: str, path: Path) -> bool:
        """Copy the object to ``path`` (through a temp file beside it, renamed: a reader never sees
        half a file); False when there is no such key."""
        got = self.get(key)
        if got is None:
            return False
        write_private(path, got[0], durable=False)  # 0600: a log's copy holds user text
        return True

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:
            if self._code(exc) in _MISSING:
                return False
            raise self._fail("head", key, exc) from exc

    def put(self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False) -> str | None:
        """Store ``data`` under ``key``; its ETag, or None when the condition did not hold
        (``if_none_match``: only if no such key; ``if_match``: only if the key's ETag is that)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            return str(self._s3.put_object(**kwargs)["ETag"])
        except Exception as exc:
            if (if_none_match or if_match is not None) and self._code(exc) in _PRECONDITION:
                return None
            raise self._fail("put", key, exc) from exc

    def delete(self, key: str) -> None:
        """Delete the key (nothing happens when there is none)."""
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._code(exc) in _MISSING:
                return
            raise self._fail("delete", key, exc) from exc
