"""The async database engine, units of work, and migrations at start."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from bot.storage.sqlite_inline import begin_immediate, inline_url

log = logging.getLogger(__name__)

PG_COMMAND_TIMEOUT = 60.0  # seconds before a PostgreSQL statement counts as failed
BUSY_TIMEOUT = 30.0  # seconds a SQLite unit of work waits for another process's write

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Execution option marking a read-only unit of work (Database.read).
READ_ONLY = "firstline_read_only"

# PostgreSQL cannot store U+0000 in text; it is stored as U+FFFD on every backend.
NUL, NUL_STANDIN = "\x00", "\ufffd"


class WriteQueue:
    """One writer at a time, first come first served, except that urgent writers go first."""

    def __init__(self) -> None:
        self._busy = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    async def acquire(self, urgent: bool = False) -> None:
        """Wait for the turn to write."""
        if not self._busy and not self._urgent and not self._normal:
            self._busy = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._normal).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # it was handed over just as we were cancelled
            raise

    def release(self) -> None:
        """Hand the turn to the next writer (urgent ones first), or free it."""
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._busy = False


def is_sqlite(url: str) -> bool:
    """Whether ``url`` points at SQLite."""
    return make_url(url).get_backend_name() == "sqlite"


class Database:
    """One async engine and its session factory.

    Every handled event runs in one :meth:`transaction`; repositories never commit.
    On SQLite every transaction starts with ``BEGIN IMMEDIATE`` so two writers queue
    instead of failing with "database is locked" when a read turns into a write.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        # Seconds a SQLite unit of work waits for another process's write lock (read when a
        # connection is made and at every BEGIN, so tests can shorten it).
        self.busy_timeout = BUSY_TIMEOUT
        self.url = url
        self.sqlite = is_sqlite(url)
        inline = inline_url(url) if self.sqlite else None
        self.inline = inline is not None
        kwargs: dict[str, Any] = {"echo": echo}
        if self.sqlite:
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT}
            if self.inline:
                # All calls happen in the loop's thread, but the pool may close a connection
                # from a finaliser elsewhere.
                kwargs["connect_args"]["check_same_thread"] = False
            db_path = make_url(url).database
            if db_path and db_path != ":memory:":
                Path(db_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
            if make_url(url).get_driver_name() == "asyncpg":
                # A connection that goes silent (no reset) must fail the unit of work, which
                # is then retried, rather than hang it: asyncpg has no timeout by default.
                kwargs["connect_args"] = {"command_timeout": PG_COMMAND_TIMEOUT}
        self.engine: AsyncEngine = create_async_engine(inline or url, **kwargs)
        event.listen(
            self.engine.sync_engine, "before_cursor_execute", _without_nul, retval=True
        )
        if self.sqlite:
            self._setup_sqlite()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Read-only units of work (reports, exports, status): on SQLite a plain deferred
        # BEGIN, so they never hold the database's one write lock (see read()).
        read_options: dict[str, Any] = {READ_ONLY: True}
        if not self.sqlite:
            read_options["isolation_level"] = "REPEATABLE READ"  # one snapshot, as on SQLite
        self._readers = async_sessionmaker(
            self.engine.execution_options(**read_options), expire_on_commit=False
        )
        # SQLite has one writer at a time: units of work of this process queue here, in
        # order, instead of polling the database lock.
        self._write_lock: WriteQueue | None = WriteQueue() if self.sqlite else None

    def _setup_sqlite(self) -> None:
        sync_engine = self.engine.sync_engine
        inline = self.inline

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is DEFERRED).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            if inline:
                # Never wait inside SQLite in the loop's thread: begin_immediate() waits
                # with asyncio.sleep, and in WAL nothing after BEGIN IMMEDIATE waits.
                cur.execute("PRAGMA busy_timeout=0")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get(READ_ONLY):
                # WAL: a reader sees one snapshot and never waits for, or holds up, a writer.
                conn.exec_driver_sql("BEGIN")
            elif inline:
                begin_immediate(conn, self.busy_timeout)
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    @asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[AsyncSession]:
        """A unit of work: commits once at the end, rolls back on any exception.

        On SQLite an ``urgent`` one (the outbox's short bookkeeping) goes before the queued
        others, so that delivery keeps up while events keep arriving.
        """
        if self._write_lock is None:
            async with self.sessions() as session, session.begin():
                yield session
            return
        await self._write_lock.acquire(urgent)
        try:
            async with self.sessions() as session, session.begin():
                yield session
        finally:
            self._write_lock.release()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work: one consistent snapshot, and on SQLite no write lock
        and no place in the writer queue, so a long report or export (even from another
        process, like the CLI) does not hold up the bot's writes. Never write in it."""
        async with self._readers() as session, session.begin():
            yield session

    async def upgrade(self) -> None:
        """Apply Alembic migrations up to head (safe to call at every start)."""
        async with self.engine.begin() as conn:
            if not self.sqlite:
                # Two instances starting together must not both create the schema: the
                # second waits here, then finds it at head. (SQLite: BEGIN IMMEDIATE does it.)
                await conn.execute(text("SELECT pg_advisory_xact_lock(74210501)"))
            await conn.run_sync(_upgrade_sync)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


def _without_nul(
    _conn: Connection,
    _cursor: Any,
    statement: str,
    parameters: Any,
    _context: Any,
    _executemany: bool,
) -> tuple[str, Any]:
    """Statement parameters with every NUL character replaced (text from users is data)."""
    return statement, _replace_nul(parameters)


def _replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(NUL, NUL_STANDIN) if NUL in value else value
    if isinstance(value, tuple):
        return tuple(_replace_nul(v) for v in value)
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    if isinstance(value, dict):
        return {k: _replace_nul(v) for k, v in value.items()}
    return value


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade_sync(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
