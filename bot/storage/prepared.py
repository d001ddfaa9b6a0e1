"""Fixed statements on the path of every event, run straight on the ``sqlite3`` connection.

Running a prebuilt Core statement through SQLAlchemy still costs ~100 µs of Python per call
(cache key, execution context, parameter processing, result setup, events) against ~10 µs
for the statement itself in SQLite. A :class:`Prepared` statement is compiled once per
dialect into its SQL text, the order of its parameters and their type processors (the very
ones SQLAlchemy would apply: ``UtcDateTime``, JSON), and on the in-thread SQLite dialect
(``sqlite:///``, :mod:`bot.storage.sqlite_inline`) it is executed with the DBAPI cursor of
the unit of work's own connection, inside its transaction. Every other database (aiosqlite,
PostgreSQL) runs the same statement through SQLAlchemy as before.

What the SQLAlchemy path does besides, the fast path does too: parameters carry U+0000 as
U+FFFD (:func:`bot.storage.db.replace_nul`), and ``sqlite3`` errors are raised as
SQLAlchemy's exceptions (``IntegrityError``, ``OperationalError``), so callers and the retry
around a unit of work see the same exceptions on both paths.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler

from bot.storage.sqlite_inline import SQLiteDialect_inline

NUL, NUL_STANDIN = "\x00", "\ufffd"


@dataclass(frozen=True)
class _Compiled:
    sql: str
    # Per positional parameter: its name and the type's bind processor (None: as is).
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]
    fixed: tuple[tuple[str, Any], ...]  # values written into the statement itself


def _text(value: Any) -> Any:
    # The one processing the SQLAlchemy path adds through the engine's event (db.py).
    if isinstance(value, str) and NUL in value:
        return value.replace(NUL, NUL_STANDIN)
    return value


class Prepared:
    """A statement with named parameters, compiled once, run on the fastest path there is.

    ``keys`` names the parameters every execution supplies (for an INSERT without
    ``.values()``: the columns). A statement that would need anything SQLAlchemy computes
    per execution (a Python-side column default, a parameter not in ``keys``) is refused at
    compile time rather than run differently.
    """

    def __init__(self, stmt: Executable, keys: Sequence[str]) -> None:
        self.stmt = stmt
        self.keys = tuple(keys)
        self._compiled: dict[type[Dialect], _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        stmt: Any = self.stmt  # an Executable clause element: Insert, Update, Select
        compiled = stmt.compile(dialect=dialect, column_keys=list(self.keys))
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        # Values written into the statement (``.values(status="sent")``) are parameters
        # with a fixed value; anything else must come from ``keys``.
        fixed = {
            n: compiled.binds[n].value
            for n in names
            if n not in self.keys and not compiled.binds[n].required
        }
        missing = set(names) - set(self.keys) - set(fixed)
        if (
            not compiled.positional
            or missing
            or compiled.insert_prefetch
            or compiled.update_prefetch
            or compiled.postfetch
            or any(compiled.binds[n].expanding for n in names)
        ):
            raise ValueError(f"not a fixed statement: {compiled.string!r}")
        # The bind processors of the compiled statement: the type decorators'
        # process_bind_param chained with the dialect's own (datetime text, JSON).
        processors = cast("Mapping[str, Callable[[Any], Any]]", compiled._bind_processors)
        result = _Compiled(
            compiled.string,
            tuple((n, processors.get(n)) for n in names),
            tuple(fixed.items()),
        )
        self._compiled[type(dialect)] = result
        return result

    def _args(self, dialect: Dialect, values: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
        c = self._compiled.get(type(dialect)) or self._compile(dialect)
        if c.fixed:
            values = {**dict(c.fixed), **values}
        return c.sql, tuple(
            _text(p(values[n]) if p is not None else values[n]) for n, p in c.params
        )

    async def execute(self, s: AsyncSession | AsyncConnection, values: Mapping[str, Any]) -> int:
        """Run once with ``values``; the number of rows it changed."""
        inline = await _inline(s)
        if inline is None:
            conn = await _connection(s)
            return int((await conn.execute(self.stmt, dict(values))).rowcount)
        raw, dialect = inline
        sql, args = self._args(dialect, values)
        try:
            cur = raw.execute(sql, args)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc
        return int(cur.rowcount)

    async def executemany(
        self, s: AsyncSession | AsyncConnection, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """Run once per parameter set in ``rows`` (one statement, many rows)."""
        if not rows:
            return
        inline = await _inline(s)
        if inline is None:
            conn = await _connection(s)
            await conn.execute(self.stmt, [dict(r) for r in rows])
            return
        raw, dialect = inline
        sql = ""
        args: list[tuple[Any, ...]] = []
        for values in rows:
            sql, one = self._args(dialect, values)
            args.append(one)
        try:
            raw.executemany(sql, args)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc

    async def scalars(
        self, s: AsyncSession | AsyncConnection, values: Mapping[str, Any]
    ) -> list[Any]:
        """Run once; the first column of every row it returned (``RETURNING`` / ``SELECT``)."""
        inline = await _inline(s)
        if inline is None:
            conn = await _connection(s)
            return list((await conn.execute(self.stmt, dict(values))).scalars())
        raw, dialect = inline
        sql, args = self._args(dialect, values)
        try:
            return [row[0] for row in raw.execute(sql, args).fetchall()]
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, args, exc, sqlite3.Error) from exc


async def _connection(s: AsyncSession | AsyncConnection) -> AsyncConnection:
    return await s.connection() if isinstance(s, AsyncSession) else s


_Inline = tuple[sqlite3.Connection, Dialect]


async def _inline(s: AsyncSession | AsyncConnection) -> _Inline | None:
    """The ``sqlite3`` connection of the unit of work, its transaction begun, and its
    dialect, if it runs on the in-thread SQLite dialect; else ``None``. Looked up once per
    transaction of a session."""
    if isinstance(s, AsyncSession):
        tx = s.sync_session.get_transaction()
        known = s.info.get(_RAW)
        if known is not None and tx is not None and known[0] is tx:
            found: _Inline | None = known[1]
            return found
        conn = await s.connection()  # begins the transaction (BEGIN IMMEDIATE)
        found = (
            (_raw(conn), conn.dialect) if isinstance(conn.dialect, SQLiteDialect_inline) else None
        )
        s.info[_RAW] = (s.sync_session.get_transaction(), found)
        return found
    if isinstance(s.dialect, SQLiteDialect_inline) and s.in_transaction():
        return _raw(s), s.dialect
    return None


def _raw(conn: AsyncConnection) -> sqlite3.Connection:
    raw = conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    assert isinstance(raw, sqlite3.Connection)
    return raw


_RAW = "firstline_inline_sqlite"  # Session.info key: (transaction, sqlite3 connection)
