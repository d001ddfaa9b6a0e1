"""Shared fixtures: isolated settings, an injected clock, the app on a fresh database."""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bot.app import App
from bot.clock import FakeClock
from bot.storage.db import Database, is_sqlite
from config.settings import DEFAULTS_DIR, DatabaseSettings, EscalationSettings, Settings
from handlers.memory import MemoryChannel

PLATFORM_ENV = [
    "DATABASE_URL",
    "FIRSTLINE_CONFIG",
    "FIRSTLINE_KB_DIR",
    "FIRSTLINE_CONTENT_DIR",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_API_URL",
    "TELEGRAM_WEBHOOK_URL",
    "TELEGRAM_WEBHOOK_SECRET",
    "TELEGRAM_L2_CHAT_ID",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "SLACK_API_URL",
    "SLACK_L2_CHANNEL",
    "FIRSTLINE_HTTP_HOST",
    "FIRSTLINE_HTTP_PORT",
]

# The PostgreSQL server the storage contract runs against too, when given.
PG_URL = os.environ.get("FIRSTLINE_TEST_PG_URL", "")


def pytest_configure(config: pytest.Config) -> None:
    """Register this suite's own marker."""
    config.addinivalue_line(
        "markers", "sqlite: the test is about SQLite itself and opens SQLite on any pass"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start `firstline` processes (they take the child's environment or a
    database of their own) go first: the longest tests, spread over the workers from the
    start instead of keeping one busy after the other has finished."""
    items.sort(key=lambda item: not _STARTS_PROCESSES & set(getattr(item, "fixturenames", ())))


_STARTS_PROCESSES = {"process_env", "postgresql_url"}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer's tokens or config leak into a test; cwd has no .env."""
    for name in PLATFORM_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("FIRSTLINE_") and name != "FIRSTLINE_TEST_PG_URL":
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection outside 127.0.0.1 / ::1 / unix sockets fails the test."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        if isinstance(address, tuple) and address and isinstance(address[0], str):
            host = address[0]
            if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
                raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)


_CACHE: dict[tuple[str, str], Any] = {}


def _bundled_key(settings: Settings) -> str | None:
    """What the content and KB of ``settings`` depend on, if every file is a bundled one
    (those never change during a run); ``None`` for a test's own files."""
    files = [settings.content.path(n) for n in ("categories", "sla", "customers")]
    if not all(f.resolve().is_relative_to(DEFAULTS_DIR) for f in [*files, settings.kb.folder()]):
        return None
    return settings.model_dump_json(exclude={"database", "telegram", "slack", "http", "log"})


@pytest.fixture(autouse=True)
def _bundled_content_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse the bundled content and build its KB once per worker; each app gets its own
    deep copy (the matcher learns from feedback: one shared object would leak between
    tests). Building the KB took most of an app's start."""
    import bot.app as app_module
    from bot.content import load_content as real_load

    real_build = app_module.build_kb

    def cached(kind: str, settings: Settings, make: Callable[[], Any]) -> Any:
        key = _bundled_key(settings)
        if key is None:
            return make()
        if (kind, key) not in _CACHE:
            _CACHE[kind, key] = make()
        return copy.deepcopy(_CACHE[kind, key])

    def load_content(settings: Settings) -> Any:
        return cached("content", settings, lambda: real_load(settings))

    def build_kb(settings: Settings, content: Any) -> Any:
        return cached("kb", settings, lambda: real_build(settings, content))

    monkeypatch.setattr(app_module, "load_content", load_content)
    monkeypatch.setattr(app_module, "build_kb", build_kb)


@pytest.fixture(autouse=True)
def _no_sqlite_on_the_postgresql_pass(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With FIRSTLINE_TEST_DB=postgresql, opening SQLite fails the test unless it is marked
    ``sqlite``: a database not taken from ``database_url`` would quietly skip PostgreSQL."""
    if TEST_DB != "postgresql" or request.node.get_closest_marker("sqlite"):
        return
    real_init = Database.__init__

    def init(self: Database, url: str, **kwargs: Any) -> None:
        if is_sqlite(url):
            raise AssertionError(f"SQLite on the PostgreSQL pass ({url}): use database_url")
        real_init(self, url, **kwargs)

    monkeypatch.setattr(Database, "__init__", init)


@pytest.fixture
def clock() -> FakeClock:
    """Monday 2026-01-12 10:00 Moscow time (07:00 UTC): inside business hours."""
    return FakeClock(datetime(2026, 1, 12, 7, 0, tzinfo=UTC))


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sqlite_url(tmp_path: Path, name: str = "firstline.db", driver: str = "") -> str:
    """A file SQLite database in the test's folder (``driver="aiosqlite"`` for aiosqlite)."""
    scheme = f"sqlite+{driver}" if driver else "sqlite"
    return f"{scheme}:///{tmp_path / name}"


# FIRSTLINE_TEST_DB=postgresql runs every test that uses ``database_url`` on PostgreSQL
# (FIRSTLINE_TEST_PG_URL names the server and a database to connect to for admin work).
TEST_DB = os.environ.get("FIRSTLINE_TEST_DB", "sqlite")
# A test database whose run started this long ago and that nobody uses is a killed run's.
STALE_TEST_DB_SECONDS = 6 * 3600


class PgDatabases:
    """The PostgreSQL databases of one test worker.

    Each is created on first use and dropped when the worker ends. Names carry the test
    run's id and the xdist worker, so parallel runs from several checkouts on one server
    never touch each other's data. The names start with the run's start time, so a run
    killed before its end leaves databases that a later run drops (:meth:`drop_stale`).
    """

    def __init__(self, server_url: str, run_id: str, worker: str, started: int) -> None:
        self.server = make_url(server_url)
        self.prefix = f"fl_test_{started}_{run_id}_{worker}".replace("-", "_").lower()
        self.created: set[str] = set()

    async def drop_stale(self, now: int, older_than: int = STALE_TEST_DB_SECONDS) -> list[str]:
        """Drop the databases of runs that started over ``older_than`` seconds ago and hold
        no connection (a run killed before its end); the names dropped."""
        admin = await asyncpg.connect(self._dsn(self.server.database or "postgres"))
        dropped: list[str] = []
        try:
            rows = await admin.fetch(
                "SELECT d.datname FROM pg_database d WHERE d.datname ~ '^fl_test_[0-9]{10}_'"
                " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"
            )
            for row in rows:
                name = str(row["datname"])
                started = int(name.split("_")[2])
                if started < 1_700_000_000 or now - started < older_than:  # not a start time
                    continue
                try:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    dropped.append(name)
                except asyncpg.PostgresError:
                    continue  # somebody connected meanwhile, or another worker dropped it
        finally:
            await admin.close()
        return dropped

    def _dsn(self, database: str) -> str:
        return self.server.set(drivername="postgresql", database=database).render_as_string(
            hide_password=False
        )

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of one of our databases."""
        return self.server.set(database=database).render_as_string(hide_password=False)

    async def clean(self, slot: str = "main", *, empty: bool = False) -> str:
        """The URL of database ``slot``, migrated, with no rows left by an earlier test.

        A schema already at the migration head keeps its tables and loses only its rows
        and sequence positions (milliseconds, where re-creating it takes about a second);
        any other schema is dropped and migrated again. ``empty=True``: no schema at all.
        """
        name = f"{self.prefix}_{slot}"
        if name not in self.created:
            admin = await asyncpg.connect(self._dsn(self.server.database or "postgres"))
            try:
                if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await admin.execute(f'CREATE DATABASE "{name}"')
                    # A commit need not wait for the disk: nobody recovers a test database.
                    await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            finally:
                await admin.close()
            self.created.add(name)
        conn = await asyncpg.connect(self._dsn(name))
        try:
            at_head = False
            if not empty and await conn.fetchval("SELECT to_regclass('public.alembic_version')"):
                version = await conn.fetchval("SELECT version_num FROM alembic_version")
                at_head = version == _migration_head()
            if at_head:
                tables = await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'alembic_version'"
                )
                async with conn.transaction():
                    # Foreign keys are not checked while the rows go, in any order.
                    await conn.execute("SET LOCAL session_replication_role = replica")
                    await conn.execute(
                        ";".join(f'DELETE FROM "{r["tablename"]}"' for r in tables)
                    )
                    await conn.execute(
                        "SELECT setval(oid, 1, false) FROM pg_class"
                        " WHERE relkind = 'S' AND relnamespace = 'public'::regnamespace"
                    )
            else:
                await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
        finally:
            await conn.close()
        url = self.url(name)
        if not empty and not at_head:
            db = Database(url)
            try:
                await db.upgrade()
            finally:
                await db.dispose()
        return url

    async def drop_all(self) -> None:
        """Drop every database this worker created."""
        if not self.created:
            return
        admin = await asyncpg.connect(self._dsn(self.server.database or "postgres"))
        try:
            for name in sorted(self.created):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        self.created.clear()


@functools.cache
def _migration_head() -> str | None:
    from alembic.script import ScriptDirectory

    from bot.storage.db import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture(scope="session")
def pg_databases(request: pytest.FixtureRequest) -> Iterator[PgDatabases | None]:
    """This worker's PostgreSQL databases, or None without FIRSTLINE_TEST_PG_URL."""
    if not PG_URL:
        yield None
        return
    workerinput = getattr(request.config, "workerinput", {})
    run_id = str(workerinput.get("testrunuid", uuid.uuid4().hex))[:10]
    worker = str(workerinput.get("workerid", "main"))
    dbs = PgDatabases(PG_URL, run_id, worker, int(time.time()))
    if worker in ("main", "gw0"):
        dropped = asyncio.run(dbs.drop_stale(int(time.time())))
        if dropped:
            print(f"dropped {len(dropped)} test databases left by killed runs", file=sys.stderr)
    yield dbs
    asyncio.run(dbs.drop_all())


@pytest.fixture
async def database_url(tmp_path: Path, pg_databases: PgDatabases | None) -> str:
    """The database of one test, migrated and empty: a SQLite file, or with
    FIRSTLINE_TEST_DB=postgresql this worker's PostgreSQL database. Child processes get it
    as DATABASE_URL."""
    if TEST_DB != "postgresql":
        return await _migrated_sqlite(tmp_path)
    if pg_databases is None:
        pytest.skip("FIRSTLINE_TEST_DB=postgresql needs FIRSTLINE_TEST_PG_URL")
    return await pg_databases.clean()


async def _migrated_sqlite(tmp_path: Path) -> str:
    """A SQLite file in the test's folder, copied from one migrated once per worker."""
    template = _CACHE.get(("sqlite", "template"))
    if template is None:
        template = Path(tempfile.mkdtemp(prefix="firstline-test-")) / "template.db"
        db = Database(sqlite_url(template.parent, template.name))
        await db.upgrade()
        await db.dispose()
        _CACHE["sqlite", "template"] = template
    shutil.copyfile(template, tmp_path / "firstline.db")
    return sqlite_url(tmp_path)


@pytest.fixture
async def postgresql_url(pg_databases: PgDatabases | None) -> str:
    """An empty PostgreSQL database (no schema) whatever FIRSTLINE_TEST_DB says, for tests
    that are about PostgreSQL itself; skipped without FIRSTLINE_TEST_PG_URL."""
    if pg_databases is None:
        pytest.skip("FIRSTLINE_TEST_PG_URL not set")
    return await pg_databases.clean("fresh", empty=True)


@pytest.fixture
def process_env(database_url: str) -> dict[str, str]:
    """The environment of a `firstline` child process: ours without platform settings, with
    the test's database, so the child and the test share it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "SLACK_"))}
    env["DATABASE_URL"] = database_url
    return env


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Defaults plus the test's own database."""
    return Settings(
        database=DatabaseSettings(url=database_url),
        escalation=EscalationSettings(default_destination="memory:l2"),
    )


@pytest.fixture
async def app(settings: Settings, clock: FakeClock) -> AsyncIterator[App]:
    """The whole application on a fresh database with the bundled content."""
    application = await App.create(settings, clock)
    try:
        yield application
    finally:
        await application.close()


@pytest.fixture
def mem(app: App) -> Iterator[MemoryChannel]:
    """An in-memory channel bound to ``app``."""
    yield MemoryChannel(app)
