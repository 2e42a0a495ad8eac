"""driftloop's Prefect flows."""

from __future__ import annotations

from pathlib import Path

from prefect.utilities.hashing import file_hash


def source_version(path: str) -> str:
    """The version Prefect would give a flow defined in ``path``: the hash of that file.

    Prefect hashes the file of the flow's function; under :func:`driftloop.adapters.tracing.traced_flow`
    that function is a wrapper from ``tracing.py``, so every traced flow would get tracing.py's
    hash. The flows pass their own file instead, so a version in the UI changes with the flow.
    """
    return file_hash(str(Path(path).resolve()))
