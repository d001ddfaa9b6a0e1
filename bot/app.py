"""Assembly: settings -> content -> database -> KB -> desk -> engine -> timers -> outbox.

Both the CLI and the tests build the application here, so what runs is what is tested.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.clock import Clock, SystemClock
from bot.content import Content, load_content
from bot.domain import AgentEvent, HandleResult, OutMessage, UserEvent, pick_lang
from bot.engine import DialogEngine
from bot.i18n import t
from bot.logs import log_context
from bot.metrics import Metrics
from bot.outbox import Dispatcher, Sender
from bot.privacy import ERASED
from bot.storage.db import Database
from bot.storage.errors import DatabaseUnavailable, database_unavailable
from bot.storage.models import KbImpression
from bot.storage.repo import claim_event, enqueue, log_event
from config.problems import ContentError
from config.settings import Settings
from escalation.desk import Desk
from escalation.timers import SlaTimers
from kb.matcher import MatchSettings
from kb.service import KnowledgeBase

log = logging.getLogger(__name__)


def freeze_startup_heap() -> None:
    """Move everything allocated so far out of the garbage collector's view.

    Call once the process has started (settings, KB, SQLAlchemy's mappers, the platform
    SDKs): those objects live as long as the process, yet every full collection walked
    them all, ~100 ms under load at a time, every request stalled meanwhile. Objects made
    later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def match_settings(settings: Settings) -> MatchSettings:
    """The matcher's settings with the admin's choices applied: ``kb.vectors``, and
    threshold overrides, which hold for every query (with or without the word vectors;
    unset, each mode keeps its own calibrated default)."""
    from dataclasses import replace

    kb = settings.kb
    overrides: dict[str, Any] = {"vectors": kb.vectors}
    for name, value in (
        ("answer_threshold", kb.answer_threshold),
        ("suggest_threshold", kb.suggest_threshold),
        ("answer_margin", kb.answer_margin),
    ):
        if value is not None:
            overrides[name] = overrides["vector_" + name] = value
    return replace(MatchSettings(), **overrides)


def build_kb(settings: Settings, content: Content) -> KnowledgeBase:
    """Load the KB folder with the categories it may use."""
    return KnowledgeBase(
        content.kb_dir,
        categories=set(content.categories),
        category_keywords=content.category_keywords(),
        settings=match_settings(settings),
    )


@dataclass
class App:
    """The running application's parts."""

    settings: Settings
    clock: Clock
    db: Database
    content: Content
    kb: KnowledgeBase
    desk: Desk
    engine: DialogEngine
    timers: SlaTimers
    dispatchers: list[Dispatcher] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    async def create(
        cls, settings: Settings, clock: Clock | None = None, *, migrate: bool = True
    ) -> App:
        """Validate content, open the database (migrating it), load the KB and feedback."""
        content, problems = load_content(settings)
        if content is None:
            raise ContentError(problems)
        kb = build_kb(settings, content)
        if kb.problems:
            raise ContentError(list(kb.problems))
        clock = clock or SystemClock()
        db = Database(settings.database.url, echo=settings.database.echo)
        if migrate:
            await db.upgrade()
        desk = Desk(db, content, clock, settings)
        desk.kb = kb
        engine = DialogEngine(db, content, kb, clock, settings, desk)
        app = cls(settings, clock, db, content, kb, desk, engine, SlaTimers(db, desk, clock))
        await app.load_feedback()
        return app

    async def load_feedback(self) -> None:
        """Replay stored verdicts into the matcher's ranking."""
        async with self.db.transaction() as s:
            rows = await s.execute(
                select(KbImpression.article_id, KbImpression.query, KbImpression.verdict).where(
                    KbImpression.verdict.is_not(None)
                )
            )
            self.kb.load_feedback(
                (a, q, v == "helped") for a, q, v in rows.all() if q != ERASED
            )

    def dispatcher(self, senders: dict[str, Sender], **kwargs: Any) -> Dispatcher:
        """A dispatcher for ``senders``, woken whenever the app queues something."""
        d = Dispatcher(self.db, self.clock, self.desk, senders, **kwargs)
        d.metrics = self.metrics
        self.dispatchers.append(d)
        return d

    def _wake(self) -> None:
        for d in self.dispatchers:
            d.wake()

    async def handle_user(self, ev: UserEvent) -> HandleResult:
        """Process an end-user event and wake the outbox.

        A bug while handling never reaches the chat as a traceback: the event is kept in the
        event log, the user gets an apology in their language, and the error is logged. When
        the database itself is unavailable, :class:`DatabaseUnavailable` propagates instead
        (nothing was committed), so the adapter does not acknowledge the update and the
        platform delivers it again.
        """
        self.kb.reload_if_changed()
        if ev.kind == "command" and ev.command == "digest" and self.is_manager(ev.user.key):
            return await self._digest_command(ev)
        token = log_context.set({"channel": ev.channel, "event_id": ev.event_id})
        try:
            result = await _retrying(lambda: self.engine.handle(ev))
        except Exception as exc:
            _raise_if_unavailable(exc, ev.channel, ev.event_id)
            log.exception("failed to handle %s event %s", ev.channel, ev.event_id)
            await self._keep_failed(ev, ev.chat_id, ev.user.language_code, ev.text or ev.data)
            result = HandleResult(refused=True, ack=t("internal_error", self._lang(ev)))
            self.metrics.inbound.labels(ev.channel, ev.kind, "failed").inc()
        else:
            outcome = "duplicate" if result.duplicate else "handled"
            self.metrics.inbound.labels(ev.channel, ev.kind, outcome).inc()
            if not result.duplicate:
                self.metrics.turns.labels(ev.channel).inc()
        finally:
            log_context.reset(token)
        await self._after()
        return result

    async def handle_agent(self, ev: AgentEvent) -> HandleResult:
        """Process a consultant event and wake the outbox (errors as for users)."""
        token = log_context.set({"channel": ev.channel, "event_id": ev.event_id})
        try:
            result = await _retrying(lambda: self.desk.handle_agent(ev))
        except Exception as exc:
            _raise_if_unavailable(exc, ev.channel, ev.event_id)
            log.exception("failed to handle %s agent event %s", ev.channel, ev.event_id)
            await self._keep_failed(ev, None, None, ev.text)
            result = HandleResult(refused=True, ack=t("internal_error", self.desk.l2_lang))
            self.metrics.inbound.labels(ev.channel, "agent", "failed").inc()
        else:
            outcome = "duplicate" if result.duplicate else "handled"
            self.metrics.inbound.labels(ev.channel, "agent", outcome).inc()
        finally:
            log_context.reset(token)
        await self._after()
        return result

    def is_manager(self, user_key: str) -> bool:
        """Managers: named in escalation.managers or digest.recipients, or in the platform
        manager lists (``telegram.managers``, ``slack.managers``)."""
        s = self.settings
        if user_key in s.escalation.managers or user_key in s.digest.recipients:
            return True
        channel, _, uid = user_key.partition(":")
        if channel == "telegram":
            return uid in {str(m) for m in s.telegram.managers}
        if channel == "slack":
            return uid in set(s.slack.managers)
        return False

    async def _digest_command(self, ev: UserEvent) -> HandleResult:
        """``/digest``: yesterday's digest (managers' time zone) for a manager, on demand.

        Built outside the event's transaction (the report reads the database itself), then
        the event is claimed and the reply queued in one unit of work.
        """
        from datetime import timedelta
        from zoneinfo import ZoneInfo

        from escalation.digest import build_digest

        now = self.clock.now()
        day = (now.astimezone(ZoneInfo(self.settings.digest.timezone)) - timedelta(days=1)).date()
        lang = pick_lang(ev.user.language_code, self.settings.digest.language)
        digest = await build_digest(self, day, now, lang=lang)
        async with self.db.transaction() as s:
            if not await claim_event(s, ev.channel, ev.event_id, now):
                return HandleResult(duplicate=True)
            await log_event(s, "digest_requested", actor=ev.user.key, at=now, day=day.isoformat())
            payload = OutMessage(digest.text).to_payload()
            if digest.image_png is not None:
                payload["image_png_b64"] = base64.b64encode(digest.image_png).decode("ascii")
                payload["image_name"] = digest.image_name
            await enqueue(
                s, channel=ev.channel, target=ev.chat_id, kind="message", payload=payload, now=now
            )
        await self._after()
        return HandleResult()

    def _lang(self, ev: UserEvent) -> str:
        return pick_lang(ev.user.language_code, self.settings.dialog.default_language)

    async def _keep_failed(
        self, ev: UserEvent | AgentEvent, chat_id: str | None, lang_code: str | None, text: str
    ) -> None:
        now = self.clock.now()
        actor = ev.user.key if isinstance(ev, UserEvent) else ev.agent.key
        async with self.db.transaction() as s:
            await log_event(
                s,
                "intake_failed",
                actor=actor,
                at=now,
                channel=ev.channel,
                event_id=ev.event_id,
                text=text[:4000],
            )
            if chat_id is not None:
                lang = pick_lang(lang_code, self.settings.dialog.default_language)
                await enqueue(
                    s,
                    channel=ev.channel,
                    target=chat_id,
                    kind="message",
                    payload=OutMessage(t("internal_error", lang)).to_payload(),
                    now=now,
                )

    async def _after(self) -> None:
        self._wake()
        if self.desk.sla.changed:
            self.desk.sla.changed = False
            if self.timers.scheduler is not None:
                await self.timers.reschedule()

    async def close(self) -> None:
        """Release the database."""
        await self.db.dispose()


def _raise_if_unavailable(exc: Exception, channel: str, event_id: str) -> None:
    """A database outage is not a bug of this event: no apology, no ``intake_failed``; the
    adapter leaves the event unacknowledged (or retries it) so it is handled once the
    database is back."""
    if database_unavailable(exc):
        log.warning("database unavailable; %s event %s left for redelivery", channel, event_id)
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}"[:500]) from exc


async def _retrying(work: Callable[[], Awaitable[HandleResult]], attempts: int = 3) -> HandleResult:
    """Run a unit of work again when it lost a race to another process.

    Two instances creating the same user's first rows, a deadlock, or a serialization
    failure roll the whole unit back (nothing half-done); the next attempt sees the
    winner's rows. Other errors propagate at once.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await work()
        except (IntegrityError, OperationalError) as exc:
            if attempt == attempts:
                raise
            log.warning("unit of work lost a race (%s); retrying", type(exc.orig).__name__)
            await asyncio.sleep(0.01 * attempt)
    raise AssertionError("unreachable")
