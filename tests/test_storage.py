"""Storage contract: the same suite on SQLite always, and on PostgreSQL when one is given.

Set ``FIRSTLINE_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test`` (``.ci/run``
does when the server answers): each test worker then creates its own databases on that
server next to the one named and drops them at the end.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.app import App
from bot.clock import FakeClock
from bot.domain import UserEvent, UserRef
from bot.outbox import Dispatcher, OutboxItem, SendResult
from bot.storage.db import Database
from bot.storage.models import Base, Chat, Conversation, Event, Outbox, Ticket, User
from bot.storage.prepared import add_now, save_changes
from bot.storage.repo import (
    claim_event,
    create_user,
    enqueue,
    log_event,
    next_value,
    turn_rows,
)
from config.settings import DatabaseSettings, EscalationSettings, Settings
from handlers.memory import MemoryChannel
from tests.conftest import PG_URL, PgDatabases, sqlite_url

BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),  # on the PostgreSQL pass too
    pytest.param("sqlite+aiosqlite", marks=pytest.mark.sqlite),
    pytest.param(
        "postgresql", marks=pytest.mark.skipif(not PG_URL, reason="FIRSTLINE_TEST_PG_URL not set")
    ),
]


@pytest.fixture(params=BACKENDS)
async def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_databases: PgDatabases | None
) -> str:
    """A fresh empty database of each backend, whatever FIRSTLINE_TEST_DB says: this
    contract is what both backends must agree on."""
    if request.param.startswith("sqlite"):
        return sqlite_url(tmp_path, driver=request.param.partition("+")[2])
    assert pg_databases is not None
    return await pg_databases.clean("fresh", empty=True)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """A migrated database."""
    database = Database(db_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.dispose()


def _settings(url: str) -> Settings:
    return Settings(
        database=DatabaseSettings(url=url),
        escalation=EscalationSettings(default_destination="memory:l2"),
    )


async def test_migrations_match_the_models_and_rerun_cleanly(db: Database) -> None:
    await db.upgrade()  # second run: nothing to do, no error

    def diff(conn: Connection) -> list[object]:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        return list(compare_metadata(ctx, Base.metadata))

    async with db.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_event_ids_are_claimed_once(db: Database) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    async with db.transaction() as s:
        assert await claim_event(s, "telegram", "u1", now)
        assert not await claim_event(s, "telegram", "u1", now)
        assert await claim_event(s, "slack", "u1", now)  # ids are per channel
    async with db.transaction() as s:
        assert not await claim_event(s, "telegram", "u1", now)


async def test_counter_is_sequential_and_concurrency_safe(db: Database) -> None:
    async def take() -> int:
        async with db.transaction() as s:
            return await next_value(s, "ticket", 1001)

    values = await asyncio.gather(*(take() for _ in range(10)))
    assert sorted(values) == list(range(1001, 1011))


async def test_datetimes_come_back_aware_utc(db: Database) -> None:
    at = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    async with db.transaction() as s:
        await log_event(s, "probe", actor="test", at=at.astimezone(), x=1)
    async with db.transaction() as s:
        ev = (await s.execute(select(Event))).scalar_one()
    assert ev.at == at and ev.at.tzinfo is not None and ev.data == {"x": 1}


async def test_nul_characters_in_text_are_stored_as_replacement_characters(
    db: Database,
) -> None:
    """PostgreSQL refuses U+0000 in text; a user's message with one must not fail its event
    (and, on Telegram, hold back every later update until it succeeds)."""
    now = datetime(2026, 3, 1, tzinfo=UTC)
    async with db.transaction() as s:
        assert await claim_event(s, "memory", "id\x00", now)
        await log_event(s, "probe", actor="ann\x00", at=now, text="a\x00b")
    async with db.transaction() as s:
        assert not await claim_event(s, "memory", "id\x00", now)
        ev = (await s.execute(select(Event))).scalar_one()
    assert ev.actor == "ann\ufffd"
    assert ev.data == {"text": "a\x00b"}  # inside JSON it travels escaped, and comes back


async def test_naive_datetimes_are_refused(db: Database) -> None:
    with pytest.raises(Exception, match="naive"):
        async with db.transaction() as s:
            await log_event(s, "probe", actor="test", at=datetime(2026, 1, 1))


class _Recorder:
    channel = "memory"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.fail_first: set[str] = set()

    async def send(self, item: OutboxItem) -> SendResult:
        if item.payload["text"] in self.fail_first:
            self.fail_first.discard(item.payload["text"])
            return SendResult(ok=False, retry_after=30, error="429")
        self.seen.append((item.target, item.payload["text"]))
        return SendResult()


async def test_outbox_keeps_order_per_target_through_retries(db: Database) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    async with db.transaction() as s:
        for i in range(3):
            for target in ("a", "b"):
                await enqueue(
                    s,
                    channel="memory",
                    target=target,
                    kind="message",
                    payload={"text": f"{target}{i}"},
                    now=clock.now(),
                )
    rec = _Recorder()
    rec.fail_first = {"a0"}
    d = Dispatcher(db, clock, desk=None, senders={"memory": rec})  # type: ignore[arg-type]
    await d.drain()
    # a0 waits 30 s for its retry, and nothing of "a" may overtake it; "b" flows.
    assert [t for tg, t in rec.seen if tg == "a"] == []
    assert [t for tg, t in rec.seen if tg == "b"] == ["b0", "b1", "b2"]
    clock.advance(timedelta(seconds=31))
    await d.drain()
    assert [t for tg, t in rec.seen if tg == "a"] == ["a0", "a1", "a2"]


async def test_two_dispatchers_never_send_a_row_twice(db: Database) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    async with db.transaction() as s:
        for i in range(40):
            await enqueue(
                s,
                channel="memory",
                target=f"t{i % 8}",
                kind="message",
                payload={"text": str(i)},
                now=clock.now(),
            )
    rec = _Recorder()
    d1 = Dispatcher(db, clock, desk=None, senders={"memory": rec}, worker_id="w1")  # type: ignore[arg-type]
    d2 = Dispatcher(db, clock, desk=None, senders={"memory": rec}, worker_id="w2")  # type: ignore[arg-type]
    await asyncio.gather(d1.drain(), d2.drain())
    texts = [t for _, t in rec.seen]
    assert sorted(texts, key=int) == [str(i) for i in range(40)]
    async with db.transaction() as s:
        assert set((await s.execute(select(Outbox.status))).scalars()) == {"sent"}


async def test_a_long_read_holds_up_no_writer_and_sees_one_snapshot(db_url: str) -> None:
    """Reports, exports and status read through ``Database.read``: while one is open,
    writers of this process and of another (the bot, while an admin runs the CLI) go on."""
    here, other = Database(db_url), Database(db_url)
    await here.upgrade()
    here.busy_timeout = other.busy_timeout = 2.0

    async def count() -> int:
        async with here.read() as r:
            return len((await r.execute(select(Event))).all())

    async def write(db: Database) -> None:
        async with db.transaction() as s:
            await log_event(s, "probe", actor="test", at=datetime(2026, 1, 12, tzinfo=UTC))

    try:
        await write(here)
        async with here.read() as r:
            seen = len((await r.execute(select(Event))).all())
            async with asyncio.timeout(5):
                await write(other)  # another process: not locked out
                await write(here)  # this process: not queued behind the read
            assert len((await r.execute(select(Event))).all()) == seen == 1  # its snapshot
        assert await count() == 3
    finally:
        await here.dispose()
        await other.dispose()


async def test_a_conversation_survives_a_restart(db_url: str) -> None:
    clock = FakeClock(datetime(2026, 1, 12, 7, tzinfo=UTC))
    app = await App.create(_settings(db_url), clock)
    mem = MemoryChannel(app)
    await mem.command("ann", "start")
    await mem.press("ann", "Network")
    step1 = mem.last("ann")
    await mem.press("ann", "Didn't help")
    step2 = mem.last("ann")
    assert step1 != step2 and "Step 2" in step2
    await app.close()

    app2 = await App.create(_settings(db_url), clock)
    mem2 = MemoryChannel(app2)
    # The old buttons still work after the restart: the state is in the database.
    data = mem.messages("ann")[-1].buttons()[1]["data"]
    await mem2.press_data("ann", data)
    assert "Step 3" in mem2.last("ann")
    async with app2.db.transaction() as s:
        conv = (await s.execute(select(Conversation))).scalar_one()
    assert conv.state == "checklist"
    await app2.close()


async def test_first_claim_wins_under_concurrency(db_url: str) -> None:
    clock = FakeClock(datetime(2026, 1, 12, 7, tzinfo=UTC))
    app = await App.create(_settings(db_url), clock)
    mem = MemoryChannel(app)
    await mem.command("ann", "start")
    await mem.press("ann", "Billing")
    for _ in range(10):
        buttons = mem.messages("ann")[-1].buttons()
        if any("Done" in b["label"] for b in buttons):
            break
        await mem.press_data("ann", buttons[-1]["data"])
    await mem.press("ann", "Done")
    await mem.press("ann", "Normal")
    async with app.db.transaction() as s:
        ticket = (await s.execute(select(Ticket))).scalar_one()
    number = f"FL-{ticket.number}"
    results = await asyncio.gather(*(mem.agent(f"agent{i}", "claim", number) for i in range(5)))
    assert sum(not r.refused for r in results) == 1
    async with app.db.transaction() as s:
        owner = (await s.execute(select(Ticket.owner_key))).scalar_one()
    assert owner is not None
    await app.close()


# ---------------------------------------------------------------- SQLite in the loop's thread


@pytest.fixture
async def inline_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite file opened with the default ``sqlite:///`` URL."""
    database = Database(sqlite_url(tmp_path))
    await database.upgrade()
    try:
        yield database
    finally:
        await database.dispose()


@pytest.mark.sqlite  # about SQLite itself: runs on the PostgreSQL pass too
async def test_plain_sqlite_urls_run_statements_in_the_loops_thread(
    inline_db: Database, tmp_path: Path
) -> None:
    threads: set[int] = set()

    def record(*_args: object) -> None:
        threads.add(threading.get_ident())

    event.listen(inline_db.engine.sync_engine, "before_cursor_execute", record)
    async with inline_db.transaction() as s:
        await log_event(s, "probe", actor="test", at=datetime(2026, 3, 1, tzinfo=UTC))
        assert (await s.execute(select(Event.kind))).scalar_one() == "probe"
    async with inline_db.engine.connect() as conn:  # AsyncConnection works too
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    assert threads == {threading.get_ident()}

    aio = Database(sqlite_url(tmp_path, "aio.db", driver="aiosqlite"))
    assert not aio.inline and inline_db.inline
    await aio.dispose()


@pytest.mark.sqlite  # about SQLite itself: runs on the PostgreSQL pass too
async def test_a_writer_of_another_process_is_waited_for_without_blocking_the_loop(
    inline_db: Database, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "firstline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def write() -> None:
        async with inline_db.transaction() as s:
            await log_event(s, "probe", actor="test", at=datetime(2026, 3, 1, tzinfo=UTC))

    tick_task = asyncio.create_task(ticker())
    writer = asyncio.create_task(write())
    for _ in range(50):
        await asyncio.sleep(0.001)
    assert not writer.done()  # still waiting for the lock ...
    assert ticks > 50  # ... while the loop keeps running other work
    other.execute("COMMIT")
    await asyncio.wait_for(writer, timeout=5)
    tick_task.cancel()
    other.close()
    async with inline_db.transaction() as s:
        assert (await s.execute(select(Event.kind))).scalar_one() == "probe"


@pytest.mark.sqlite  # about SQLite itself: runs on the PostgreSQL pass too
async def test_waiting_for_another_process_gives_up_after_the_busy_timeout(
    inline_db: Database, tmp_path: Path
) -> None:
    inline_db.busy_timeout = 0.05  # read at every BEGIN
    other = sqlite3.connect(tmp_path / "firstline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"):
            async with inline_db.transaction() as s:
                await s.execute(text("SELECT 1"))
    finally:
        other.execute("COMMIT")
        other.close()
    async with inline_db.transaction() as s:  # the connection is usable again
        assert (await s.execute(text("SELECT 1"))).scalar_one() == 1


@pytest.mark.sqlite  # about SQLite itself: runs on the PostgreSQL pass too
@pytest.mark.parametrize("driver", ["", "aiosqlite"])
async def test_units_of_work_of_one_process_queue_before_touching_sqlite(
    tmp_path: Path, driver: str
) -> None:
    database = Database(sqlite_url(tmp_path, driver=driver))
    await database.upgrade()
    checkouts = 0

    def count(*_args: object) -> None:
        nonlocal checkouts
        checkouts += 1

    event.listen(database.engine.sync_engine, "checkout", count)
    release = asyncio.Event()

    async def first() -> None:
        async with database.transaction() as s:
            await s.execute(text("SELECT 1"))
            await release.wait()

    async def second() -> None:
        async with database.transaction() as s:
            await s.execute(text("SELECT 1"))

    t1 = asyncio.create_task(first())
    for _ in range(20):
        await asyncio.sleep(0)
    t2 = asyncio.create_task(second())
    for _ in range(20):
        await asyncio.sleep(0.001)
    # The second waits in the process before it takes a connection, not in SQLite's busy
    # handler or a retry loop.
    assert checkouts == 1 and not t2.done()
    release.set()
    await asyncio.gather(t1, t2)
    assert checkouts == 2
    await database.dispose()


@pytest.mark.sqlite  # about SQLite itself: runs on the PostgreSQL pass too
async def test_a_turn_of_a_known_user_reads_its_rows_in_one_query(tmp_path: Path) -> None:
    # Traced in SQLite itself: prepared statements (bot/storage/prepared.py) bypass
    # SQLAlchemy's statement events.
    statements: list[str] = []

    def trace(dbapi_conn: Any, _record: object) -> None:
        dbapi_conn.set_trace_callback(statements.append)

    event.listen(Engine, "connect", trace)
    try:
        clock = FakeClock(datetime(2026, 1, 12, 7, tzinfo=UTC))
        app = await App.create(_settings(sqlite_url(tmp_path)), clock)
    finally:
        event.remove(Engine, "connect", trace)
    mem = MemoryChannel(app)
    await mem.command("ann", "start")
    await mem.press("ann", "Network")
    data = mem.messages("ann")[-1].buttons()[1]["data"]  # "Didn't help" on step 1
    statements.clear()
    press = UserEvent("memory", "e-step", mem.user("ann"), "ann", "button", data=data)
    await app.handle_user(press)
    turn = list(statements)
    selects = [st for st in turn if st.lstrip().upper().startswith("SELECT")]
    assert any(st.startswith("INSERT INTO processed_events") for st in turn), turn
    await mem.deliver()
    assert "Step 2" in mem.last("ann")
    assert len(selects) == 1, selects  # user, chat and conversation together
    await app.close()


async def test_the_dispatcher_waits_for_a_wake_once_nothing_is_left_behind(db: Database) -> None:
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    rec = _Recorder()
    d = Dispatcher(db, clock, desk=None, senders={"memory": rec})  # type: ignore[arg-type]
    claims = 0
    claim = d._claim

    async def counting(now: datetime, limit: int) -> list[tuple[Outbox, bool]]:
        nonlocal claims
        claims += 1
        return await claim(now, limit)

    d._claim = counting  # type: ignore[method-assign]

    async def queue(*texts: str, target: str = "a") -> None:
        async with db.transaction() as s:
            for t in texts:
                await enqueue(
                    s,
                    channel="memory",
                    target=target,
                    kind="message",
                    payload={"text": t},
                    now=clock.now(),
                )
        d.wake()

    async def settle(seen: int = 0) -> None:
        # Until ``seen`` rows were sent and then a while longer (aiosqlite hops threads).
        for _ in range(500):
            if len(rec.seen) >= seen:
                break
            await asyncio.sleep(0.002)
        for _ in range(20):
            await asyncio.sleep(0.002)

    stop = asyncio.Event()
    runner = asyncio.create_task(d.run_forever(stop, poll_seconds=3600))
    await settle()
    assert claims == 1  # the first pass found nothing and waits
    await queue("one")
    await settle(1)
    # One pass delivered the row; nothing was left behind, so no second query.
    assert rec.seen == [("a", "one")] and claims == 2
    await queue("two", "three")  # two rows of one target: the second needs another pass
    await settle(3)
    assert [t for _, t in rec.seen] == ["one", "two", "three"] and claims == 4
    stop.set()
    await runner


@pytest.mark.sqlite  # about SQLite itself: runs on the PostgreSQL pass too
async def test_urgent_units_of_work_go_before_queued_ones(inline_db: Database) -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def work(name: str, *, urgent: bool = False, hold: bool = False) -> None:
        async with inline_db.transaction(urgent=urgent) as s:
            await s.execute(text("SELECT 1"))
            order.append(name)
            if hold:
                await release.wait()

    first = asyncio.create_task(work("first", hold=True))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(work(f"turn{i}")) for i in range(3)]
    await asyncio.sleep(0)
    outbox = asyncio.create_task(work("outbox", urgent=True))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(work("gone"))
    await asyncio.sleep(0)
    cancelled.cancel()  # a waiter that gives up does not block the queue
    release.set()
    await asyncio.gather(first, *queued, outbox)
    assert order == ["first", "outbox", "turn0", "turn1", "turn2"]


# ---------------------------------------------------------------- prepared statements
# On sqlite:/// the hot path's statements bypass SQLAlchemy (bot/storage/prepared.py);
# aiosqlite and PostgreSQL run them through it. Every backend must store and read alike.


async def test_prepared_writes_store_what_sqlalchemy_stores(db: Database) -> None:
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    async with db.transaction() as s:
        await log_event(s, "probe\x00", actor="a\x00b", at=at, ticket_id=None, text="c\x00d")
        await enqueue(
            s, channel="memory", target="t\x00", kind="message", payload={"x": [1, "é"]}, now=at
        )
    async with db.read() as s:
        ev = (await s.execute(select(Event))).scalar_one()
        row = (await s.execute(select(Outbox))).scalar_one()
    assert (ev.kind, ev.actor, ev.at, ev.ticket_id) == ("probe\ufffd", "a\ufffdb", at, None)
    assert ev.data == {"text": "c\x00d"}  # JSON keeps it, escaped
    assert (row.target, row.payload, row.status, row.attempts) == (
        "t\ufffd",
        {"x": [1, "é"]},
        "pending",
        0,
    )
    assert row.next_attempt_at == at and row.next_attempt_at.tzinfo is not None
    assert row.result is None


async def test_prepared_statements_raise_sqlalchemys_errors(db: Database) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    ref = UserRef("memory", "ann", display_name="Ann")
    async with db.transaction() as s:
        await create_user(s, ref, now)
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await create_user(s, ref, now)  # (channel, external_id) is unique
    async with db.transaction() as s:  # the claim still works after the failed unit
        assert await claim_event(s, "memory", "e1", now)
        assert not await claim_event(s, "memory", "e1", now)


async def test_rows_made_objects_directly_behave_as_loaded_ones(db: Database) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    ref = UserRef("memory", "ann", display_name="Ann", language_code="en")
    async with db.transaction() as s:
        user = await create_user(s, ref, now)
        chat = Chat(
            channel="memory", chat_key="ann", user_id=user.id, created_at=now, updated_at=now
        )
        await add_now(s, chat)
        conv = Conversation(
            chat_id=chat.id,
            user_id=user.id,
            state="idle",
            lang="en",
            started_at=now,
            updated_at=now,
        )
        await add_now(s, conv)
        chat.conversation_id = conv.id
        await save_changes(s, chat)
        # Defaults filled in as the flush would; nothing left for the flush to write.
        assert user.id and chat.id and conv.id
        assert (user.flood_count, user.banned, chat.prompt_nonce) == (0, False, 0)
        assert (conv.data, conv.problem, conv.details) == ({}, "", "")
        assert not s.sync_session.new
        # sqlite:/// writes at once; elsewhere the session's flush does at commit.
        assert bool(s.sync_session.dirty) != db.inline
    async with db.transaction() as s:
        found = await turn_rows(s, ref, "ann")
        assert found is not None
        user, chat2, conv2 = found
        assert chat2 is not None and conv2 is not None
        assert (chat2.conversation_id, conv2.state, conv2.data) == (conv.id, "idle", {})
        assert user.created_at == now and user.flood_window_start is None
        assert not s.sync_session.dirty
        # Another statement of the unit of work changes a column the object does not know
        # of; writing the object's own change must not put the old value back.
        await s.execute(update(User).where(User.id == user.id).values(banned=True))
        user.display_name = "Ann B."
        conv2.data = {"shown": ["a1"]}
        await save_changes(s, user, chat2, conv2)
        assert bool(s.sync_session.dirty) != db.inline
        # An identity already in the session comes back as that very object.
        again = await turn_rows(s, ref, "ann")
        assert again is not None and again[0] is user
    async with db.read() as s:
        u = (await s.execute(select(User))).scalar_one()
        c = (await s.execute(select(Conversation))).scalar_one()
    assert (u.display_name, u.banned, c.data) == ("Ann B.", True, {"shown": ["a1"]})
    assert c.updated_at == now and c.updated_at.tzinfo is not None
