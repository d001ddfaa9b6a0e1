"""The async database engine, units of work, and migrations at start."""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# PostgreSQL cannot store U+0000 in text; it is stored as U+FFFD on every backend.
NUL, NUL_STANDIN = "\x00", "\ufffd"


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
        self.url = url
        self.sqlite = is_sqlite(url)
        kwargs: dict[str, Any] = {"echo": echo}
        if self.sqlite:
            kwargs["connect_args"] = {"timeout": 30}
            db_path = make_url(url).database
            if db_path and db_path != ":memory:":
                Path(db_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        event.listen(
            self.engine.sync_engine, "before_cursor_execute", _without_nul, retval=True
        )
        if self.sqlite:
            self._setup_sqlite()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def _setup_sqlite(self) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is DEFERRED).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: commits once at the end, rolls back on any exception."""
        async with self.sessions() as session, session.begin():
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
