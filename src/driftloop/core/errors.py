"""The project's own errors: expected failures whose message is enough for a person to act on.

Every error driftloop raises on purpose derives from :class:`DriftloopError`, through one of three
categories that say what the person should do next, and that the CLI turns into its exit code:

- ``InputError`` (exit 2): bad usage, configuration or input (an option, a setting, a data file,
  a row): change it and run again.
- ``RunFailed`` (exit 1): the work started and could not finish, or was refused (no challenger
  to promote, a stack that did not come up).
- ``ServerUnreachable`` (exit 3): a server (MLflow, Prefect, S3, PostgreSQL) did not answer:
  start it or correct its URL, then run again.

A message names what is wrong: the file, row, field, setting or URL. Anything else that escapes a
command is a bug and is reported with its traceback.

Existing errors keep their built-in base as well (``DataError`` is still a ``ValueError``), so
code that catches the built-in class keeps working.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit


class DriftloopError(Exception):
    """An expected failure, explained by its message; :attr:`exit_code` is the CLI's exit status."""

    exit_code: int = 1


class InputError(DriftloopError):
    """Bad usage, configuration or input: the person must change something before running again."""

    exit_code = 2


class RunFailed(DriftloopError):
    """The command ran and could not do what was asked (a failed step, a refused promotion)."""

    exit_code = 1


class ServerUnreachable(DriftloopError):
    """A server did not answer (connection refused, timed out, unknown host)."""

    exit_code = 3

    def __init__(self, message: str, url: str | None = None):
        super().__init__(message)
        self.url = url


class RegistryError(RunFailed, RuntimeError):
    """The model registry (MLflow) answered a call with an error other than "not found" (refused
    credentials, a bad request, a server error), or holds something driftloop cannot use.

    :attr:`url` is the tracking server's URL; :attr:`transient` is true for a server-side failure
    (an HTTP 5xx, a rate limit, a locked store) that the same call may survive a moment later,
    false for one that repeating the call cannot fix.
    """

    def __init__(self, message: str, url: str | None = None, *, transient: bool = False):
        super().__init__(message)
        self.url = url
        self.transient = transient


class ModelRefused(RegistryError):
    """A registered version that must not be loaded: its files are not signed by a trusted key,
    were changed after signing, or are not in driftloop's model format (e.g. a pickle). Never
    transient: the champion keeps serving and the refusal is counted and alerted on."""


# Exit statuses of the ``driftloop`` command, by category (documented in its --help).
EXIT_OK = 0
EXIT_RUN_FAILED = RunFailed.exit_code
EXIT_INPUT = InputError.exit_code
EXIT_UNREACHABLE = ServerUnreachable.exit_code


# What an unreachable server looks like at the bottom of a client library's exception chain:
# the built-in ConnectionError (refused, reset), an unknown host, or a client's own connect
# error/timeout (httpx, httpcore, requests, urllib3 name them so).
_CONNECT_FAILURES = {
    "ConnectError",
    "ConnectTimeout",
    "ConnectTimeoutError",
    "NewConnectionError",
    "NameResolutionError",
}
_URL = re.compile(r"https?://[^\s'\"()<>,]+")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``raise … from``), then what it was raised while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _reason(chain: list[BaseException]) -> str:
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if any(isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError" for e in chain):
        return "unknown host"
    if any(isinstance(e, TimeoutError) or "Timeout" in type(e).__name__ for e in chain):
        return "timed out"
    last = chain[-1]
    if isinstance(last, OSError) and last.strerror:
        return last.strerror[:1].lower() + last.strerror[1:]
    return str(last) or type(last).__name__


def _url_in(chain: list[BaseException]) -> str | None:
    for e in chain:
        try:  # httpx's and requests' errors carry the request they failed on
            return str(e.request.url)  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # none, or httpx's "request not set"
            pass
        found = _URL.search(str(e))
        if found:
            return found.group(0)
    return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def as_unreachable(exc: BaseException, servers: Mapping[str, str | None] | None = None) -> ServerUnreachable | None:
    """A :class:`ServerUnreachable` for ``exc`` when a failed connection caused it, else None.

    ``servers`` maps a description (``"the MLflow tracking server (registry.tracking_uri)"``) to
    that server's URL: the message names the one whose address the failed request went to.
    """
    if isinstance(exc, DriftloopError):
        return exc if isinstance(exc, ServerUnreachable) else None
    chain = list(exception_chain(exc))
    if not any(
        isinstance(e, (ConnectionError, socket.gaierror)) or type(e).__name__ in _CONNECT_FAILURES for e in chain
    ):
        return None
    url = _url_in(chain)
    servers = servers or {}
    what = next(
        (
            name
            for name, base in servers.items()
            if base and url and base.startswith(("http://", "https://")) and _origin(base) == _origin(url)
        ),
        None,
    )
    where = f"{what} at {servers[what]}" if what else (url or "a server")
    return ServerUnreachable(f"cannot reach {where}: {_reason(chain)}", url=servers[what] if what else url)
