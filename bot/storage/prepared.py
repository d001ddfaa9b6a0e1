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
from functools import cache
from typing import Any, cast

from sqlalchemy import Executable, bindparam, insert, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstanceState, make_transient_to_detached
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
            or getattr(compiled, "postfetch", None)
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

    async def _on_inline(
        self, s: AsyncSession | AsyncConnection, values: Mapping[str, Any]
    ) -> tuple[sqlite3.Cursor, Dialect] | None:
        """Run once on the in-thread SQLite connection: its cursor and dialect; ``None``
        (nothing run) on any other database."""
        inline = await _inline(s)
        if inline is None:
            return None
        raw, dialect = inline
        sql, args = self._args(dialect, values)
        return _run(raw, sql, args), dialect

    async def execute(self, s: AsyncSession | AsyncConnection, values: Mapping[str, Any]) -> int:
        """Run once with ``values``; the number of rows it changed."""
        ran = await self._on_inline(s, values)
        if ran is None:
            conn = await _connection(s)
            return int((await conn.execute(self.stmt, dict(values))).rowcount)
        return int(ran[0].rowcount)

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

    async def insert(self, s: AsyncSession, values: Mapping[str, Any]) -> int | None:
        """Run an INSERT of one row on the in-thread SQLite connection; its rowid.
        ``None`` (nothing run) on any other database."""
        ran = await self._on_inline(s, values)
        return ran[0].lastrowid if ran is not None else None

    async def scalars(
        self, s: AsyncSession | AsyncConnection, values: Mapping[str, Any]
    ) -> list[Any]:
        """Run once; the first column of every row it returned (``RETURNING`` / ``SELECT``)."""
        ran = await self._on_inline(s, values)
        if ran is None:
            conn = await _connection(s)
            return list((await conn.execute(self.stmt, dict(values))).scalars())
        return [row[0] for row in ran[0].fetchall()]


def _run(raw: Any, sql: str, args: Sequence[Any]) -> sqlite3.Cursor:
    """``raw.execute`` with ``sqlite3`` errors raised as SQLAlchemy's, as on its own path."""
    try:
        return cast("sqlite3.Cursor", raw.execute(sql, args))
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


@cache
def _update_of(model: Any, keys: tuple[str, ...]) -> Prepared:
    """``UPDATE <table> SET <keys> WHERE <primary key> = :pk``, prepared once per set."""
    mapper = sa_inspect(model)
    (pk,) = mapper.primary_key
    cols: dict[Any, Any] = {mapper.columns[k]: bindparam(f"v_{k}") for k in keys}
    return Prepared(
        update(model).where(pk == bindparam("pk")).values(cols),
        (*(f"v_{k}" for k in keys), "pk"),
    )


async def save_changes(s: AsyncSession, *objs: Any) -> None:
    """Write the changed columns of persistent ORM objects now, as the session's flush
    would (one UPDATE of just those columns per object), and mark them clean.

    On the in-thread SQLite dialect this is a prepared statement per object instead of the
    ORM's flush machinery, which costs several times the statements themselves; elsewhere
    the objects are left to the flush at commit. Only plain column attributes are written
    here: an object with any other change (a relationship, an expired attribute) is left to
    the flush as well.
    """
    inline = await _inline(s)
    if inline is None:
        return
    identity_map = s.sync_session.identity_map
    for obj in objs:
        state: InstanceState[Any] = sa_inspect(obj)
        if not state.modified or not state.persistent or state.expired_attributes:
            continue
        changed = tuple(sorted(state.committed_state))
        mapper = state.mapper
        if not changed or any(k not in mapper.columns for k in changed):
            continue
        if any(mapper.columns[k].primary_key for k in changed):
            continue
        values = {f"v_{k}": state.dict[k] for k in changed}
        values["pk"] = state.identity[0] if state.identity else None
        model: Any = mapper.class_
        await _update_of(model, changed).execute(s, values)
        # What the flush does after its UPDATE: the object is clean again.
        state._commit_all(state.dict, identity_map)


@cache
def _insert_of(model: Any) -> tuple[Prepared, tuple[tuple[str, Any], ...]] | None:
    """The prepared INSERT of every column of ``model`` but its integer primary key, with
    each column's Python-side default (``None`` when the model cannot be inserted so)."""
    mapper = sa_inspect(model)
    if len(mapper.primary_key) != 1 or mapper.relationships:
        return None
    pk = mapper.primary_key[0]
    defaults: list[tuple[str, Any]] = []
    for attr in mapper.column_attrs:
        col = attr.columns[0]
        if col is pk:
            continue
        if col.server_default is not None and col.default is None:
            return None  # the database would fill it in: the ORM reads it back
        defaults.append((attr.key, col.default))
    keys = tuple(k for k, _ in defaults)
    stmt = insert(model).values({mapper.columns[k]: bindparam(f"v_{k}") for k in keys})
    return Prepared(stmt, tuple(f"v_{k}" for k in keys)), tuple(defaults)


async def add_now(s: AsyncSession, obj: Any) -> None:
    """Insert a new ORM object at once and make it persistent in ``s``: what
    ``s.add(obj); await s.flush()`` does, with its id set.

    On the in-thread SQLite dialect the row is written by a prepared INSERT of every column
    (the model's Python-side defaults filled in as the flush would) and the object joins
    the session as if loaded; elsewhere, or with other objects waiting for the flush (which
    might have to go first), it is the session's flush.
    """
    model: Any = type(obj)
    prepared = _insert_of(model)
    if prepared is None or s.sync_session.new or await _inline(s) is None:
        s.add(obj)
        await s.flush()
        return
    stmt, defaults = prepared
    state: InstanceState[Any] = sa_inspect(obj)
    values: dict[str, Any] = {}
    for key, default in defaults:
        if key in state.dict:
            values[key] = state.dict[key]
        elif default is None:
            values[key] = None
        elif default.is_scalar:
            values[key] = default.arg
        elif default.is_callable:
            values[key] = default.arg(None)
        else:  # a SQL expression as default: let the flush do it
            s.add(obj)
            await s.flush()
            return
    rowid = await stmt.insert(s, {f"v_{k}": v for k, v in values.items()})
    for key, value in values.items():
        if key not in state.dict:
            setattr(obj, key, value)
    (pk,) = state.mapper.primary_key
    setattr(obj, state.mapper.get_property_by_column(pk).key, rowid)
    # As though loaded from the row just written: persistent, nothing left to flush.
    make_transient_to_detached(obj)
    s.sync_session.add(obj)


@dataclass(frozen=True)
class _Loader:
    """How to turn a slice of a raw row into a persistent ORM object of ``model``."""

    model: Any
    keys: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    pk_index: int


@cache
def _loader(model: Any, dialect: Any) -> _Loader:
    mapper = sa_inspect(model)
    keys: list[str] = []
    processors: list[Callable[[Any], Any] | None] = []
    pk_index = -1
    for i, col in enumerate(mapper.local_table.columns):
        keys.append(mapper.get_property_by_column(col).key)
        processors.append(col.type.dialect_impl(dialect).result_processor(dialect, None))
        if col.primary_key:
            pk_index = i
    return _Loader(model, tuple(keys), tuple(processors), pk_index)


def columns_of(*models: Any) -> list[Any]:
    """Every column of each model's table, in table order: what :meth:`Prepared.objects`
    reads back (a SELECT of these, outer joins allowed)."""
    return [c for m in models for c in sa_inspect(m).local_table.columns]


async def load_objects(
    s: AsyncSession, stmt: Prepared, models: Sequence[Any], values: Mapping[str, Any]
) -> list[Any | None] | None:
    """Run ``stmt`` (a SELECT of :func:`columns_of` ``models``) for its first row and make
    one persistent ORM object per model from it (``None`` for a model whose columns are all
    NULL: an outer join that found nothing), as a query of those entities would; ``[]``
    when no row matched. ``None`` when not on the in-thread SQLite dialect: the caller then
    runs its ORM query.

    An object of the same identity already in the session is returned as it is, as the
    ORM does without ``populate_existing``.
    """
    ran = await stmt._on_inline(s, values)
    if ran is None:
        return None
    cur, dialect = ran
    row = cur.fetchone()
    if row is None:
        return []
    session = s.sync_session
    out: list[Any | None] = []
    at = 0
    for model in models:
        ld = _loader(model, dialect)
        out.append(_object(session, ld, row[at : at + len(ld.keys)]))
        at += len(ld.keys)
    return out


async def load_all(
    s: AsyncSession, stmt: Prepared, model: Any, values: Mapping[str, Any]
) -> list[Any] | None:
    """Run ``stmt`` (a SELECT of :func:`columns_of` ``model``) and make a persistent ORM
    object of every row, in order, as a query of the entity would. ``None`` when not on the
    in-thread SQLite dialect: the caller then runs its ORM query."""
    ran = await stmt._on_inline(s, values)
    if ran is None:
        return None
    cur, dialect = ran
    rows = cur.fetchall()
    ld = _loader(model, dialect)
    session = s.sync_session
    return [_object(session, ld, row) for row in rows]


def _object(session: Any, ld: _Loader, part: Sequence[Any]) -> Any | None:
    """The persistent object of one row (``None`` if its primary key is NULL)."""
    pk = part[ld.pk_index]
    if pk is None:
        return None
    mapper = sa_inspect(ld.model)
    existing = session.identity_map.get(mapper.identity_key_from_primary_key((pk,)))
    if existing is not None:
        return existing
    obj = mapper.class_manager.new_instance()
    state: InstanceState[Any] = sa_inspect(obj)
    for k, p, v in zip(ld.keys, ld.processors, part, strict=True):
        state.dict[k] = p(v) if p is not None and v is not None else v
    # As a query's load: persistent, clean, its identity the primary key.
    make_transient_to_detached(obj)
    session.add(obj)
    return obj
