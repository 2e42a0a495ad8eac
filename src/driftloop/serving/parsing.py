"""Request bodies read and judged by hand, straight from raw ASGI messages.

FastAPI's model binding costs about as much per request as the model does, so the bodies are
parsed here: the size and media type are checked before the body is read, the JSON decoded once,
and every refusal is a :class:`~driftloop.serving.contract.BadRequest` naming its field, exactly
as the request schemas of :mod:`driftloop.serving.contract` state.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from driftloop.config.settings import ServingSettings
from driftloop.serving.contract import (
    MAX_ID_CHARS,
    MAX_LABEL_CHARS,
    MAX_PROBLEMS,
    BadRequest,
    clip,
    too_large,
)

# The ASGI types, as Starlette spells them (no Starlette import here).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_JSON_TYPE = b"application/json"


class Disconnected(Exception):
    """The client went away before its body arrived; there is no one to answer."""


class _Repeated(dict[str, Any]):
    """A JSON object that named a key more than once (the keys in ``repeated``); json keeps the
    last value silently, the server refuses instead of guessing which was meant."""

    repeated: list[str]


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        _Repeated: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def unsupported_type(content_type: bytes | None) -> BadRequest | None:
    """The 415 for a body that is not declared as UTF-8 JSON; None when it is.

    ``application/json``, any case, with ``charset=utf-8`` or no charset: JSON is UTF-8
    (RFC 8259), and a form, a text/plain body or an undeclared one is refused rather than
    guessed at."""
    if content_type == _JSON_TYPE:
        return None  # the usual case: one comparison
    if content_type is None:
        return BadRequest(
            415, "unsupported_media_type", [("Content-Type", "missing; send 'Content-Type: application/json'")]
        )
    shown = clip(content_type.decode("latin-1"))
    media, _, params = content_type.partition(b";")
    if media.strip().lower() != _JSON_TYPE:
        return BadRequest(
            415, "unsupported_media_type", [("Content-Type", f"{shown!r} is not accepted; send 'application/json'")]
        )
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if name.strip().lower() == b"charset" and value.strip().strip(b'"').lower() not in (b"utf-8", b"utf8"):
            return BadRequest(
                415,
                "unsupported_media_type",
                [("Content-Type", f"{shown!r}: the body must be UTF-8 JSON (charset=utf-8)")],
            )
    return None


async def receive_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body from raw ASGI messages: more than ``limit`` bytes is refused (413), and
    so is a body not declared as JSON (415), both before it is read. Raises
    :class:`Disconnected` when the client left first."""
    length = content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"content-type" and content_type is None:
            content_type = value
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_large(limit)
    if content_type != _JSON_TYPE:
        refused = unsupported_type(content_type)
        if refused is not None:
            raise refused
    message = await receive()
    if message["type"] != "http.request":
        raise Disconnected()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: the whole body in one message
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    out = _Repeated(obj)
    out.repeated = sorted({k for k, _ in pairs if k in seen or seen.add(k)})  # type: ignore[func-returns-value]
    return out


# One decoder for every body (json.loads with options builds one per call). Integers are read
# as floats: a valid body holds none, and int() refuses more than 4,300 digits with an error
# about the interpreter (a float just overflows to inf, named as "a number" in its field).
# Nesting deeper than the interpreter's recursion limit raises RecursionError (caught below).
_DECODER = json.JSONDecoder(parse_int=float, object_pairs_hook=_object)


def _parse_json_object(body: bytes, shape: str) -> dict[str, Any]:
    if not body:
        raise BadRequest(400, "invalid_json", [("body", f"empty; expected a JSON object like {shape}")])
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(400, "invalid_utf8", [("body", f"not valid UTF-8 (byte {exc.start}: {exc.reason})")]) from None
    try:
        value = _DECODER.decode(decoded)
    except RecursionError:
        raise BadRequest(
            400, "invalid_json", [("body", f"nested too deeply to parse; expected a JSON object like {shape}")]
        ) from None
    except ValueError as exc:
        problem = (
            "starts with a byte order mark (U+FEFF); send JSON without one"
            if decoded[:1] == "\ufeff"
            else f"not valid JSON: {exc}"
        )
        raise BadRequest(400, "invalid_json", [("body", problem)]) from None
    if not isinstance(value, dict):
        raise BadRequest(
            422, "invalid_request", [("body", f"expected a JSON object like {shape}, got {_type_name(value)}")]
        )
    if type(value) is _Repeated:
        raise BadRequest(
            422,
            "invalid_request",
            [(clip(k), "given more than once; send each field once") for k in value.repeated[:MAX_PROBLEMS]],
        )
    return value


def _check_text(field: str, value: Any, max_chars: int, problems: list[tuple[str, str]]) -> None:
    if not isinstance(value, str):
        problems.append((field, f"expected a string, got {_type_name(value)}"))
    elif not value or value.isspace():
        problems.append((field, "must not be empty or only whitespace"))
    elif len(value) > max_chars:
        problems.append((field, f"{len(value)} characters, more than the limit of {max_chars}"))
    elif "\x00" in value:
        # Never language, and no store downstream keeps it (PostgreSQL text, C strings, CSV tools).
        problems.append((field, "contains a NUL character (\\u0000), which a text must not"))


_PREDICT_FIELDS = {"text", "texts"}
_FEEDBACK_FIELDS = {"request_id", "label"}


def _unknown_fields(value: dict[str, Any], known: set[str], expected: str, problems: list[tuple[str, str]]) -> None:
    if not value.keys() <= known:  # the usual case: no unknown field, no set built
        for key in sorted(set(value) - known)[:MAX_PROBLEMS]:
            problems.append((clip(key), f"unknown field; expected {expected}"))


def parse_predict(body: bytes, cfg: ServingSettings) -> list[str]:
    """The texts of a /predict body, or :class:`BadRequest` naming every offending field."""
    shape = '{"text": "..."} or {"texts": ["...", ...]}'
    value = _parse_json_object(body, shape)
    problems: list[tuple[str, str]] = []
    _unknown_fields(value, _PREDICT_FIELDS, "'text' or 'texts'", problems)
    has_text, has_texts = "text" in value, "texts" in value
    if has_text and has_texts:
        problems.append(("text", "give either 'text' or 'texts', not both"))
    elif not has_text and not has_texts:
        problems.append(("text", f"missing; expected {shape}"))
    texts: list[str] = []
    if has_text and not has_texts:
        _check_text("text", value["text"], cfg.max_text_chars, problems)
        texts = [value["text"]]
    elif has_texts and not has_text:
        raw = value["texts"]
        if not isinstance(raw, list):
            problems.append(("texts", f"expected a list of strings, got {_type_name(raw)}"))
        elif not raw:
            problems.append(("texts", "must hold at least one text"))
        elif len(raw) > cfg.max_batch:
            problems.append(("texts", f"{len(raw)} texts, more than the limit of {cfg.max_batch} per request"))
        else:
            for i, text in enumerate(raw):
                _check_text(f"texts[{i}]", text, cfg.max_text_chars, problems)
                if len(problems) >= MAX_PROBLEMS:
                    break
            texts = raw
    if problems:
        raise BadRequest(422, "invalid_request", problems[:MAX_PROBLEMS])
    return texts


def parse_feedback(body: bytes) -> tuple[str, str]:
    """(request_id, label) of a /feedback body, or :class:`BadRequest`."""
    value = _parse_json_object(body, '{"request_id": "...", "label": "..."}')
    problems: list[tuple[str, str]] = []
    _unknown_fields(value, _FEEDBACK_FIELDS, "'request_id' and 'label'", problems)
    for key, limit in (("request_id", MAX_ID_CHARS), ("label", MAX_LABEL_CHARS)):
        if key not in value:
            problems.append((key, "missing"))
        else:
            _check_text(key, value[key], limit, problems)
    if problems:
        raise BadRequest(422, "invalid_request", problems[:MAX_PROBLEMS])
    return value["request_id"].strip(), value["label"].strip()


def field_of(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the field name the problem answer shows (``texts[3]``)."""
    parts = list(loc[1:] if loc and loc[0] in {"body", "query", "path", "header"} else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"
