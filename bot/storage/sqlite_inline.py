"""SQLite for the asyncio engine without a thread hop per statement.

aiosqlite runs every statement in a helper thread and hands the result back through the
event loop: about 100 µs of overhead per statement, against a few µs for the statement
itself. A unit of work of a dozen statements spends most of its time in those hops.

This dialect is SQLAlchemy's own ``pysqlite`` dialect marked as async: the asyncio
extension runs the ORM in a greenlet and the driver calls ``sqlite3`` directly, in the
event loop's thread. That is sound for SQLite in WAL mode with ``synchronous=NORMAL``
because a statement is a short CPU-bound call (a commit writes to the WAL without fsync),
and the one call that could wait — taking the write lock while another connection holds
it — never blocks here: ``busy_timeout`` is 0 and ``BEGIN IMMEDIATE`` is retried with an
``asyncio.sleep`` between tries (:func:`begin_immediate`).

Selected by a ``sqlite://`` (or ``sqlite+pysqlite://``) URL; ``sqlite+aiosqlite://`` keeps
aiosqlite.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Generator
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.util import await_
from sqlalchemy.util.concurrency import in_greenlet

DRIVER = "firstline_inline"
registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect_inline")

# First retry delays of BEGIN IMMEDIATE while another connection writes (then the last one).
_BUSY_DELAYS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)


class _Ready(Awaitable[None]):
    """An awaitable that completes at once, without yielding to the event loop."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that finishes at once


_READY = _Ready()


def _checkpoint() -> None:
    # The asyncio extension insists that a statement run through AsyncConnection awaited
    # something (AwaitRequired otherwise): hand it an awaitable that is already done. This
    # costs two greenlet switches, not a trip through the event loop.
    if in_greenlet():
        await_(_READY)


class InlineCursor(sqlite3.Cursor):
    """A ``sqlite3`` cursor with the hooks the asyncio extension expects of async drivers."""

    def execute(self, sql: str, parameters: Any = (), /) -> InlineCursor:
        """Run one statement (in this thread)."""
        _checkpoint()
        super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> InlineCursor:
        """Run one statement for each parameter set (in this thread)."""
        _checkpoint()
        super().executemany(sql, seq_of_parameters)
        return self

    async def _async_soft_close(self) -> None:
        """Nothing to do: rows are read from SQLite in this thread whenever asked for."""


class InlineConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose cursors are :class:`InlineCursor`."""

    def cursor(self, factory: Any = InlineCursor) -> Any:
        """A new cursor (an :class:`InlineCursor` unless told otherwise)."""
        return super().cursor(factory)


class SQLiteDialect_inline(SQLiteDialect_pysqlite):
    """``pysqlite`` driven from the event loop's thread (see the module docstring)."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True
    has_terminate = False

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        """A ``sqlite3`` connection that hands out :class:`InlineCursor` objects."""
        cparams.setdefault("factory", InlineConnection)
        return super().connect(*cargs, **cparams)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        """A pool that waits with ``await`` when empty; one shared connection in memory."""
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool


def inline_url(url: str) -> URL | None:
    """The URL with this dialect's driver name if ``url`` asks for plain SQLite, else None."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.drivername in ("sqlite", "sqlite+pysqlite"):
        return u.set(drivername=f"sqlite+{DRIVER}")
    return None


def begin_immediate(conn: Connection, timeout: float) -> None:
    """``BEGIN IMMEDIATE``, waiting for another writer with ``asyncio.sleep``.

    Runs inside SQLAlchemy's greenlet, so :func:`sqlalchemy.util.await_` can yield to the
    event loop between tries instead of blocking it in SQLite's busy handler.
    """
    raw: Any = conn.connection.dbapi_connection
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() >= deadline:
                raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        delay = _BUSY_DELAYS[min(attempt, len(_BUSY_DELAYS) - 1)]
        attempt += 1
        if in_greenlet():
            await_(asyncio.sleep(delay))
        else:  # a synchronous caller (none in the app) has nothing else to do meanwhile
            time.sleep(delay)
