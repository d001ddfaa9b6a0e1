"""Shared fixtures: isolated settings, an injected clock, the app on a fresh database."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.app import App
from bot.clock import FakeClock
from config.settings import DatabaseSettings, EscalationSettings, Settings
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


@pytest.fixture
def clock() -> FakeClock:
    """Monday 2026-01-12 10:00 Moscow time (07:00 UTC): inside business hours."""
    return FakeClock(datetime(2026, 1, 12, 7, 0, tzinfo=UTC))


def sqlite_url(tmp_path: Path, name: str = "firstline.db", driver: str = "") -> str:
    """A file SQLite database in the test's folder (``driver="aiosqlite"`` for aiosqlite)."""
    scheme = f"sqlite+{driver}" if driver else "sqlite"
    return f"{scheme}:///{tmp_path / name}"


# FIRSTLINE_TEST_DB=postgresql runs the app-level tests on PostgreSQL (FIRSTLINE_TEST_PG_URL
# names the server): each xdist worker gets its own database, wiped before every test.
TEST_DB = os.environ.get("FIRSTLINE_TEST_DB", "sqlite")


async def _worker_pg_url(worker: str) -> str:
    import asyncpg
    from sqlalchemy.engine import make_url

    from bot.storage.db import Database

    base = make_url(PG_URL)
    name = f"firstline_test_{worker}".replace("-", "_")
    conn = await asyncpg.connect(
        user=base.username or "postgres", host=base.host or "127.0.0.1",
        port=base.port or 5432, database=base.database or "postgres",
    )
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = base.set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    from sqlalchemy import text

    async with db.engine.begin() as c:
        await c.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await c.execute(text("CREATE SCHEMA public"))
    await db.dispose()
    return url


@pytest.fixture
async def database_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The database of one test: a SQLite file, or a fresh PostgreSQL database."""
    if TEST_DB != "postgresql":
        return sqlite_url(tmp_path)
    if not PG_URL:
        pytest.skip("FIRSTLINE_TEST_DB=postgresql needs FIRSTLINE_TEST_PG_URL")
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    return await _worker_pg_url(worker)


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
