"""The HTTP contract: limits, request JSON Schemas, response models and the problem answer.

What /openapi.json states is exactly what the parsers (:mod:`driftloop.serving.parsing`) take:
one of ``text``/``texts``, non-empty texts without NUL within the configured limits, UTF-8 JSON
only, and every refusal a 4xx naming its field. Pure: no FastAPI here (pydantic describes the
response shapes for the OpenAPI document).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from driftloop.config.settings import ServingSettings

JSON_MEDIA_TYPE = "application/json"
MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 200
FEEDBACK_BODY_LIMIT = 64 * 1024
# At most this many problems are listed in one answer (enough to fix; the answer stays small
# however many fields a body has), and a field name is shown up to this many characters.
MAX_PROBLEMS = 10
MAX_FIELD_SHOWN = 64

# What str.isspace() calls whitespace, as a regex class every dialect reads alike (Python's \s
# matches these, ECMA's \s differs: it has U+FEFF and lacks U+001C-U+001F and U+0085). A text
# of only these is refused, so the schema's pattern says so in these exact characters.
SPACE_CLASS = r"\t-\r\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A text the server takes: no NUL (U+0000) anywhere, at least one character that is not
# whitespace. (Length limits are minLength/maxLength beside it.)
TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{SPACE_CLASS}][^\u0000]*$"


def predict_body_limit(cfg: ServingSettings) -> int:
    """The largest /predict body that could be valid: every text escaped at its longest (12 bytes
    a char, a surrogate pair written as \\uXXXX\\uXXXX), plus room for the keys."""
    return cfg.max_batch * (cfg.max_text_chars * 12 + 8) + 1024


class BadRequest(Exception):
    """A request the client must fix; ``problems`` are (field, message) pairs."""

    def __init__(self, status: int, kind: str, problems: list[tuple[str, str]], retry_after: int | None = None):
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.status = status
        self.kind = kind
        self.problems = problems
        self.retry_after = retry_after  # whole seconds, sent as Retry-After (429, 503)

    def body(self) -> bytes:
        """The problem answer as JSON: ``detail`` and the same problems as ``errors``."""
        return json.dumps(
            {"detail": str(self), "errors": [{"field": f, "message": m} for f, m in self.problems]}
        ).encode()


def overloaded(retry_after_s: int, why: str) -> BadRequest:
    """The 503 of a server holding as many texts as it may (``why``: which limit)."""
    return BadRequest(
        503, "overloaded", [("model", f"busy: {why}; retry after {retry_after_s} s")], retry_after=retry_after_s
    )


def rate_limited(retry_after_s: int, rate_per_s: float) -> BadRequest:
    """The 429 of a caller over its rate."""
    return BadRequest(
        429,
        "rate_limited",
        [("caller", f"over this caller's rate of {rate_per_s:g} texts a second; retry after {retry_after_s} s")],
        retry_after=retry_after_s,
    )


def slow_body(timeout_s: float) -> BadRequest:
    """The 408 of a body that did not arrive in time."""
    return BadRequest(408, "slow_body", [("body", f"not received within {timeout_s:g} s of the request's headers")])


def clip(name: str) -> str:
    """A field name as shown in a problem: at most :data:`MAX_FIELD_SHOWN` characters."""
    return name if len(name) <= MAX_FIELD_SHOWN else name[: MAX_FIELD_SHOWN - 3] + "..."


def too_large(limit: int) -> BadRequest:
    """The 413 for a body over ``limit`` bytes."""
    return BadRequest(413, "too_large", [("body", f"larger than the limit of {limit} bytes")])


# -- request schemas (the bodies are parsed by hand, see driftloop.serving.parsing) --------------


def _text_schema(max_chars: int, description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": TEXT_PATTERN,
        "description": f"{description}: 1 to {max_chars} characters, not only whitespace, no NUL (U+0000)",
    }


def request_schemas(cfg: ServingSettings) -> dict[str, dict[str, Any]]:
    """The JSON Schemas of the request bodies, exactly as :func:`~driftloop.serving.parsing.parse_predict`
    and :func:`~driftloop.serving.parsing.parse_feedback` judge them (OpenAPI components; the
    limits come from ``cfg``)."""
    text = _text_schema(cfg.max_text_chars, "one text to classify")
    return {
        "OneText": {
            "title": "OneText",
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {"text": text},
            "examples": [{"text": "my card has not arrived yet"}],
        },
        "ManyTexts": {
            "title": "ManyTexts",
            "type": "object",
            "required": ["texts"],
            "additionalProperties": False,
            "properties": {
                "texts": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": cfg.max_batch,
                    "items": _text_schema(cfg.max_text_chars, "a text"),
                    "description": f"several texts, 1 to {cfg.max_batch} (serving.max_batch)",
                }
            },
            "examples": [{"texts": ["I lost my card", "what is the exchange rate?"]}],
        },
        "PredictRequest": {
            "title": "PredictRequest",
            "description": "Exactly one of `text` (one text) or `texts` (a batch); no other field.",
            "oneOf": [{"$ref": "#/components/schemas/OneText"}, {"$ref": "#/components/schemas/ManyTexts"}],
        },
        "FeedbackRequest": {
            "title": "FeedbackRequest",
            "type": "object",
            "required": ["request_id", "label"],
            "additionalProperties": False,
            "properties": {
                "request_id": _text_schema(MAX_ID_CHARS, "the request_id /predict answered with"),
                "label": _text_schema(MAX_LABEL_CHARS, "the true intent; may be one the model does not know yet"),
            },
            "examples": [{"request_id": "3f0c2a9e8d6b4c1fa7e5d2b9c8a1f0e4", "label": "card_arrival"}],
        },
    }


# -- response shapes -----------------------------------------------------------------------------


class PredictionOut(BaseModel):
    """One text's answer in a /predict response."""

    request_id: str = Field(description="server-generated id; send it back with /feedback")
    intent: str
    confidence: float


class PredictResponse(BaseModel):
    """The /predict response: the answering version and one prediction per text."""

    model_version: str
    predictions: list[PredictionOut]


class FeedbackAccepted(BaseModel):
    """The /feedback response once the label is recorded."""

    status: str = Field(description='always "accepted"')
    request_id: str = Field(description="the request_id as recorded (surrounding whitespace dropped)")


class Health(BaseModel):
    """The /health response."""

    status: str = Field(description='always "ok"')
    model_version: str | None = Field(description="the serving version; null before one is loaded")


class Ready(BaseModel):
    """The /ready response once a model is loaded."""

    status: str = Field(description='"ready"')
    model: str
    model_version: str


class NotReady(BaseModel):
    """The /ready response before a model is loaded."""

    status: str = Field(description='"not ready"')
    detail: str


class Problem(BaseModel):
    """One problem of a refused request."""

    field: str = Field(
        description="the field, header or part of the request concerned: text, texts[3], "
        "label, body, Content-Type, Authorization, model (not ready, or busy), caller (over its rate)"
    )
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx (and every 503: no model loaded yet, or busy): the problems, each naming its field."""

    detail: str = Field(description="every problem, each prefixed with the field it concerns")
    errors: list[Problem] = Field(description="the same problems as {field, message}")


# -- the OpenAPI descriptions of the answers -----------------------------------------------------

OpenApiResponses = dict[int | str, dict[str, Any]]


def error_responses(codes: dict[int, str]) -> OpenApiResponses:
    """OpenAPI ``responses`` entries with the :class:`ErrorResponse` model, one per status."""
    return {code: {"model": ErrorResponse, "description": text} for code, text in codes.items()}


def body_error_responses(predict_body_limit: int) -> OpenApiResponses:
    """The answers every endpoint with a JSON body can give about that body (400, 413, 415, 422)."""
    return error_responses(
        {
            400: "the body is empty, not UTF-8, not JSON, or nested too deeply to parse (field: body)",
            413: f"the body is larger than any valid request could be (field: body; /predict: {predict_body_limit} "
            f"bytes, /feedback: {FEEDBACK_BODY_LIMIT})",
            415: "Content-Type is missing or not application/json (charset, when given, utf-8; field: Content-Type)",
            422: "well-formed JSON that breaks the contract: not an object, an unknown, missing, repeated or "
            "empty field, a text too long, a batch too large, a NUL character; each problem names its field",
        }
    )


RETRY_AFTER_HEADER: dict[str, Any] = {
    "Retry-After": {
        "description": "whole seconds to wait before trying again (429, and 503 when busy)",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def bounded_responses(rate_limited: bool) -> OpenApiResponses:
    """The answers of /predict's bounds: 408 (slow body), 503 (not ready, or busy) and, with a
    rate limit, 429."""
    responses = error_responses(
        {
            408: "the body did not arrive within serving.body_timeout_s of the headers (field: body)",
            503: "no model loaded yet (field: model; retry when /ready says 200), or busy: the texts in flight "
            "(serving.max_in_flight) or waiting for the model (serving.max_queued_texts) are at their limit "
            "(field: model; Retry-After)",
        }
    )
    responses[503]["headers"] = RETRY_AFTER_HEADER
    if rate_limited:
        responses[429] = {
            "model": ErrorResponse,
            "description": "this caller is over its rate (serving.rate_limit_per_s texts a second; field: caller)",
            "headers": RETRY_AFTER_HEADER,
        }
    return responses


REQUEST_ID_HEADER: dict[str, Any] = {
    "X-Request-Id": {
        "description": "the HTTP exchange's id: the caller's own X-Request-Id when it is plain "
        "([A-Za-z0-9._:-]{1,128}), else a new one",
        "schema": {"type": "string"},
    }
}


def request_body(schema_name: str) -> dict[str, Any]:
    """An operation's ``requestBody`` naming one of :func:`request_schemas` (``openapi_extra``)."""
    return {
        "requestBody": {
            "required": True,
            "content": {JSON_MEDIA_TYPE: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}},
        }
    }


BEARER_SCHEME = "bearerAuth"


def bearer_security_scheme(token_env: str) -> dict[str, Any]:
    """The OpenAPI security scheme of the /feedback token (only when the server has one)."""
    return {
        "type": "http",
        "scheme": "bearer",
        "description": f"the token in ${token_env} (serving.api_token_env)",
    }
