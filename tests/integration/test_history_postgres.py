"""The champion history and the trigger ledger on a real PostgreSQL (``history.backend: postgres``),
started here the way `driftloop stack up` starts the stack's: same record shapes as the files,
ordered reads, one retrain per window however many monitors race for it, and the cooldown between
them. Each test gets a schema of its own in the ``driftloop`` database that the set-up makes."""

from __future__ import annotations

import uuid

import psycopg2
import pytest

from driftloop.adapters.history import FileChampionHistory, FileTriggerLedger
from driftloop.adapters.history_pg import Database, PostgresChampionHistory, PostgresTriggerLedger
from driftloop.core.errors import InputError, ServerUnreachable
from driftloop.core.types import HistoryEntry
from tests.support import free_port
from tests.support.history import RACES, slow_check
from tests.support.servers import throwaway_postgres


@pytest.fixture(scope="module")
def postgres():
    with throwaway_postgres() as stack:
        yield stack


@pytest.fixture
def db(postgres) -> Database:
    return Database(postgres.history_dsn, postgres.secrets.pg_password, schema=f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def monitor_ledger(postgres, db):
    """A new ledger on the test's schema, as a separate monitor would build it: its own Database
    (its own first use, its own connections). The first racers also race to create the tables."""

    def make() -> PostgresTriggerLedger:
        return PostgresTriggerLedger(Database(postgres.history_dsn, postgres.secrets.pg_password, schema=db.schema))

    return make


def _sql(postgres, query: str, params: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(postgres.history_dsn, password=postgres.secrets.pg_password)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


MOVES = [
    HistoryEntry("2026-01-01T00:00:00.000+00:00", "m", "champion", None, "1", "promote", "first", "a", "r1"),
    HistoryEntry("2026-01-01T01:00:00.000+00:00", "m", "champion", "1", "2", "promote", "better", "b"),
    HistoryEntry("2026-01-01T02:00:00.000+00:00", "m", "champion", "2", "1", "rollback", "regressed", "c", "r3"),
    HistoryEntry("2026-01-01T03:00:00.000+00:00", "m", "challenger", None, "3", "stage:shadow", "trial", "d"),
]


def test_the_stack_set_up_makes_the_driftloop_database(postgres):
    names = {row[0] for row in _sql(postgres, "SELECT datname FROM pg_database")}
    assert {"mlflow", "prefect", "driftloop"} <= names


def test_up_on_a_running_postgres_makes_a_missing_driftloop_database(postgres):
    """A stack started before the history moved to PostgreSQL has no `driftloop` database: the
    next `stack up` finds PostgreSQL healthy, leaves it running and makes the database."""
    from driftloop.ops import stack as stack_mod

    conn = stack_mod.superuser_connection(postgres)  # the history's role reaches its own database only
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("DROP DATABASE driftloop WITH (FORCE)")
    finally:
        conn.close()
    (status,) = stack_mod.up(postgres, services=["postgres"])
    assert status.started_s is None, "PostgreSQL was healthy: not restarted"
    assert "driftloop" in {row[0] for row in _sql(postgres, "SELECT datname FROM pg_database")}


def test_the_history_reads_back_what_the_file_backend_does_in_order(db, postgres, tmp_path):
    history, files = PostgresChampionHistory(db), FileChampionHistory(tmp_path / "h.jsonl")
    for move in MOVES:
        assert history.append(move) == files.append(move)
    assert history.entries() == files.entries() == MOVES
    assert history.last_good(exclude="1") == files.last_good(exclude="1") is None  # 2 was rolled back from
    assert history.last_good("challenger") == "3"
    # one row per move, in the schema of this test, readable with plain SQL
    rows = _sql(postgres, f"SELECT alias, to_version, action FROM {db.schema}.champion_history ORDER BY seq")
    assert rows == [(m.alias, m.to_version, m.action) for m in MOVES]


def test_an_empty_history_and_ledger(db):
    assert PostgresChampionHistory(db).entries() == []
    assert PostgresChampionHistory(db).last_good() is None
    assert PostgresTriggerLedger(db).records() == []


def test_the_ledger_records_a_window_once_with_the_databases_time(db, postgres, tmp_path):
    ledger = PostgresTriggerLedger(db)
    assert ledger.record("w1", "drift", run="run-1")
    assert not ledger.record("w1", "drift again", run="run-2")
    assert ledger.record("w2", "regression")
    records = ledger.records()
    assert [r.window_id for r in records] == ["w1", "w2"]
    assert records[0].time.tzinfo is not None and records[0].time <= records[1].time
    # the same shape as the file backend's records
    files = FileTriggerLedger(tmp_path / "l.jsonl")
    files.record("w1", "drift")
    assert type(files.records()[0]) is type(records[0])
    assert _sql(postgres, f"SELECT window_id, reason, run FROM {db.schema}.retrain_triggers ORDER BY seq") == [
        ("w1", "drift", "run-1"),
        ("w2", "regression", ""),
    ]


def test_a_claim_records_the_window_only_when_the_check_says_retrain(db):
    ledger = PostgresTriggerLedger(db)
    first = ledger.claim_window("w1", slow_check("w1", pause_s=0), run="run-1")
    assert first.retrain and "drift confirmed" in first.reason
    again = ledger.claim_window("w1", slow_check("w1", pause_s=0), run="run-2")
    assert not again.retrain and "already triggered" in again.reason
    other = ledger.claim_window("w2", slow_check("w2", pause_s=0), run="run-3")
    assert not other.retrain and "cooldown" in other.reason
    assert [r.window_id for r in ledger.records()] == ["w1"]


def test_the_unique_window_holds_even_for_a_check_that_ignores_the_ledger(db):
    """The constraint, not only the check, keeps a window from being claimed twice."""
    ledger = PostgresTriggerLedger(db)
    careless = slow_check("w1", pause_s=0)

    def ignore_records(records, now):
        return careless([], now)

    assert ledger.claim_window("w1", ignore_records).retrain
    second = ledger.claim_window("w1", ignore_records)
    assert not second.retrain and "already triggered" in second.reason
    assert len(ledger.records()) == 1


@pytest.mark.parametrize("race", RACES, ids=lambda r: r.__name__)
def test_monitors_racing_on_one_window_retrain_once(db, monitor_ledger, race):
    decisions = race(monitor_ledger, ["w1"] * 8)
    assert sum(d.retrain for d in decisions) == 1, decisions
    assert all("already triggered" in d.reason for d in decisions if not d.retrain), decisions
    assert [r.window_id for r in PostgresTriggerLedger(db).records()] == ["w1"]


@pytest.mark.parametrize("race", RACES, ids=lambda r: r.__name__)
def test_monitors_racing_on_two_windows_keep_the_cooldown(db, monitor_ledger, race):
    decisions = race(monitor_ledger, ["w1", "w2"] * 4)
    assert sum(d.retrain for d in decisions) == 1, decisions
    assert len(PostgresTriggerLedger(db).records()) == 1


def test_the_settings_select_the_postgres_backend(postgres, monkeypatch, tmp_path):
    """history.backend: postgres with the DSN from the configuration and the password from the
    environment only; nothing is written under the state dir."""
    from driftloop.adapters.wiring import history_stores
    from driftloop.config.settings import load_settings

    schema = f"t_{uuid.uuid4().hex[:12]}"
    overlay = tmp_path / "pg.yaml"
    overlay.write_text(f"history:\n  backend: postgres\n  dsn: {postgres.history_dsn}\n  db_schema: {schema}\n")
    monkeypatch.setenv("DRIFTLOOP__PROJECT__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DRIFTLOOP_PG_PASSWORD", postgres.secrets.pg_password)
    history, ledger = history_stores(load_settings([str(overlay)]))
    assert isinstance(history, PostgresChampionHistory) and isinstance(ledger, PostgresTriggerLedger)
    history.append(MOVES[0])
    assert ledger.claim_window("w1", slow_check("w1", pause_s=0)).retrain
    assert _sql(postgres, f"SELECT count(*) FROM {schema}.champion_history") == [(1,)]
    assert not (tmp_path / "state").exists()


def test_a_wrong_password_is_an_input_error_that_does_not_echo_it(postgres):
    db = Database(postgres.history_dsn, "not-the-password-42", schema="t_wrong")
    with pytest.raises(InputError, match="authentication failed") as err:
        PostgresTriggerLedger(db).records()
    assert "not-the-password-42" not in str(err.value)


def test_an_unreachable_database_is_server_unreachable():
    db = Database(f"postgresql://driftloop@127.0.0.1:{free_port()}/driftloop", "x", connect_timeout_s=2)
    with pytest.raises(ServerUnreachable, match=r"history database 127\.0\.0\.1:\d+/driftloop"):
        PostgresChampionHistory(db).append(MOVES[0])
