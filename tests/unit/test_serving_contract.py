"""The serving app's HTTP contract without a server: the request schemas published in
/openapi.json judge every body exactly as the hand-written parsers do, the document states the
real answers (error model, 415, Prometheus text, the bearer token), and hostile bodies are refused
with the field named (tests/integration/test_http_contract.py drives the same through real HTTP)."""

from __future__ import annotations

import json
import sys

import jsonschema
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from driftloop.config.settings import ServingSettings
from driftloop.serving.app import create_app
from driftloop.serving.contract import SPACE_CLASS, BadRequest, request_schemas
from driftloop.serving.parsing import parse_feedback, parse_predict, unsupported_type
from tests.support.fakes import FakeSource

CFG = ServingSettings(max_text_chars=10, max_batch=3)
SPACES = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]


def validators(cfg: ServingSettings, name: str):
    """The schema ``name`` as two validators: Python's regex dialect (jsonschema) and the ECMA-like
    one schemathesis checks with (jsonschema_rs), so the pattern must read the same in both."""
    document = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": request_schemas(cfg)}}
    found = [jsonschema.Draft202012Validator(document).is_valid]
    try:
        import jsonschema_rs
    except ImportError:  # without the test extra: Python's dialect only
        return found
    return [*found, jsonschema_rs.validator_for(document).is_valid]


def accepted(parse, body: bytes) -> bool:
    try:
        parse(body)
    except BadRequest as exc:
        assert 400 <= exc.status < 500  # noqa: PT017  a helper: every refusal is a 4xx
        return False
    return True


def test_the_space_class_is_exactly_what_isspace_calls_whitespace():
    import re

    cls = re.compile(f"[{SPACE_CLASS}]")
    assert [c for c in map(chr, range(sys.maxunicode + 1)) if cls.fullmatch(c)] == SPACES


TEXT_VALUES = [
    "hello",
    "x" * 10,
    "x" * 11,
    "",
    " ",
    "\t\n",
    "\ufeff",
    "\ufeff ",
    " a ",
    "\x00",
    "a\x00",
    "\x00 a",
    "a\nb",
    "a\n",
    "\n",
    "💳",
    "é" * 10,
    7,
    1.5,
    None,
    True,
    [],
    {},
    ["a"],
    *SPACES,
    *(s + "a" for s in SPACES),
    *(s * 3 for s in SPACES),
]


@pytest.mark.parametrize("text", TEXT_VALUES, ids=[repr(t)[:20] for t in TEXT_VALUES])
def test_the_predict_schema_accepts_exactly_what_the_parser_accepts(text):
    bodies = [
        {"text": text},
        {"texts": [text]},
        {"texts": ["fine", text]},
        {"text": text, "texts": [text]},
        {"texts": [text] * 4},
        {"text": text, "extra": 1},
    ]
    for payload in bodies:
        parsed = accepted(lambda b: parse_predict(b, CFG), json.dumps(payload).encode())
        for is_valid in validators(CFG, "PredictRequest"):
            assert is_valid(payload) == parsed, payload


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"text": None, "texts": None},
        {"texts": []},
        {"texts": None},
        {"txt": "a"},
        {"texts": "abc"},
        {"texts": ["a", "b", "c"]},
        {"texts": ["a", "b", "c", "d"]},
        {"text": "a", "texts": None},
    ],
    ids=repr,
)
def test_the_predict_schema_and_parser_agree_on_shapes(payload):
    parsed = accepted(lambda b: parse_predict(b, CFG), json.dumps(payload).encode())
    for is_valid in validators(CFG, "PredictRequest"):
        assert is_valid(payload) == parsed, payload


@pytest.mark.parametrize("text", TEXT_VALUES, ids=[repr(t)[:20] for t in TEXT_VALUES])
def test_the_feedback_schema_accepts_exactly_what_the_parser_accepts(text):
    def times(n: int):
        return text * n if isinstance(text, (str, list)) else text

    bodies = [
        {"request_id": text, "label": "card_arrival"},
        {"request_id": "r1", "label": text},
        {"request_id": "r1", "label": times(50)},
        {"request_id": times(30), "label": "x"},
        {"label": text},
        {"request_id": "r1", "label": text, "more": 1},
    ]
    for payload in bodies:
        parsed = accepted(parse_feedback, json.dumps(payload).encode())
        for is_valid in validators(CFG, "FeedbackRequest"):
            assert is_valid(payload) == parsed, payload


def openapi(token: str | None = "t", cfg: ServingSettings = CFG) -> dict:
    app = create_app(cfg.model_copy(update={"require_token": False}), FakeSource(), None, api_token=token or "")
    return app.openapi()


def test_the_documented_limits_come_from_the_settings():
    schemas = openapi(cfg=ServingSettings(max_text_chars=123, max_batch=7))["components"]["schemas"]
    assert schemas["OneText"]["properties"]["text"]["maxLength"] == 123
    texts = schemas["ManyTexts"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 7, 123)
    assert [s["$ref"] for s in schemas["PredictRequest"]["oneOf"]] == [
        "#/components/schemas/OneText",
        "#/components/schemas/ManyTexts",
    ]
    for name in ("request_id", "label"):
        assert schemas["FeedbackRequest"]["properties"][name]["minLength"] == 1


def test_every_refusal_is_documented_with_the_error_model():
    paths = openapi()["paths"]
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    predict, feedback = paths["/predict"]["post"], paths["/feedback"]["post"]
    assert set(predict["responses"]) == {"200", "400", "408", "413", "415", "422", "503"}
    assert set(feedback["responses"]) == {"202", "400", "401", "413", "415", "422"}
    for op in (predict, feedback):
        for code, response in op["responses"].items():
            if code[0] == "4" or code[0] == "5":
                assert response["content"]["application/json"]["schema"] == error, code
        assert op["requestBody"]["required"] is True
        assert list(op["requestBody"]["content"]) == ["application/json"]
    assert predict["responses"]["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}


def test_the_429_is_documented_only_with_a_rate_limit():
    limited = openapi(cfg=CFG.model_copy(update={"rate_limit_per_s": 5.0}))["paths"]["/predict"]["post"]
    assert "Retry-After" in limited["responses"]["429"]["headers"]
    assert limited["responses"]["429"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert "429" not in openapi()["paths"]["/predict"]["post"]["responses"]


def test_metrics_are_documented_as_prometheus_text_not_json():
    content = openapi()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == [CONTENT_TYPE_LATEST]
    assert CONTENT_TYPE_LATEST.startswith("text/plain")


def test_the_bearer_token_is_documented_only_when_the_server_has_one():
    with_token = openapi("secret")
    assert with_token["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the token in $DRIFTLOOP_API_TOKEN (serving.api_token_env)",
    }
    assert with_token["paths"]["/feedback"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in with_token["paths"]["/predict"]["post"]
    open_doc = openapi(None)
    assert "securitySchemes" not in open_doc["components"]
    assert "security" not in open_doc["paths"]["/feedback"]["post"]
    assert "401" not in open_doc["paths"]["/feedback"]["post"]["responses"]


@pytest.mark.parametrize(
    ("content_type", "refused"),
    [
        (b"application/json", False),
        (b"application/json; charset=utf-8", False),
        (b'APPLICATION/JSON;CHARSET="UTF-8"', False),
        (b"application/json; charset=utf8", False),
        (b"application/json; version=1", False),
        (None, True),
        (b"", True),
        (b"text/plain", True),
        (b"application/x-www-form-urlencoded", True),
        (b"multipart/form-data; boundary=x", True),
        (b"application/jsonx", True),
        (b"text/json", True),
        (b"application/json; charset=latin-1", True),
        (b"application/json; charset=utf-16", True),
        (b"\xff\xfe", True),
    ],
)
def test_only_utf8_json_bodies_are_read(content_type, refused):
    problem = unsupported_type(content_type)
    assert (problem is not None) == refused
    if refused:
        assert problem.status == 415 and problem.problems[0][0] == "Content-Type"


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "body", "nested too deeply"),
        (b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "body", "nested too deeply"),
        (b'{"text": 1e999999}', 422, "text", "got a number"),
        (b'{"text": -' + b"1" * 100_000 + b"}", 422, "text", "got a number"),
        (b'{"texts": [' + b"1" * 5000 + b"]}", 422, "texts[0]", "got a number"),
        (b'{"text": "a\\u0000"}', 422, "text", "NUL"),
        (b'{"texts": ["a", "b", "\\u0000"]}', 422, "texts[2]", "NUL"),
        (b'{"text": "a", "text": "b"}', 422, "text", "more than once"),
        (b'\xef\xbb\xbf{"text": "a"}', 400, "body", "byte order mark"),
        (b'{"text": "\xc3"}', 400, "body", "UTF-8"),
    ],
    ids=[
        "deep-list",
        "deep-in-text",
        "huge-exponent",
        "huge-int",
        "huge-int-in-batch",
        "nul",
        "nul-in-batch",
        "repeated-key",
        "bom",
        "broken-utf8",
    ],
)
def test_hostile_predict_bodies_are_refused_naming_the_field(body, status, field, words):
    with pytest.raises(BadRequest) as caught:
        parse_predict(body, CFG)
    assert caught.value.status == status
    assert caught.value.problems[0][0] == field
    assert words in str(caught.value)


def test_a_repeated_key_inside_a_bad_value_is_reported_as_the_bad_value():
    # Only the top-level object's keys are fields; an object nested in a field is wrong anyway.
    with pytest.raises(BadRequest, match=r"texts\[0\]: expected a string, got an object"):
        parse_predict(b'{"texts": [{"a": 1, "a": 2}]}', CFG)


def test_unknown_and_repeated_fields_are_listed_at_most_ten_times_and_clipped():
    many = json.dumps({f"k{i}": 0 for i in range(1000)}).encode()
    with pytest.raises(BadRequest) as caught:
        parse_predict(many, CFG)
    assert len(caught.value.problems) == 10
    with pytest.raises(BadRequest) as caught:
        parse_feedback(json.dumps({"x" * 10_000: 0, "request_id": "r", "label": "l"}).encode())
    assert len(caught.value.problems[0][0]) == 64 and caught.value.problems[0][0].endswith("...")


def test_valid_bodies_are_parsed_as_before():
    assert parse_predict(b'{"text": " hi "}', CFG) == [" hi "]
    assert parse_predict(b'{"texts": ["a", "\\u00e9\\ud83d\\udcb3"]}', CFG) == ["a", "é💳"]
    assert parse_predict(b'  {"texts": ["\\ud800"]}\n', CFG) == ["\ud800"]
    assert parse_feedback(b'{"label": " b ", "request_id": " r "}') == ("r", "b")
