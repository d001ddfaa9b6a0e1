"""The database briefly unavailable: no event is lost, the outbox resumes afterwards.

SQLite: the file is locked by another connection beyond the busy timeout. PostgreSQL (when
``FIRSTLINE_TEST_PG_URL`` is set): every connection is cut and new ones are refused by a TCP
proxy in front of the server. In both, an event that arrives during the outage is not
acknowledged as handled — :class:`DatabaseUnavailable` reaches the adapter, so the platform
delivers it again — and the outbox, which cannot even claim rows meanwhile, delivers
everything once the database is back. The platform adapters' side of this is in
``tests/telegram/test_faults.py`` and ``tests/slack/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from bot.app import App
from bot.clock import FakeClock
from bot.domain import UserEvent
from bot.storage.errors import DatabaseUnavailable, database_unavailable
from bot.storage.models import Event, Outbox
from config.settings import DatabaseSettings, EscalationSettings, Settings
from handlers.memory import CHANNEL, MemoryChannel
from tests.conftest import PG_URL, PgDatabases, sqlite_url
from tests.fakes.db_outage import SqliteLock, short_busy_timeout
from tests.fakes.tcp_proxy import FaultyProxy


def _settings(url: str) -> Settings:
    return Settings(
        database=DatabaseSettings(url=url),
        escalation=EscalationSettings(default_destination="memory:l2"),
    )


@pytest.fixture
async def lite(tmp_path: Path, clock: FakeClock) -> AsyncIterator[App]:
    """The app on a SQLite file that gives up on a lock after 30 ms."""
    app = await App.create(_settings(sqlite_url(tmp_path)), clock)
    await short_busy_timeout(app.db)
    try:
        yield app
    finally:
        await app.close()


async def _count(app: App, model: type, **where: str) -> int:
    async with app.db.transaction() as s:
        stmt = select(func.count()).select_from(model)
        for key, value in where.items():
            stmt = stmt.where(getattr(model, key) == value)
        return int((await s.execute(stmt)).scalar_one())


async def _until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (bounded) for something a background task does."""
    for _ in range(int(within / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def _ann(event_id: str, text: str) -> UserEvent:
    return UserEvent(CHANNEL, event_id, MemoryChannel.user("ann"), "ann", "message", text=text)


@pytest.mark.sqlite  # a locked SQLite file: runs on the PostgreSQL pass too
async def test_an_outage_ending_mid_failure_still_leaves_the_event_for_redelivery(
    lite: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's unit of work meets the lock; the lock is gone a moment later, while the
    failure is being dealt with. The event must not be written off as a failed intake with an
    apology: it is left unhandled, and the platform's re-delivery is processed for real."""
    mem = MemoryChannel(lite)
    lock = SqliteLock(lite.settings.database.url)
    real_keep_failed = lite._keep_failed

    async def database_back(*args: object, **kwargs: object) -> None:
        lock.release()
        await real_keep_failed(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lite, "_keep_failed", database_back)
    try:
        lock.acquire()
        with pytest.raises(DatabaseUnavailable) as caught:
            await lite.handle_user(_ann("tg-1", "I forgot my password"))
        assert database_unavailable(caught.value)
        lock.release()
        assert await _count(lite, Event, kind="intake_failed") == 0
        assert await _count(lite, Outbox) == 0  # no apology, nothing half-done
        again = await lite.handle_user(_ann("tg-1", "I forgot my password"))
        assert not again.duplicate and not again.refused
        await mem.deliver()
        assert "password" in mem.transcript("ann").lower()
    finally:
        lock.close()


@pytest.mark.sqlite  # a locked SQLite file: runs on the PostgreSQL pass too
async def test_the_outbox_pauses_during_the_outage_and_resumes_after(
    lite: App, caplog: pytest.LogCaptureFixture
) -> None:
    mem = MemoryChannel(lite)
    assert mem.dispatcher is not None
    await lite.handle_user(_ann("e-1", "hello"))  # queued, not delivered yet
    lock = SqliteLock(lite.settings.database.url)
    try:
        with lock:
            with pytest.raises(Exception) as caught:
                await mem.dispatcher.run_once()
            assert database_unavailable(caught.value)
            # The long-running loop survives failing passes and keeps polling.
            stop = asyncio.Event()
            with caplog.at_level(logging.ERROR, logger="bot.outbox"):
                loop = asyncio.create_task(mem.dispatcher.run_forever(stop, poll_seconds=0.01))
                await _until(lambda: any("outbox pass failed" in r.message for r in caplog.records))
            assert mem.messages("ann") == []
        # The lock is gone: the running loop delivers without anyone waking it.
        await _until(lambda: bool(mem.messages("ann")))
        stop.set()
        await loop
        assert len(mem.messages("ann")) == 1
        assert await _count(lite, Outbox, status="pending") == 0
    finally:
        lock.close()


# ---------------------------------------------------------------------- PostgreSQL


@asynccontextmanager
async def _behind_proxy(
    pg_databases: PgDatabases | None, slot: str, clock: FakeClock
) -> AsyncIterator[tuple[App, FaultyProxy]]:
    """The app on this worker's PostgreSQL database ``slot``, reached through a TCP proxy
    that can cut, refuse or stall its connections."""
    assert pg_databases is not None
    url = make_url(await pg_databases.clean(slot))
    proxy = await FaultyProxy(url.host or "127.0.0.1", url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = await App.create(_settings(proxied), clock)
    try:
        yield app, proxy
    finally:
        await app.close()
        await proxy.close()


@pytest.mark.skipif(not PG_URL, reason="FIRSTLINE_TEST_PG_URL not set")
async def test_postgresql_connections_dropped_and_refused(
    clock: FakeClock, pg_databases: PgDatabases | None
) -> None:
    async with _behind_proxy(pg_databases, "outage", clock) as (app, proxy):
        mem = MemoryChannel(app)
        assert mem.dispatcher is not None
        await mem.say("ann", "hello")  # pooled connections exist now
        await app.handle_user(_ann("pg-1", "I forgot my password"))  # queued, not delivered
        proxy.set_mode("refuse")  # the server goes away: connections cut, new ones refused
        with pytest.raises(DatabaseUnavailable):
            await app.handle_user(_ann("pg-2", "vpn does not connect"))
        with pytest.raises(Exception) as caught:
            await mem.dispatcher.run_once()
        assert database_unavailable(caught.value)
        assert proxy.cut > 0
        proxy.set_mode("pass")  # back
        await mem.deliver()  # the row queued before the outage
        res = await app.handle_user(_ann("pg-2", "vpn does not connect"))  # re-delivered
        assert not res.duplicate and not res.refused
        await mem.deliver()
        assert await _count(app, Event, kind="intake_failed") == 0
        assert await _count(app, Outbox, status="pending") == 0
        texts = mem.transcript("ann").lower()
        assert "password" in texts and "vpn" in texts
        # A connection dropped in the middle of a unit of work is an outage too.
        proxy.cut_all()
        res = await app.handle_user(_ann("pg-3", "printer jam"))
        assert not res.refused  # the pool noticed the dead connection and reconnected


@pytest.mark.skipif(not PG_URL, reason="FIRSTLINE_TEST_PG_URL not set")
async def test_a_silent_postgresql_connection_fails_the_unit_of_work_instead_of_hanging(
    clock: FakeClock, pg_databases: PgDatabases | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that swallows requests without a reset (a dead NAT entry, a frozen
    server) must end in DatabaseUnavailable after the command timeout, not hang the event."""
    import bot.storage.db as db_module

    monkeypatch.setattr(db_module, "PG_COMMAND_TIMEOUT", 0.5)
    async with _behind_proxy(pg_databases, "stall", clock) as (app, proxy):
        await app.handle_user(_ann("st-1", "hello"))  # a pooled connection exists now
        proxy.set_mode("stall")
        with pytest.raises(DatabaseUnavailable):
            await asyncio.wait_for(app.handle_user(_ann("st-2", "printer jam")), 20)
        proxy.set_mode("pass")
        res = await app.handle_user(_ann("st-2", "printer jam"))  # the platform re-delivers
        assert not res.duplicate and not res.refused
