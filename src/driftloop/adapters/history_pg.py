"""The champion history and the retrain-trigger ledger in PostgreSQL (``history.backend: postgres``):
where every serving replica, worker and flow-run Job reaches them, so nothing lives on one
machine's disk. configs/stack.yaml selects it, on the stack's own PostgreSQL (database ``driftloop``).

Two tables in the schema ``history.db_schema``, created with it on first use (under an advisory
lock, so that processes starting together do not race on ``CREATE``)::

    champion_history  seq bigserial PRIMARY KEY, time text, model text, alias text,
                      from_version text, to_version text, action text, reason text,
                      actor text, report text, recorded_at timestamptz DEFAULT now()
    retrain_triggers  seq bigserial PRIMARY KEY, window_id text UNIQUE, time timestamptz,
                      reason text, run text

The records have the shapes of the file backend's (:class:`~driftloop.core.types.HistoryEntry`,
:class:`~driftloop.core.policy.TriggerRecord`); reads are ordered by ``seq``; each append is one
transaction.

A claim (:meth:`PostgresTriggerLedger.claim_window`) is one transaction: it takes
``pg_advisory_xact_lock`` on the ledger's key, reads the records, runs the caller's check and, when
the answer is to retrain, ``INSERT … ON CONFLICT (window_id) DO NOTHING RETURNING seq``; the
commit releases the lock. The lock makes the cooldown hold between monitors racing on different
windows (the second reads the first's committed row); the unique constraint alone already keeps a
window from being claimed twice. The times of the ledger are the database's clock, one clock for
every machine.

One connection per operation (a run appends a handful of records): nothing to leak across the
forks of a Prefect worker or a uvicorn server, nothing to go stale while a flow trains for an hour.
This module is the only one besides :mod:`driftloop.ops.stack` that imports the PostgreSQL driver.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import astuple, fields
from typing import Any

import psycopg2
from psycopg2 import sql

from driftloop.adapters.history import RetrainCheck, already_claimed, last_good
from driftloop.core.errors import InputError, ServerUnreachable
from driftloop.core.policy import TriggerRecord
from driftloop.core.types import HistoryEntry, RetrainDecision

# pg_advisory_xact_lock keys (any bigint; fixed so that every process and release agrees):
# "dl" + a counter, in a database of driftloop's own.
_SCHEMA_LOCK = 0x646C_0000_0000_0001
_LEDGER_LOCK = 0x646C_0000_0000_0002

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_HISTORY_COLUMNS = tuple(f.name for f in fields(HistoryEntry))

_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.champion_history (
    seq bigserial PRIMARY KEY,
    time text NOT NULL,
    model text NOT NULL,
    alias text NOT NULL,
    from_version text,
    to_version text,
    action text NOT NULL,
    reason text NOT NULL,
    actor text NOT NULL,
    report text NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.retrain_triggers (
    seq bigserial PRIMARY KEY,
    window_id text NOT NULL UNIQUE,
    time timestamptz NOT NULL,
    reason text NOT NULL,
    run text NOT NULL DEFAULT ''
);
"""


class Database:
    """Connections to the history's database; its schema and tables are made on first use.

    ``dsn`` is a libpq URL or ``key=value`` string (``history.dsn``, which holds no password);
    ``password`` comes from the environment (``history.password_env``), else libpq's own
    ``PGPASSWORD`` / ``~/.pgpass`` apply.
    """

    def __init__(self, dsn: str, password: str | None = None, schema: str = "driftloop", connect_timeout_s: int = 10):
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"history schema {schema!r}: expected a lower-case SQL identifier")
        self.dsn = dsn
        self.schema = schema
        self._password = password
        self._connect_timeout_s = connect_timeout_s
        self._ready = False
        self._ready_lock = threading.Lock()

    @property
    def where(self) -> str:
        """``host:port/dbname`` of the DSN, for messages (never the password)."""
        try:
            parts = psycopg2.extensions.parse_dsn(self.dsn)
        except psycopg2.ProgrammingError:
            return "(an unparsable history.dsn)"
        return f"{parts.get('host', 'localhost')}:{parts.get('port', '5432')}/{parts.get('dbname', '')}"

    def _connect(self) -> Any:  # a psycopg2 connection (psycopg2 is untyped here)
        options: dict[str, Any] = {
            "connect_timeout": self._connect_timeout_s,
            "application_name": "driftloop",
            "options": "-c TimeZone=UTC",
        }
        if self._password:
            options["password"] = self._password
        try:
            return psycopg2.connect(self.dsn, **options)
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "authentication failed" in first or "does not exist" in first or "no password" in first:
                raise InputError(
                    f"history database {self.where}: {first} (check history.dsn and the password in the "
                    f"variable history.password_env names; on the local stack, `driftloop stack up` makes "
                    f"the database)"
                ) from exc
            raise ServerUnreachable(f"cannot reach the history database {self.where}: {first}", url=self.where) from exc

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in one transaction: committed when the block ends, rolled back if it raises."""
        self.ensure_schema()
        with closing(self._connect()) as conn, conn, conn.cursor() as cur:
            yield cur

    def ensure_schema(self) -> None:
        """Create the schema and both tables unless they exist (checked once per object)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with closing(self._connect()) as conn, conn, conn.cursor() as cur:
                # Tables made by a database administrator need no CREATE privilege of ours.
                cur.execute(
                    "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                    (f'"{self.schema}".champion_history', f'"{self.schema}".retrain_triggers'),
                )
                (present,) = cur.fetchone()
                if not present:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    cur.execute(sql.SQL(_DDL).format(schema=sql.Identifier(self.schema)))
            self._ready = True

    def table(self, name: str) -> sql.Composed:
        """``schema.name``, quoted."""
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(name))


class PostgresChampionHistory:
    """The champion history as the table ``champion_history``."""

    def __init__(self, db: Database):
        self.db = db

    def append(self, entry: HistoryEntry) -> HistoryEntry:
        """Insert ``entry`` (one transaction, committed when this returns); returns it."""
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self.db.table("champion_history"),
            sql.SQL(", ").join(map(sql.Identifier, _HISTORY_COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(_HISTORY_COLUMNS)),
        )
        with self.db.transaction() as cur:
            cur.execute(query, astuple(entry))
        return entry

    def entries(self) -> list[HistoryEntry]:
        """Every entry, in the order they were appended."""
        query = sql.SQL("SELECT {} FROM {} ORDER BY seq").format(
            sql.SQL(", ").join(map(sql.Identifier, _HISTORY_COLUMNS)), self.db.table("champion_history")
        )
        with self.db.transaction() as cur:
            cur.execute(query)
            rows = cur.fetchall()
        return [HistoryEntry(*row) for row in rows]

    def last_good(self, alias: str = "champion", exclude: str | None = None) -> str | None:
        """The rollback target: see :func:`driftloop.adapters.history.last_good`."""
        return last_good(self.entries(), alias, exclude)


class PostgresTriggerLedger:
    """The trigger ledger as the table ``retrain_triggers``: one row per window (unique), claims
    serialised by a transaction-scoped advisory lock."""

    def __init__(self, db: Database):
        self.db = db

    def _read(self, cur: Any) -> list[TriggerRecord]:
        cur.execute(sql.SQL("SELECT window_id, time FROM {} ORDER BY seq").format(self.db.table("retrain_triggers")))
        return [TriggerRecord(window_id, time) for window_id, time in cur.fetchall()]

    def _insert(self, cur: Any, window_id: str, reason: str, run: str) -> bool:
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (window_id, time, reason, run) VALUES (%s, clock_timestamp(), %s, %s) "
                "ON CONFLICT (window_id) DO NOTHING RETURNING seq"
            ).format(self.db.table("retrain_triggers")),
            (window_id, reason, run),
        )
        return cur.fetchone() is not None

    def records(self) -> list[TriggerRecord]:
        """Every trigger, in the order they were recorded."""
        with self.db.transaction() as cur:
            return self._read(cur)

    def record(self, window_id: str, reason: str, run: str = "") -> bool:
        """Record ``window_id`` unless it is there already (False then)."""
        with self.db.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LEDGER_LOCK,))
            return self._insert(cur, window_id, reason, run)

    def claim_window(self, window_id: str, check: RetrainCheck, *, run: str = "") -> RetrainDecision:
        """``check`` the records and record a positive answer, in one transaction under the
        ledger's advisory lock."""
        with self.db.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LEDGER_LOCK,))
            records = self._read(cur)
            cur.execute("SELECT clock_timestamp()")
            (now,) = cur.fetchone()
            decision = check(records, now)
            if decision.retrain and not self._insert(cur, window_id, decision.reason, run):
                return already_claimed(window_id)
            return decision
