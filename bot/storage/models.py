"""Database tables. The database is the source of truth for every conversation and ticket.

Changing a model needs an Alembic migration in ``bot/migrations/versions``; a test compares
the models with the migrated schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse naive datetimes; store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Tz = UtcDateTime()
Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (migrations depend on them)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: Tz,
    }


class User(Base):
    """A person on a platform: end user or consultant."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    username: Mapped[str | None] = mapped_column(String(200))
    language: Mapped[str | None] = mapped_column(String(8))  # chosen with /lang
    platform_language: Mapped[str | None] = mapped_column(String(16))
    timezone: Mapped[str | None] = mapped_column(String(64))  # IANA name, when known
    unreachable: Mapped[bool] = mapped_column(Boolean, default=False)
    unreachable_reason: Mapped[str | None] = mapped_column(String(200))
    banned: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Flood control (bot/flood.py): a fixed window and the user's events in it. Kept on the
    # row so the limit holds across restarts and processes.
    flood_window_start: Mapped[datetime | None]
    flood_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    flood_warned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    erased_at: Mapped[datetime | None]  # /forget: personal data erased at this moment


class Chat(Base):
    """A private chat between the bot and one user; points at the current conversation."""

    __tablename__ = "chats"
    __table_args__ = (UniqueConstraint("channel", "chat_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    chat_key: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    conversation_id: Mapped[int | None] = mapped_column(Id)
    # Buttons carry this nonce; a press with an older one is a stale button.
    prompt_nonce: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Conversation(Base):
    """One problem a user brought to the bot, from first message to its outcome."""

    __tablename__ = "conversations"
    __table_args__ = (Index(None, "started_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    state: Mapped[str] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lang: Mapped[str] = mapped_column(String(8))
    category: Mapped[str | None] = mapped_column(String(64))
    problem: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(32))
    ticket_id: Mapped[int | None] = mapped_column(Id)
    started_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class KbImpression(Base):
    """A KB article shown to a user, and their verdict on it."""

    __tablename__ = "kb_impressions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    article_id: Mapped[str] = mapped_column(String(128), index=True)
    query: Mapped[str] = mapped_column(Text)
    score: Mapped[float]
    decision: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16))  # helped / not_helped
    shown_at: Mapped[datetime]
    verdict_at: Mapped[datetime | None]


class KbQuery(Base):
    """Every free-text question and how the matcher decided; feeds ``kb gaps``."""

    __tablename__ = "kb_queries"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    query: Mapped[str] = mapped_column(Text)
    lang: Mapped[str] = mapped_column(String(8))
    decision: Mapped[str] = mapped_column(String(16))
    top_article: Mapped[str | None] = mapped_column(String(128))
    top_score: Mapped[float | None]
    at: Mapped[datetime] = mapped_column(index=True)


class ChecklistAnswer(Base):
    """The user's answer to one checklist step."""

    __tablename__ = "checklist_answers"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"), index=True)
    category: Mapped[str] = mapped_column(String(64))
    step_id: Mapped[str] = mapped_column(String(64))
    option_id: Mapped[str] = mapped_column(String(64))
    answered_at: Mapped[datetime]


class Ticket(Base):
    """A problem escalated to humans, with its SLA deadlines and owner."""

    __tablename__ = "tickets"
    __table_args__ = (Index(None, "status"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    chat_id: Mapped[int] = mapped_column(ForeignKey("chats.id"))
    status: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(4), default="l2")
    priority: Mapped[str] = mapped_column(String(16))
    tier: Mapped[str] = mapped_column(String(32))
    organisation: Mapped[str | None] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(300))
    lang: Mapped[str] = mapped_column(String(8))
    destination: Mapped[str] = mapped_column(String(128))
    l3_destination: Mapped[str | None] = mapped_column(String(128))
    owner_key: Mapped[str | None] = mapped_column(String(96))
    owner_name: Mapped[str | None] = mapped_column(String(200))
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_response_at: Mapped[datetime | None]
    last_customer_at: Mapped[datetime | None]
    last_agent_at: Mapped[datetime | None]
    # The reply that the next-response clock waits for is owed since this moment.
    awaiting_reply_since: Mapped[datetime | None]
    waiting_since: Mapped[datetime | None]  # in "waiting for customer" since
    l3_since: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    first_response_due: Mapped[datetime | None]
    next_response_due: Mapped[datetime | None]
    resolution_due: Mapped[datetime | None]
    l3_due: Mapped[datetime | None]
    csat: Mapped[int | None] = mapped_column(Integer)
    csat_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=0)


class TicketPause(Base):
    """An interval in which SLA time does not run (waiting for the customer)."""

    __tablename__ = "ticket_pauses"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class TicketMessage(Base):
    """A message in a ticket's thread: from the user, from a consultant, or an internal note."""

    __tablename__ = "ticket_messages"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    direction: Mapped[str] = mapped_column(String(8))  # in (user), out (agent), note, system
    author_key: Mapped[str] = mapped_column(String(96))
    author_name: Mapped[str] = mapped_column(String(200), default="")
    text: Mapped[str] = mapped_column(Text, default="")
    attachments: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source_channel: Mapped[str | None] = mapped_column(String(16))
    source_message_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    edited_at: Mapped[datetime | None]
    # A user message kept during a flood but not yet relayed; one coalesced post sends it.
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class MessageLink(Base):
    """Where a ticket or one of its messages was posted on a platform.

    Lets a reply in a thread, a topic, or an edit of a relayed message find its ticket.
    """

    __tablename__ = "message_links"
    __table_args__ = (Index(None, "channel", "chat_key", "message_key"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    ticket_message_id: Mapped[int | None] = mapped_column(Id)
    role: Mapped[str] = mapped_column(String(16))  # card, topic, relay, source
    channel: Mapped[str] = mapped_column(String(16))
    chat_key: Mapped[str] = mapped_column(String(128))
    message_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class Event(Base):
    """The append-only log: every change (who, when, what). Reports read only this."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "kind", "at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    kind: Mapped[str] = mapped_column(String(48))
    actor: Mapped[str] = mapped_column(String(96))
    ticket_id: Mapped[int | None] = mapped_column(Id, index=True)
    conversation_id: Mapped[int | None] = mapped_column(Id, index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ProcessedEvent(Base):
    """Platform event ids already handled: intake is idempotent."""

    __tablename__ = "processed_events"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(index=True)


class Inbox(Base):
    """A platform request acknowledged before its unit of work committed (the work ran past
    the adapter's ack budget). Kept until that work is done; replayed after a crash, where
    ``processed_events`` makes a replay of finished work a no-op."""

    __tablename__ = "inbox"
    __table_args__ = (UniqueConstraint("channel", "event_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))  # the adapter's: which handler replays it
    body: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class Outbox(Base):
    """A platform call to make. Written in the same transaction as the change that needs it."""

    __tablename__ = "outbox"
    __table_args__ = (Index(None, "status", "channel", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(128))  # chat / destination on that channel
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ticket_id: Mapped[int | None] = mapped_column(Id, index=True)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Delivery state (bot/outbox.py): {"done": {step: what the call returned}, "inflight":
    # claimed and not yet recorded, "doubt": the next call may already have landed}.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class SlaNotification(Base):
    """A scheduled SLA warning, breach or manager escalation; fired once (conditional UPDATE)."""

    __tablename__ = "sla_notifications"
    __table_args__ = (UniqueConstraint("ticket_id", "kind", "due_at"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    kind: Mapped[str] = mapped_column(String(64))  # e.g. first_response:warn:75
    target: Mapped[str] = mapped_column(String(32))  # first_response / next_response / ...
    due_at: Mapped[datetime] = mapped_column(index=True)
    deadline: Mapped[datetime]
    fired_at: Mapped[datetime | None]
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)


class Customer(Base):
    """The customer directory: platform user -> organisation -> license tier."""

    __tablename__ = "customers"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(64))
    organisation: Mapped[str] = mapped_column(String(200))
    tier: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime]


class KbDraft(Base):
    """An answer L2 saved for the KB; becomes an article when an admin approves it."""

    __tablename__ = "kb_drafts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(Id)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(64))
    lang: Mapped[str] = mapped_column(String(8))
    author_key: Mapped[str] = mapped_column(String(96))
    status: Mapped[str] = mapped_column(String(12), default="draft")
    article_path: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]


class DigestRun(Base):
    """A digest sent for a day to a chat: the unique key makes it exactly once."""

    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("day", "target"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    day: Mapped[str] = mapped_column(String(10))
    target: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class Counter(Base):
    """Named sequences (ticket numbers) that work the same on SQLite and PostgreSQL."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
