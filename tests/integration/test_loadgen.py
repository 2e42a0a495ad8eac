"""wrk against the real serving app (uvicorn on loopback, a tiny model in a real MLflow registry):
every answer wrk records is in the prediction log."""

from __future__ import annotations

import pytest

from driftloop.adapters.predlog import read_predictions
from driftloop.adapters.registry import CHAMPION, Registry
from driftloop.config.settings import ServingSettings
from driftloop.models.families import TfidfFamily
from driftloop.ops.loadgen import lua_script, parse_wrk_output, run_wrk
from driftloop.serving.app import create_app
from tests.support.data import TINY_PARAMS, tiny_frame
from tests.support.servers import serve_in_thread

LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked"]
CFG = ServingSettings(reload_interval_s=1.0, fsync_interval_s=0.2)
# Quotes, backslashes, newlines, non-ASCII and a lone surrogate must reach the app intact.
TEXTS = [
    "my card has not arrived yet",
    "I lost my card in the street",
    "what is the exchange rate",
    'quotes " and \\ backslash\nnewline ]]',
    "où est ma carte ? 💳",
    "lone \ud800 surrogate",
    "my top up did not work",
    "my pin is blocked",
]


def test_every_recorded_answer_is_in_the_prediction_log(banking_train, tracking_uri, artifact_root, tmp_path):
    registry = Registry(tracking_uri, "loadgen", artifact_root=artifact_root)
    model = TfidfFamily().fit(tiny_frame(banking_train, LABELS), TINY_PARAMS)
    registry.set_alias(CHAMPION, registry.register_model(model, input_example=TEXTS[:2]))
    log_root = tmp_path / "logs"
    with serve_in_thread(create_app(CFG, registry, log_root)) as url:
        result = run_wrk(url, duration_s=2, connections=8, threads=2, texts=TEXTS, record_dir=tmp_path / "wrk")
    # The app has shut down: its log is flushed and closed.
    log = read_predictions(log_root).set_index("request_id")
    logged = set(log.index)

    assert result.requests > 0 and result.rps > 0, result.raw
    assert result.non_2xx == 0 and result.total_socket_errors == 0, result.raw
    assert result.statuses == {200: result.requests}, "one record per response wrk counted"
    assert len(result.request_ids) == result.statuses[200]
    assert all(len(rid) == 32 for rid in result.request_ids)
    assert not result.request_ids - logged, "answered requests missing from the prediction log"
    # Every text, escaped into the Lua script, arrived byte for byte.
    assert set(log.loc[sorted(result.request_ids), "text"]) == set(TEXTS)
    assert 0 < result.p50_ms <= result.p99_ms


def test_every_text_reaches_the_script_byte_exact(tmp_path):
    script = lua_script(TEXTS, tmp_path / 'dir with "quote"', caller_keys=True)
    script.encode("ascii")  # every byte outside printable ASCII is escaped
    # The JSON body of TEXTS[0], its quotes as decimal escapes.
    assert '"{\\034text\\034: \\034my card has not arrived yet\\034}"' in script
    assert "dir with \\034quote\\034" in script
    assert "local caller_keys = true" in script
    assert "local caller_keys = false" in lua_script(TEXTS, tmp_path, caller_keys=False)


WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8000/predict
  2 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us  10.00ms   90.00%
    Req/Sec     3.00k   200.00     3.50k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.30ms
     90%    1.60ms
     99%    1.02s
  12000 requests in 2.00m, 3.00MB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:   6000.50
Transfer/sec:      1.50MB
"""


def test_wrk_output_is_parsed_with_its_units():
    result = parse_wrk_output(WRK_OUTPUT)
    assert (result.requests, result.duration_s, result.rps) == (12000, 120.0, 6000.5)
    assert result.p50_ms == pytest.approx(0.812) and result.p99_ms == pytest.approx(1020)
    assert result.socket_errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert result.non_2xx == 5
    clean = WRK_OUTPUT.replace("  Socket errors: connect 1, read 2, write 3, timeout 4\n", "").replace(
        "  Non-2xx or 3xx responses: 5\n", ""
    )
    assert parse_wrk_output(clean).total_socket_errors == 0 == parse_wrk_output(clean).non_2xx
    with pytest.raises(ValueError, match="--latency"):
        parse_wrk_output(WRK_OUTPUT.replace("     99%    1.02s\n", ""))
