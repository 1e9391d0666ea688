"""The job store: jobs and every state transition, in SQLite, safe across processes."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import JobNotFound

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ALLOWED = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"succeeded", "failed", "cancelled"}),
}

_JSON_FIELDS = ("request", "allocation", "progress", "last_metrics", "error", "spec")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    experiment TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    queue_position INTEGER,
    priority INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    request TEXT NOT NULL,
    spec TEXT NOT NULL,
    allocation TEXT,
    world_size INTEGER,
    run_id TEXT,
    model_uri TEXT,
    tracking_uri TEXT,
    backend TEXT NOT NULL DEFAULT 'local',
    backend_id TEXT,
    pid INTEGER,
    pid_create_time REAL,
    error TEXT,
    progress TEXT,
    last_metrics TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, priority, seq);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    from_status TEXT,
    to_status TEXT NOT NULL,
    at REAL NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions (job_id, id);
"""


#: Job records, as lists of plain dicts.
Records = list[dict[str, Any]]


class JobStore:
    """Persists job records in ``jobs.db``.

    Every write runs in an immediate transaction, so several processes (the server, a
    job's supervisor, a script with an embedded manager) can share one store. A state
    change only happens along an allowed transition and is recorded with its reason.

    Args:
        path: the SQLite file; created with its schema when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction; commits on success."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------

    def insert(self, record: dict[str, Any], *, max_queued: int | None = None) -> None:
        """Add a new job in ``queued`` state, refusing it if the queue is full."""
        from .errors import QueueFull

        now = time.time()
        row = {
            "id": record["id"],
            "name": record["name"],
            "experiment": record["experiment"],
            "status": "queued",
            "priority": record.get("priority", 0),
            "created_at": record.get("created_at", now),
            "request": json.dumps(record["request"]),
            "spec": json.dumps(record["spec"]),
            "tracking_uri": record.get("tracking_uri"),
            "backend": record.get("backend", "local"),
            "updated_at": now,
        }
        with self.transaction() as db:
            if max_queued is not None:
                (queued,) = db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
                ).fetchone()
                if queued >= max_queued:
                    raise QueueFull(
                        f"the queue already holds {queued} jobs (the limit is {max_queued}); "
                        "wait for some to finish or cancel queued ones"
                    )
            columns = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            db.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", tuple(row.values()))
            db.execute(
                "INSERT INTO transitions (job_id, from_status, to_status, at, reason) "
                "VALUES (?, NULL, 'queued', ?, NULL)",
                (record["id"], now),
            )

    def transition(
        self,
        job_id: str,
        to_status: str,
        reason: str | None = None,
        *,
        db: sqlite3.Connection | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to ``to_status`` if that is an allowed step; set ``fields`` with it.

        Returns False (and changes nothing) when the job is already in a state from which
        ``to_status`` cannot be reached, for example a cancel racing a normal exit.
        """
        if db is None:
            with self.transaction() as own:
                return self.transition(job_id, to_status, reason, db=own, **fields)
        row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        current = row["status"]
        if to_status not in ALLOWED.get(current, ()):
            return False
        now = time.time()
        values = dict(fields)
        values["status"] = to_status
        values["reason"] = reason
        values["updated_at"] = now
        if to_status == "running":
            values.setdefault("started_at", now)
        if to_status in TERMINAL:
            values.setdefault("ended_at", now)
        self._update(db, job_id, values)
        db.execute(
            "INSERT INTO transitions (job_id, from_status, to_status, at, reason) "
            "VALUES (?, ?, ?, ?, ?)",
            (job_id, current, to_status, now, reason),
        )
        return True

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields that are not the status (progress, run id, pid, ...)."""
        if "status" in fields:
            raise ValueError("use transition() to change a job's status")
        fields["updated_at"] = time.time()
        with self.transaction() as db:
            self._update(db, job_id, fields)

    @staticmethod
    def _update(db: sqlite3.Connection, job_id: str, fields: dict[str, Any]) -> None:
        encoded = {
            key: json.dumps(value) if key in _JSON_FIELDS and value is not None else value
            for key, value in fields.items()
        }
        assignments = ", ".join(f"{key} = ?" for key in encoded)
        cursor = db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ?", (*encoded.values(), job_id)
        )
        if cursor.rowcount == 0:
            raise JobNotFound(job_id)

    def delete(self, job_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM transitions WHERE job_id = ?", (job_id,))

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any]:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _decode(row)

    def ids(self) -> set[str]:
        """The ids of every recorded job."""
        return {row[0] for row in self._connection().execute("SELECT id FROM jobs")}

    def list(
        self, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[Records, int]:
        """Jobs newest first, and how many match in all."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        db = self._connection()
        (total,) = db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()
        rows = db.execute(
            f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [_decode(row) for row in rows], total

    def active(self, db: sqlite3.Connection | None = None) -> Records:
        """Queued and running jobs, in scheduling order (priority, then arrival)."""
        rows = (
            (db or self._connection())
            .execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'running') "
                "ORDER BY priority DESC, seq ASC"
            )
            .fetchall()
        )
        return [_decode(row) for row in rows]

    def transitions(self, job_id: str | None = None) -> Records:
        query = "SELECT * FROM transitions"
        args: tuple[Any, ...] = ()
        if job_id is not None:
            query += " WHERE job_id = ?"
            args = (job_id,)
        rows = self._connection().execute(query + " ORDER BY id", args).fetchall()
        return [dict(row) for row in rows]

    def version(self) -> str:
        """A token that changes whenever any job changes (for conditional requests)."""
        row = (
            self._connection()
            .execute(
                "SELECT COUNT(*), COALESCE(MAX(updated_at), 0), "
                "(SELECT COALESCE(MAX(id), 0) FROM transitions) FROM jobs"
            )
            .fetchone()
        )
        return f"{row[0]}-{row[1]:.6f}-{row[2]}"


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in _JSON_FIELDS:
        if record.get(key) is not None:
            record[key] = json.loads(record[key])
    record.pop("seq", None)
    return record
