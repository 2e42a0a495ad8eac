"""The bearer token /feedback requires: read from the environment, checked in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from driftloop.config.settings import ServingSettings
from driftloop.core.errors import InputError


class MissingApiToken(InputError, RuntimeError):
    """``serving.require_token`` is true and the token's environment variable is unset."""


def read_api_token(cfg: ServingSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    """The bearer token /feedback requires, from the variable ``cfg.api_token_env``.

    None (no token: /feedback is open) only when ``cfg.require_token`` is false; otherwise an
    unset or empty variable raises :class:`MissingApiToken`, so the app refuses to start.
    Surrounding whitespace is dropped: a Secret made from a file often ends in a newline."""
    token = environ.get(cfg.api_token_env, "").strip()
    if token:
        return token
    if cfg.require_token:
        raise MissingApiToken(
            f"serving.require_token is true but ${cfg.api_token_env} is unset or empty: export it "
            f"(a long random secret, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            f"or set serving.require_token: false to leave /feedback open on a trusted loopback"
        )
    return None


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of the ``Authorization`` header: None without one, empty when not Bearer."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            return credentials.strip() if scheme.lower() == b"bearer" else b""
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not let through: the problem's message and the ``WWW-Authenticate`` challenge."""

    message: str
    challenge: str


class TokenCheck:
    """Lets a request through when it carries the expected bearer token (or when there is none)."""

    def __init__(self, token: str | None):
        self._expected = token.encode() if token else None

    @property
    def required(self) -> bool:
        """Whether a token is required at all (False: /feedback is open)."""
        return self._expected is not None

    def holds(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the request carries the expected token (False when there is none to hold);
        compared in constant time, before the body is read."""
        expected = self._expected
        if expected is None:
            return False
        given = bearer(headers)
        return bool(given) and hmac.compare_digest(given, expected)  # type: ignore[arg-type]

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> Refusal | None:
        """None when the request may pass; else why not (missing or wrong token)."""
        expected = self._expected
        if expected is None:
            return None
        given = bearer(headers)
        # compare_digest: the time taken must not tell how much of a guess was right.
        if given and hmac.compare_digest(given, expected):
            return None
        message = "missing; send 'Authorization: Bearer <token>'" if given is None else "not the expected bearer token"
        challenge = 'Bearer realm="driftloop"' + ("" if given is None else ', error="invalid_token"')
        return Refusal(message, challenge)
