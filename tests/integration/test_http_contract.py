"""The HTTP contract is the behaviour: real uvicorn servers on a real MLflow registry (SQLite) with
a tiny real model.

* schemathesis, driven by the app's own OpenAPI schema, sends a few thousand generated requests
  (valid ones that must be answered, invalid ones that must be refused, wrong methods, missing
  auth) and finds nothing the schema does not say;
* hostile bodies (deep nesting, huge numbers, broken UTF-8, NUL characters, wrong content types,
  empty or non-object bodies) each get a 4xx whose message names the field or the problem, never
  a 5xx, through the direct path and through the routed one, and the server answers on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftloop.adapters.registry import Registry
from driftloop.config.settings import ServingSettings
from driftloop.models.families import TfidfFamily
from driftloop.serving.app import create_app
from driftloop.serving.contract import MAX_PROBLEMS
from tests.support import API_TOKEN, AUTH
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.servers import SERVE_APP, serve_in_thread, serve_script
from tests.support.serving import LABELS_V1, TEXTS, publish

MODEL_NAME = "serving-contract"
# The fuzzed server's limits: small, so the out-of-bounds bodies schemathesis makes (a text one
# character too long, a batch one text too many) stay cheap to generate. The hostile-input
# servers keep the production defaults, so a 200 kB body reaches the JSON parser.
FUZZ_SETTINGS = {"max_text_chars": 200, "max_batch": 16}
SCHEMATHESIS_SEED = 20251201
SCHEMATHESIS_EXAMPLES = 1000  # per operation and phase: ~2,100 requests, about 80 s on 2 cores


@contextmanager
def serve_contract(
    tracking_uri: str, log_root: Path, settings: dict, startup_timeout_s: float = 90.0
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``serve_app.py`` with these serving ``settings`` in its own process (the direct path: no
    middleware); yields (URL, process)."""
    args = [tracking_uri, MODEL_NAME, str(log_root), json.dumps(settings)]
    with serve_script(SERVE_APP, args, log_root, startup_timeout_s) as served:
        yield served


class PassThrough:
    """A pure ASGI middleware that changes nothing: its presence turns the direct path off, so
    /predict goes through FastAPI's route."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def registry(tracking_uri, artifact_root, banking_train) -> Registry:
    registry = Registry(tracking_uri, MODEL_NAME, artifact_root=artifact_root)
    publish(registry, TfidfFamily().fit(tiny_frame(banking_train, LABELS_V1), TINY_PARAMS))
    return registry


@pytest.fixture(scope="module")
def direct(registry, tracking_uri, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    with serve_contract(tracking_uri, tmp_path_factory.mktemp("logs-contract-direct"), {}) as served:
        yield served


@pytest.fixture(scope="module")
def routed(registry, tmp_path_factory) -> Iterator[str]:
    app = create_app(ServingSettings(), registry, tmp_path_factory.mktemp("logs-contract-routed"))
    app.add_middleware(PassThrough)
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(params=["direct", "routed"])
def client(request) -> Iterator[httpx.Client]:
    url = request.getfixturevalue("direct")[0] if request.param == "direct" else request.getfixturevalue("routed")
    with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
        yield client


# -- the schema says what the server does --------------------------------------------------------


def test_schemathesis_finds_no_failure_in_a_few_thousand_requests(registry, tracking_uri, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("schemathesis is not installed (the test extra: make install)")
    with serve_contract(tracking_uri, tmp_path, FUZZ_SETTINGS) as (url, proc):
        command = [
            str(cli),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SCHEMATHESIS_SEED),
            "--max-examples",
            str(SCHEMATHESIS_EXAMPLES),
            "--header",
            f"Authorization: Bearer {API_TOKEN}",
            "--request-timeout",
            "30",  # the suite runs beside the stack tests on 2 cores
            "--generation-database",
            "none",
            "--no-color",
        ]
        # cwd: nothing (a config file, a report) is read or written in the repository.
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400, check=False)
        alive = proc.poll() is None
    output = done.stdout + done.stderr
    shown = " ".join(command).replace(API_TOKEN, "<token>")
    print(f"$ {shown}\n{output}")  # the summary, for `pytest -s` / `-rP`
    summary = output[output.find("SUMMARY") - 40 :] if "SUMMARY" in output else output[-6000:]
    assert done.returncode == 0, f"schemathesis found failures (exit code {done.returncode}):\n{output[-12000:]}"
    generated = re.search(r"(\d+) generated", output)
    assert generated, f"no test case count in the summary:\n{summary}"
    assert int(generated.group(1)) >= 2000, f"too few generated requests to matter:\n{summary}"
    assert "No issues found" in output, summary
    assert alive, "the server died under the fuzzer"


# -- hostile bodies: a 4xx naming the field or the problem, never a 5xx --------------------------

J = {"content-type": "application/json"}
DEEP = 100_000
HOSTILE_PREDICTS = [
    # (id, body, headers, status, field, words in the message)
    ("deep-list", b"[" * DEEP + b"]" * DEEP, J, 400, "body", "nested too deeply"),
    ("deep-in-text", b'{"text": ' + b"[" * DEEP + b"]" * DEEP + b"}", J, 400, "body", "nested too deeply"),
    ("deep-objects", b'{"a": ' * 30_000 + b"1" + b"}" * 30_000, J, 400, "body", "nested too deeply"),
    (
        "nested-but-parsable",
        b'{"texts": ' + b"[" * 300 + b"]" * 300 + b"}",
        J,
        422,
        "texts[0]",
        "expected a string, got a list",
    ),
    ("huge-exponent", b'{"text": 1e999999}', J, 422, "text", "expected a string, got a number"),
    ("100k-digit-int", b'{"text": ' + b"9" * 100_000 + b"}", J, 422, "text", "expected a string, got a number"),
    ("huge-int-in-batch", b'{"texts": ["ok", -' + b"7" * 50_000 + b"]}", J, 422, "texts[1]", "got a number"),
    ("nan", b'{"text": NaN}', J, 422, "text", "expected a string, got a number"),
    ("invalid-utf8", b'{"text": "caf\xe9"}', J, 400, "body", "not valid UTF-8"),
    ("utf8-surrogate-bytes", b'{"text": "\xed\xa0\x80"}', J, 400, "body", "not valid UTF-8"),
    ("nul-escaped", b'{"text": "card\\u0000arrived"}', J, 422, "text", "NUL"),
    ("nul-in-batch", b'{"texts": ["fine", "\\u0000"]}', J, 422, "texts[1]", "NUL"),
    ("nul-raw-byte", b'{"text": "card\x00arrived"}', J, 400, "body", "not valid JSON"),
    ("text-plain", b'{"text": "hello"}', {"content-type": "text/plain"}, 415, "Content-Type", "text/plain"),
    (
        "form",
        b"text=hello",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "Content-Type",
        "application/x-www-form-urlencoded",
    ),
    (
        "multipart",
        b"--x\r\n\r\nhello\r\n--x--\r\n",
        {"content-type": "multipart/form-data; boundary=x"},
        415,
        "Content-Type",
        "multipart/form-data",
    ),
    ("no-content-type", b'{"text": "hello"}', {}, 415, "Content-Type", "missing"),
    (
        "latin1-charset",
        b'{"text": "hello"}',
        {"content-type": "application/json; charset=iso-8859-1"},
        415,
        "Content-Type",
        "UTF-8",
    ),
    ("empty", b"", J, 400, "body", "empty"),
    ("only-whitespace", b"  \n ", J, 400, "body", "not valid JSON"),
    ("byte-order-mark", b'\xef\xbb\xbf{"text": "hello"}', J, 400, "body", "byte order mark"),
    ("list", b'["hello"]', J, 422, "body", "got a list"),
    ("string", b'"hello"', J, 422, "body", "got a string"),
    ("number", b"42", J, 422, "body", "got a number"),
    ("null", b"null", J, 422, "body", "got null"),
    ("both-null", b'{"text": null, "texts": null}', J, 422, "text", "not both"),
    ("repeated-key", b'{"text": "a", "text": "b"}', J, 422, "text", "more than once"),
]
HOSTILE_FEEDBACK = [
    ("deep-list", b"[" * 30_000 + b"]" * 30_000, J, 400, "body", "nested too deeply"),
    ("huge-number", b'{"request_id": "abc", "label": ' + b"9" * 20_000 + b"}", J, 422, "label", "got a number"),
    ("invalid-utf8", b'{"request_id": "abc", "label": "\xff"}', J, 400, "body", "not valid UTF-8"),
    ("nul-label", b'{"request_id": "abc", "label": "card\\u0000arrival"}', J, 422, "label", "NUL"),
    ("nul-id", b'{"request_id": "\\u0000", "label": "card_arrival"}', J, 422, "request_id", "NUL"),
    ("empty-strings", b'{"request_id": "", "label": ""}', J, 422, "request_id", "empty"),
    (
        "text-plain",
        b'{"request_id": "abc", "label": "x"}',
        {"content-type": "text/plain"},
        415,
        "Content-Type",
        "text/plain",
    ),
    ("no-content-type", b'{"request_id": "abc", "label": "x"}', {}, 415, "Content-Type", "missing"),
    ("empty", b"", J, 400, "body", "empty"),
    ("list", b'[{"request_id": "abc", "label": "x"}]', J, 422, "body", "got a list"),
    ("repeated-key", b'{"request_id": "a", "label": "x", "label": "y"}', J, 422, "label", "more than once"),
]


def _check_refusal(response: httpx.Response, status: int, field: str, words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert words in body["detail"], body
    assert body["detail"].startswith(f"{field}: "), body
    assert body["errors"][0]["field"] == field, body


def _still_answering(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    answer = client.post("/predict", json={"text": TEXTS[0]})
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1


@pytest.mark.parametrize(
    ("body", "headers", "status", "field", "words"),
    [c[1:] for c in HOSTILE_PREDICTS],
    ids=[c[0] for c in HOSTILE_PREDICTS],
)
def test_a_hostile_predict_gets_a_4xx_naming_the_problem(client, body, headers, status, field, words):
    response = client.post("/predict", content=body, headers=headers)
    _check_refusal(response, status, field, words)
    _still_answering(client)


@pytest.mark.parametrize(
    ("body", "headers", "status", "field", "words"),
    [c[1:] for c in HOSTILE_FEEDBACK],
    ids=[c[0] for c in HOSTILE_FEEDBACK],
)
def test_a_hostile_feedback_gets_a_4xx_naming_the_problem(client, body, headers, status, field, words):
    response = client.post("/feedback", content=body, headers=headers)
    _check_refusal(response, status, field, words)
    _still_answering(client)


def test_empty_feedback_fields_are_both_named(client):
    response = client.post("/feedback", json={"request_id": "", "label": " "})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["request_id", "label"]


def test_feedback_checks_the_token_before_the_body(client):
    response = client.post("/feedback", content=b"[" * 30_000, headers={**J, "Authorization": ""})
    assert response.status_code == 401
    assert response.json()["errors"][0]["field"] == "Authorization"


def test_json_with_a_utf8_charset_in_any_case_is_answered(client):
    for content_type in ("application/json; charset=utf-8", "Application/JSON; Charset=UTF-8"):
        response = client.post(
            "/predict", content=json.dumps({"text": TEXTS[1]}).encode(), headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text


def test_a_body_of_many_unknown_fields_gets_a_small_answer(client):
    body = json.dumps({f"field{i}": 0 for i in range(20_000)}).encode()
    response = client.post("/predict", content=body, headers=J)
    assert response.status_code == 422
    assert len(response.json()["errors"]) == MAX_PROBLEMS
    assert len(response.content) < 2000, "the answer must not grow with the body"
    long_key = client.post("/predict", content=json.dumps({"k" * 50_000: 1}).encode(), headers=J)
    assert long_key.status_code == 422 and len(long_key.content) < 1000


def test_no_hostile_input_was_answered_with_a_5xx(client):
    """Last in the module: every refusal so far was counted, none as a server error."""
    assert client.post("/predict", content=HOSTILE_PREDICTS[0][1], headers=J).status_code == 400
    plain = client.post("/predict", content=b'{"text": "hi"}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    families = text_string_to_metric_families(client.get("/metrics").text)
    statuses = {
        (s.labels["endpoint"], s.labels["status"]): s.value
        for f in families
        if f.name == "driftloop_requests"
        for s in f.samples
        if s.name == "driftloop_requests_total"
    }
    assert statuses.get(("predict", "400"), 0) > 0 and statuses.get(("predict", "415"), 0) > 0
    assert not {k: v for k, v in statuses.items() if k[1].startswith("5")}, statuses


def test_the_direct_server_process_survived(direct):
    assert direct[1].poll() is None
