"""Request ids: the server-made id of each answered text, and the id of each HTTP exchange."""

from __future__ import annotations

import os
import re

_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random RFC 4122 version-4 UUID as 32 hex digits, like ``uuid.uuid4().hex``.

    Built from the same 16 random bytes with the version and variant bits set by hand:
    ``uuid.UUID``'s constructor checks cost several times more than the randomness.
    """
    value = (int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR) | _UUID4_SET
    return f"{value:032x}"


# An incoming X-Request-Id is kept when it is this plain (it lands in logs and traces as it is);
# anything else is replaced by a fresh id rather than refused.
_INCOMING_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def http_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The HTTP request's id: the caller's ``X-Request-Id`` when it is plain, else a new one.

    It names the HTTP exchange (the response header, its trace span), not a prediction: each
    text answered gets its own server-made ``request_id`` in the body, the key of /feedback,
    which a caller must not be able to choose."""
    for name, value in headers:
        if name == b"x-request-id":
            if _INCOMING_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()
