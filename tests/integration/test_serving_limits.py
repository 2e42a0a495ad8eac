"""Bounded under abuse, through real HTTP (uvicorn on loopback): a full micro-batch queue or
in-flight budget answers 503 with Retry-After while the requests already taken complete; a
caller over its rate gets 429 before its body is read; a dripping body gets 408; and a hostile
client (batches of max_batch, dripping bodies, many open connections) does not stop a
well-behaved one from getting its answers.

The bounded-queue tests hold the model on an event (a fake model source: our own Protocol), so
what is in flight is known, not raced. Nothing here asserts a duration (bench/hostile.py
measures the latencies)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from driftloop.config.settings import ServingSettings
from driftloop.core.types import Prediction
from driftloop.models.families import TfidfFamily
from driftloop.serving.app import create_app
from tests.support import AUTH
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.fakes import FakeSource, ref
from tests.support.servers import serve_in_thread
from tests.support.serving import LABELS_V1, TEXTS, metric_samples, publish, sample

WAIT_S = 30.0  # generous: how long anything here may take before the test calls it a hang


class HeldModel:
    """Answers each text with its length; a text starting with "hold" waits for ``gate``, so the
    requests behind it stay in flight. Never inline: every request goes through the batcher, as a
    transformer's does."""

    family = "fake"
    labels = ("a",)
    inline_texts = 0

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def predict_proba(self, texts):
        raise NotImplementedError

    def predict(self, texts):
        self.calls.append(list(texts))
        if any(t.startswith("hold") for t in texts):
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        return [Prediction(f"n{len(t)}", 0.9) for t in texts]

    def count_tokens(self, text):
        return len(text.split())


class HeldSource(FakeSource):
    def __init__(self) -> None:
        super().__init__()
        self.model = HeldModel()
        self.ref = ref("1")

    def load(self, ref):
        self.loads.append(ref.version)
        return self.model


@contextmanager
def held_server(cfg: ServingSettings, tmp_path) -> Iterator[tuple[str, HeldModel, object]]:
    source = HeldSource()
    app = create_app(cfg, source, tmp_path)
    with serve_in_thread(app) as url:
        try:
            # the champion loads in the background: a request before it would get "not ready"
            wait_until(lambda: httpx.get(f"{url}/ready", timeout=WAIT_S).status_code == 200, "the champion loaded")
            yield url, source.model, app
        finally:
            source.model.gate.set()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def post(url: str, payload, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=payload, headers=headers, timeout=WAIT_S)


def assert_clean_refusal(response: httpx.Response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert [e["field"] for e in body["errors"]] == [field]
    assert body["detail"].startswith(f"{field}: ")


def intents(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [p["intent"] for p in response.json()["predictions"]]


# -- the micro-batch queue and the texts in flight ------------------------------------------------


def test_a_full_queue_answers_503_with_retry_after_and_the_requests_taken_still_complete(tmp_path):
    cfg = ServingSettings(max_queued_texts=4, max_in_flight=1000, retry_after_s=3, reload_interval_s=60)
    with held_server(cfg, tmp_path) as (url, model, app), ThreadPoolExecutor(4) as pool:
        batcher = app.state.poller.serving.champion.batcher
        first = pool.submit(post, url, {"text": "hold on"})
        wait_until(lambda: ["hold on"] in model.calls, "the first request reached the model")
        queued = [pool.submit(post, url, {"texts": t}) for t in (["ab", "abc"], ["abcd", "abcde"])]
        wait_until(lambda: batcher.queued == 4, "two requests wait for the model")

        refused = post(url, {"text": "x"})
        assert_clean_refusal(refused, 503, "model")
        assert refused.headers["retry-after"] == "3"
        assert "serving.max_queued_texts" in refused.json()["detail"]

        model.gate.set()
        assert intents(first.result(WAIT_S)) == ["n7"]
        assert [intents(f.result(WAIT_S)) for f in queued] == [["n2", "n3"], ["n4", "n5"]]
        assert intents(post(url, {"text": "xyz"})) == ["n3"]  # room again
        with httpx.Client(base_url=url) as client:
            samples = metric_samples(client)
    assert sample(samples, "driftloop_rejected_total", reason="overloaded") == 1
    assert sample(samples, "driftloop_rejected_total", reason="rate_limited") == 0
    assert (
        sample(samples, "driftloop_requests_total", endpoint="predict", status="503", model_version="1", slot="none")
        == 1
    )


def test_texts_past_max_in_flight_answer_503_and_the_texts_in_flight_complete(tmp_path):
    cfg = ServingSettings(max_in_flight=3, max_queued_texts=100, reload_interval_s=60)
    with held_server(cfg, tmp_path) as (url, model, app), ThreadPoolExecutor(4) as pool:
        handlers_gate = app.state.in_flight
        first = pool.submit(post, url, {"text": "hold on"})
        # the held request first: sent together, the other could arrive first and be answered at once
        wait_until(lambda: ["hold on"] in model.calls, "the first request reached the model")
        second = pool.submit(post, url, {"texts": ["ab", "abc"]})
        wait_until(lambda: handlers_gate.texts == 3, "three texts in flight")

        refused = post(url, {"text": "x"})
        assert_clean_refusal(refused, 503, "model")
        assert "3 texts in flight (serving.max_in_flight 3)" in refused.json()["detail"]

        model.gate.set()
        assert intents(first.result(WAIT_S)) == ["n7"]
        assert intents(second.result(WAIT_S)) == ["n2", "n3"]
        wait_until(lambda: handlers_gate.texts == 0, "every text left")
        # a batch larger than the whole budget is still answered when it is alone
        assert intents(post(url, {"texts": ["a"] * 5})) == ["n1"] * 5


# -- the caller's rate, and a body that does not arrive --------------------------------------------


def raw_request(url: str, head: bytes, body: bytes = b"") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    sock.sendall(head + body)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(rest) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def predict_head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_a_caller_over_its_rate_gets_429_before_its_body_is_read_and_others_keep_theirs(tmp_path):
    # one text every 100 s after a burst of 3: the bucket cannot refill during the test
    cfg = ServingSettings(rate_limit_per_s=0.01, rate_burst=3, reload_interval_s=60)
    with held_server(cfg, tmp_path) as (url, model, _app):
        model.gate.set()
        assert intents(post(url, {"texts": ["a", "bb", "ccc"]})) == ["n1", "n2", "n3"]  # the whole burst
        refused = post(url, {"text": "x"})
        assert_clean_refusal(refused, 429, "caller")
        assert int(refused.headers["retry-after"]) >= 90
        # refused before the body is read: a body that never comes gets the same answer at once
        sock = raw_request(url, predict_head(1000))
        with sock:
            status, headers, body = read_response(sock)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert json.loads(body)["errors"][0]["field"] == "caller"
        # the token's holder is another caller, with its own bucket; a wrong token is not
        assert intents(post(url, {"text": "abcd"}, headers=AUTH)) == ["n4"]
        assert post(url, {"text": "x"}, headers={"Authorization": "Bearer not-it"}).status_code == 429
        with httpx.Client(base_url=url) as client:
            samples = metric_samples(client)
    assert sample(samples, "driftloop_rejected_total", reason="rate_limited") == 3


def test_a_dripping_body_gets_408_and_its_connection_is_closed(tmp_path):
    cfg = ServingSettings(body_timeout_s=0.5, reload_interval_s=60)
    with held_server(cfg, tmp_path) as (url, model, _app):
        model.gate.set()
        payload = json.dumps({"text": "abc"}).encode()
        sock = raw_request(url, predict_head(len(payload)), payload[:5])  # the rest never comes
        with sock:
            assert intents(post(url, {"text": "ab"})) == ["n2"]  # others are answered meanwhile
            status, headers, body = read_response(sock)
            assert status == 408
            assert headers["connection"] == "close"
            assert json.loads(body)["errors"][0]["field"] == "body"
            assert sock.recv(1) == b""  # closed by the server
        with httpx.Client(base_url=url) as client:
            samples = metric_samples(client)
    assert sample(samples, "driftloop_rejected_total", reason="slow_body") == 1


# -- a hostile client and a well-behaved one -----------------------------------------------------------

HOSTILE_CFG = ServingSettings(
    max_batch=16, max_text_chars=200, max_in_flight=32, body_timeout_s=2.0, reload_interval_s=60
)


@pytest.fixture(scope="module")
def tfidf_model(banking_train):
    return TfidfFamily().fit(tiny_frame(banking_train, LABELS_V1), TINY_PARAMS)


class Hostile:
    """Batches of max_batch texts from several threads, bodies dripped a byte at a time, and many
    connections opened and left idle, until :meth:`stop`; every status it got is counted."""

    def __init__(self, url: str, senders: int = 3, drippers: int = 4, idle: int = 200):
        self.url = url
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._batches, daemon=True) for _ in range(senders)]
        self._threads += [threading.Thread(target=self._drip, daemon=True) for _ in range(drippers)]
        self._idle_count = idle
        self._idle: list[socket.socket] = []

    def __enter__(self) -> Hostile:
        host, port = self.url.removeprefix("http://").split(":")
        for _ in range(self._idle_count):
            self._idle.append(socket.create_connection((host, int(port)), timeout=WAIT_S))
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT_S)
        for s in self._idle:
            s.close()

    def _count(self, status: int) -> None:
        with self._lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def _batches(self) -> None:
        longest = HOSTILE_CFG.max_text_chars
        texts = [((TEXTS[k % len(TEXTS)] + " ") * 20)[:longest] for k in range(HOSTILE_CFG.max_batch)]
        with httpx.Client(base_url=self.url, timeout=WAIT_S) as client:
            while not self._stop.is_set():
                try:
                    self._count(client.post("/predict", json={"texts": texts}).status_code)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def _drip(self) -> None:
        payload = json.dumps({"text": TEXTS[0]}).encode()
        while not self._stop.is_set():
            try:
                sock = raw_request(self.url, predict_head(len(payload)))
                with sock:
                    for byte in payload[:-1]:  # never the last one
                        if self._stop.wait(0.05):
                            return
                        sock.sendall(bytes([byte]))
                    self._count(read_response(sock)[0])
            except OSError as exc:
                self.errors.append(repr(exc))


@pytest.mark.parametrize("rate_limit", [0.0, 5.0], ids=["no-rate-limit", "rate-limit"])
def test_a_hostile_client_does_not_stop_a_well_behaved_one(registry_for_limits, tfidf_model, tmp_path, rate_limit):
    # the burst covers the well-behaved client's whole run (90 texts); the hostile one passes it at once
    cfg = HOSTILE_CFG.model_copy(update={"rate_limit_per_s": rate_limit, "rate_burst": 100})
    registry = registry_for_limits
    publish(registry, tfidf_model)
    expected = {t: p.intent for t, p in zip(TEXTS, tfidf_model.predict(TEXTS), strict=True)}
    answered = refused = 0
    with serve_in_thread(create_app(cfg, registry, tmp_path)) as url, Hostile(url) as hostile:
        # the well-behaved client holds the token (its own caller) and sends one or two texts at a time
        with httpx.Client(base_url=url, timeout=WAIT_S, headers=AUTH) as client:
            for k in range(60):
                texts = [TEXTS[k % len(TEXTS)]] if k % 2 else [TEXTS[k % len(TEXTS)], TEXTS[(k + 1) % len(TEXTS)]]
                response = client.post("/predict", json={"texts": texts})  # a hang raises ReadTimeout
                if response.status_code == 503:
                    assert_clean_refusal(response, 503, "model")
                    refused += 1
                    continue
                assert intents(response) == [expected[t] for t in texts]
                answered += 1
        wait_until(lambda: sum(hostile.statuses.values()) > 0, "the hostile client got answers too")
        if rate_limit:
            wait_until(lambda: 429 in hostile.statuses, "the hostile client went over its rate")
    # TF-IDF answers one or two texts inline: they never wait, so they are never refused
    assert (answered, refused) == (60, 0)
    assert hostile.errors == [], hostile.errors[:3]
    allowed = {200, 408, 503} | ({429} if rate_limit else set())
    assert set(hostile.statuses) <= allowed, hostile.statuses


@pytest.fixture
def registry_for_limits(tracking_uri, artifact_root, request):
    from driftloop.adapters.registry import Registry

    return Registry(tracking_uri, f"serving-limits-{request.node.callspec.id}", artifact_root=artifact_root)
