"""Small data-access helpers. They never commit: the caller's unit of work does."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Executable, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.domain import UserRef
from bot.storage.models import (
    Base,
    Chat,
    Conversation,
    Counter,
    Event,
    Outbox,
    ProcessedEvent,
    User,
)
from bot.storage.prepared import Prepared, add_now, columns_of, load_objects


# Statements on the path of every event are built once: building and hashing a statement
# costs more than running it on SQLite.
@cache
def _insert_ignore(dialect: str, model: type[Base], columns: tuple[str, ...]) -> Prepared:
    ins = sqlite_insert if dialect == "sqlite" else pg_insert
    stmt: Executable = (
        ins(model).values({c: bindparam(c) for c in columns}).on_conflict_do_nothing()
    )
    return Prepared(stmt, columns)


_TURN_ROWS = (
    select(User, Chat, Conversation)
    .select_from(User)
    .outerjoin(Chat, (Chat.channel == bindparam("channel")) & (Chat.chat_key == bindparam("chat")))
    .outerjoin(Conversation, Conversation.id == Chat.conversation_id)
    .where(User.channel == bindparam("channel"), User.external_id == bindparam("user"))
)
# The same query for the in-thread SQLite dialect, its row turned into objects directly.
_TURN_ROWS_PREPARED = Prepared(
    _TURN_ROWS.with_only_columns(*columns_of(User, Chat, Conversation)),
    ("channel", "user", "chat"),
)


async def insert_once(s: AsyncSession, model: type[Base], **values: Any) -> bool:
    """Insert a row unless its unique key exists; ``True`` if this call inserted it.

    The claim behind idempotent intake and exactly-once digests: ON CONFLICT DO NOTHING on
    SQLite and PostgreSQL (no savepoint, no exception on the hot path), a savepoint
    elsewhere.
    """
    dialect = s.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        stmt = _insert_ignore(dialect, model, tuple(values))
        # Not the ORM: its bulk path would hide the row count.
        return await stmt.execute(s, values) == 1
    try:
        async with s.begin_nested():
            await s.execute(insert(model).values(**values))
    except IntegrityError:
        return False
    return True


async def claim_event(s: AsyncSession, channel: str, event_id: str, now: datetime) -> bool:
    """Record a platform event id; ``False`` if it was already processed (a re-delivery)."""
    return await insert_once(
        s, ProcessedEvent, channel=channel, event_id=event_id, processed_at=now
    )


_INSERT_EVENT = Prepared(
    insert(Event), ("at", "kind", "actor", "ticket_id", "conversation_id", "data")
)
_INSERT_OUTBOX = Prepared(
    insert(Outbox),
    (
        "channel",
        "target",
        "kind",
        "payload",
        "ticket_id",
        "status",
        "attempts",
        "next_attempt_at",
        "created_at",
    ),
)


async def log_event(
    s: AsyncSession,
    kind: str,
    *,
    actor: str,
    at: datetime,
    ticket_id: int | None = None,
    conversation_id: int | None = None,
    **data: Any,
) -> None:
    """Append to the event log (who, when, what).

    Written at once with a plain INSERT (no ORM object: nothing reads it back in the unit
    of work, and the ORM's flush would cost more than the statement), prepared once.
    """
    await _INSERT_EVENT.execute(
        s,
        {
            "at": at,
            "kind": kind,
            "actor": actor,
            "ticket_id": ticket_id,
            "conversation_id": conversation_id,
            "data": data,
        },
    )


async def enqueue(
    s: AsyncSession,
    *,
    channel: str,
    target: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    ticket_id: int | None = None,
) -> None:
    """Queue a platform call; it is sent after the unit of work commits.

    Rows are inserted at once, in call order: the dispatcher sends a target's rows in id
    order.
    """
    await _INSERT_OUTBOX.execute(
        s,
        {
            "channel": channel,
            "target": target,
            "kind": kind,
            "payload": payload,
            "ticket_id": ticket_id,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        },
    )


async def next_value(s: AsyncSession, name: str, start: int) -> int:
    """The next number of a named sequence, starting at ``start``."""
    for _ in range(3):
        res = await s.execute(
            update(Counter)
            .where(Counter.name == name)
            .values(value=Counter.value + 1)
            .returning(Counter.value)
        )
        value = res.scalar_one_or_none()
        if value is not None:
            return int(value)
        try:
            async with s.begin_nested():
                await s.execute(insert(Counter).values(name=name, value=start))
            return start
        except IntegrityError:
            continue  # another process created it first; increment theirs
    raise RuntimeError(f"could not allocate a value of counter {name!r}")


async def turn_rows(
    s: AsyncSession, ref: UserRef, chat_key: str
) -> tuple[User, Chat | None, Conversation | None] | None:
    """A known user with their chat ``chat_key`` and its current conversation, in one query.

    ``None`` when the user is new. No row lock: for SQLite, whose transactions already hold
    the database's write lock (``BEGIN IMMEDIATE``).
    """
    values = {"channel": ref.channel, "user": ref.user_id, "chat": chat_key}
    loaded = await load_objects(s, _TURN_ROWS_PREPARED, (User, Chat, Conversation), values)
    if loaded is not None:
        if not loaded:
            return None
        user, chat, conv = loaded
        assert isinstance(user, User)
        return user, cast(Chat | None, chat), cast(Conversation | None, conv)
    row = (await s.execute(_TURN_ROWS, values)).one_or_none()
    if row is None:
        return None
    return row[0], row[1], row[2]


async def get_or_create_user(s: AsyncSession, ref: UserRef, now: datetime) -> User:
    """The user row for ``ref``, created or refreshed (name, username, platform language)."""
    user = (
        await s.execute(
            select(User).where(User.channel == ref.channel, User.external_id == ref.user_id)
        )
    ).scalar_one_or_none()
    if user is None:
        return await create_user(s, ref, now)
    refresh_user(user, ref, now)
    return user


async def create_user(s: AsyncSession, ref: UserRef, now: datetime) -> User:
    """A new user row for ``ref`` (the caller knows there is none)."""
    user = User(
        channel=ref.channel,
        external_id=ref.user_id,
        display_name=ref.display_name[:200],
        username=ref.username,
        platform_language=ref.language_code,
        timezone=ref.timezone,
        unreachable=False,
        banned=False,
        created_at=now,
        updated_at=now,
    )
    await add_now(s, user)
    return user


def refresh_user(user: User, ref: UserRef, now: datetime) -> None:
    """Take the platform's current name, username, language and time zone of ``user``."""
    changed = False
    if ref.display_name and user.display_name != ref.display_name[:200]:
        user.display_name = ref.display_name[:200]
        changed = True
    if ref.username and user.username != ref.username:
        user.username = ref.username
        changed = True
    if ref.language_code and user.platform_language != ref.language_code:
        user.platform_language = ref.language_code
        changed = True
    if ref.timezone and user.timezone != ref.timezone:
        user.timezone = ref.timezone
        changed = True
    if changed:
        user.updated_at = now
