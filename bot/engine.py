"""The L1 dialog engine: from the first message to "solved" or a ticket.

One call of :meth:`DialogEngine.handle` is one unit of work: the event id is claimed, the
conversation advances, replies are written to the outbox, and all of it commits together.
Anything that fails rolls back whole, so a re-delivered event is processed as if new.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot import flood, privacy
from bot.clock import Clock
from bot.content import Content
from bot.domain import (
    Attachment,
    Button,
    HandleResult,
    OutMessage,
    UserEvent,
    csat_rows,
    pick_lang,
)
from bot.i18n import t
from bot.logs import log_context
from bot.storage.db import Database
from bot.storage.models import (
    Chat,
    ChecklistAnswer,
    Conversation,
    KbImpression,
    KbQuery,
    Ticket,
    User,
)
from bot.storage.prepared import add_now, save_changes
from bot.storage.repo import (
    claim_event,
    create_user,
    enqueue,
    get_or_create_user,
    log_event,
    refresh_user,
    turn_rows,
)
from config.categories import (
    DEFAULT_OPTION_IDS,
    GOTO_ESCALATE,
    GOTO_NEXT,
    GOTO_SOLVED,
    PRIORITIES,
    Category,
    ChecklistOption,
    ChecklistStep,
    Text,
)
from config.settings import Settings
from escalation.desk import OPEN_STATUSES, Desk

log = logging.getLogger(__name__)

# Conversation states.
IDLE = "idle"
CHOOSE_CATEGORY = "choose_category"
KB_ANSWER = "kb_answer"
KB_SUGGEST = "kb_suggest"
CHECKLIST = "checklist"
DETAILS = "details"
URGENCY = "urgency"
TICKET = "ticket"
CSAT = "csat"
CONFIRM_CANCEL = "confirm_cancel"
DONE = "done"

MAX_PROBLEM_CHARS = 8000  # beyond this the text is kept in the details, not re-matched
MAX_STORED_CHARS = 32000


class ScoredLike(Protocol):
    """An article with its score (see :mod:`kb.matcher`)."""

    @property
    def score(self) -> float: ...

    @property
    def article(self) -> Any: ...


class MatchLike(Protocol):
    """The matcher's decision for one query."""

    @property
    def decision(self) -> str: ...

    @property
    def results(self) -> tuple[Any, ...]: ...

    @property
    def category(self) -> str | None: ...


class KnowledgeBaseLike(Protocol):
    """What the engine needs of :class:`kb.service.KnowledgeBase`."""

    def search(self, query: str, lang: str | None = None, *, exclude: Collection[str] = ()) -> Any:
        """Match a question."""
        ...

    def detect_category(self, query: str, lang: str | None = None) -> tuple[str | None, float]:
        """Guess a category for free text."""
        ...

    def get(self, article_id: str) -> Any:
        """An article by id."""
        ...

    def record_feedback(self, article_id: str, query: str, helped: bool) -> None:
        """Learn from a verdict."""
        ...


@dataclass
class Turn:
    """Everything one handled event works with."""

    s: AsyncSession
    now: datetime
    user: User
    chat: Chat
    conv: Conversation
    lang: str
    feedback: list[tuple[str, str, bool]] = field(default_factory=list)

    def actor(self) -> str:
        """The user as an event-log actor."""
        return f"{self.user.channel}:{self.user.external_id}"


class DialogEngine:
    """Handles end-user events; hands tickets to :class:`escalation.desk.Desk`."""

    def __init__(
        self,
        db: Database,
        content: Content,
        kb: KnowledgeBaseLike,
        clock: Clock,
        settings: Settings,
        desk: Desk,
    ) -> None:
        self.db = db
        self.content = content
        self.kb = kb
        self.clock = clock
        self.settings = settings
        self.desk = desk
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    # ------------------------------------------------------------------ entry point

    async def handle(self, ev: UserEvent) -> HandleResult:
        """Process one user event exactly once, in order with the chat's other events."""
        async with self._lock(f"{ev.channel}:{ev.chat_id}"):
            feedback: list[tuple[str, str, bool]] = []
            async with self.db.transaction() as s:
                now = self.clock.now()
                if not await claim_event(s, ev.channel, ev.event_id, now):
                    return HandleResult(duplicate=True)
                turn = await self._begin(s, ev, now)
                result = await self._dispatch(turn, ev)
                # Touched last, so the row's other changes go out in the same UPDATE (a
                # query in the middle of the turn flushes what is dirty by then).
                turn.chat.updated_at = now
                # The turn's own rows are written as prepared UPDATEs rather than by the
                # ORM's flush at commit (SQLite; the same columns, in the same transaction).
                await save_changes(s, turn.user, turn.chat, turn.conv)
                feedback = turn.feedback
            # Only after the commit: the in-memory ranking follows the database.
            for article_id, query, helped in feedback:
                self.kb.record_feedback(article_id, query, helped)
            return result

    async def _begin(self, s: AsyncSession, ev: UserEvent, now: datetime) -> Turn:
        known = await turn_rows(s, ev.user, ev.chat_id) if self.db.sqlite else None
        conv: Conversation | None = None
        if known is not None:
            # SQLite: user, chat and conversation in one query (the transaction already
            # holds the database's write lock, so no row lock is needed).
            user, chat, conv = known
            refresh_user(user, ev.user, now)
        else:
            if self.db.sqlite:
                # No row came back: the user is new (the write lock is held since BEGIN).
                user = await create_user(s, ev.user, now)
            else:
                user = await get_or_create_user(s, ev.user, now)
            stmt = select(Chat).where(Chat.channel == ev.channel, Chat.chat_key == ev.chat_id)
            if not self.db.sqlite:
                stmt = stmt.with_for_update()  # one event per chat at a time across processes
            chat = (await s.execute(stmt)).scalar_one_or_none()
            if chat is not None and chat.conversation_id:
                conv = await s.get(Conversation, chat.conversation_id)
        await self.desk.mark_reachable(s, user)  # they wrote: they have unblocked the bot
        if chat is None:
            chat = Chat(
                channel=ev.channel,
                chat_key=ev.chat_id,
                user_id=user.id,
                prompt_nonce=0,
                created_at=now,
                updated_at=now,
            )
            await add_now(s, chat)
        lang = user.language or pick_lang(
            user.platform_language, self.settings.dialog.default_language
        )
        if conv is None:
            conv = await self._new_conversation(s, user, chat, lang, now)
        log_context.set({**(log_context.get() or {}), "conversation": conv.id})
        return Turn(s=s, now=now, user=user, chat=chat, conv=conv, lang=lang)

    async def _new_conversation(
        self, s: AsyncSession, user: User, chat: Chat, lang: str, now: datetime
    ) -> Conversation:
        conv = Conversation(
            chat_id=chat.id,
            user_id=user.id,
            state=IDLE,
            data={},
            lang=lang,
            problem="",
            details="",
            started_at=now,
            updated_at=now,
        )
        await add_now(s, conv)
        chat.conversation_id = conv.id
        await log_event(
            s,
            "conversation_started",
            actor=f"{user.channel}:{user.external_id}",
            at=now,
            conversation_id=conv.id,
        )
        return conv

    async def _dispatch(self, turn: Turn, ev: UserEvent) -> HandleResult:
        if ev.kind in flood.COUNTED_KINDS:
            state = flood.count_event(turn.user, turn.now)
        else:
            state = flood.FloodState(over=False, warn=False, new_window=False)
        if state.new_window and state.held_before:
            # Messages held in the user's previous window go to L2 before this one.
            await flood.flush_user(turn.s, self.desk, turn.user, turn.now)
        if _is_forget(ev):
            # Erasing one's data is a right even for banned or flooding users.
            return await self._dispatch_allowed(turn, ev)
        if turn.user.banned:
            return await self._banned(turn, ev, answer=not state.over)
        if state.over:
            return await self._flooded(turn, ev, warn=state.warn)
        return await self._dispatch_allowed(turn, ev)

    async def _dispatch_allowed(self, turn: Turn, ev: UserEvent) -> HandleResult:
        conv = turn.conv
        result = await self._dispatch_kind(turn, ev)
        conv.updated_at = turn.now  # last: see handle()
        return result

    async def _dispatch_kind(self, turn: Turn, ev: UserEvent) -> HandleResult:
        if ev.kind == "command":
            await self._command(turn, ev.command.lower(), ev.args)
            return HandleResult()
        if ev.kind == "button":
            return await self._button(turn, ev.data)
        if ev.kind == "edit":
            await self._edit(turn, ev)
            return HandleResult()
        if ev.kind == "unsupported":
            what_key = f"what_{ev.unsupported}" if ev.unsupported else "what_other"
            what = t(what_key if what_key in _WHAT_KEYS else "what_other", turn.lang)
            await self.say(turn, t("unsupported", turn.lang, what=what))
            return HandleResult()
        await self._message(turn, ev)
        return HandleResult()

    def _clean_text(self, text: str) -> str:
        """User text as stored: no NUL (PostgreSQL refuses it), no surrounding blanks."""
        return text.replace("\x00", "").strip()

    async def _banned(self, turn: Turn, ev: UserEvent, *, answer: bool) -> HandleResult:
        """A banned user: keep what they wrote with the conversation, never relay it."""
        text = self._clean_text(ev.text)[:MAX_STORED_CHARS]
        if ev.kind in ("message", "edit") and (text or ev.attachments):
            if text:
                self._append_details(turn, text)
            if ev.attachments:
                self._keep_attachments(turn, list(ev.attachments))
            turn.conv.updated_at = turn.now
        await log_event(
            turn.s,
            "banned_refused",
            actor=turn.actor(),
            at=turn.now,
            conversation_id=turn.conv.id,
            event_kind=ev.kind,
            chars=len(text),
        )
        if answer:
            await self.say(turn, t("banned", turn.lang))
        return HandleResult(refused=True, ack=t("banned", turn.lang))

    async def _flooded(self, turn: Turn, ev: UserEvent, *, warn: bool) -> HandleResult:
        """Beyond the flood limit: keep every message, answer once per window, relay later."""
        text = self._clean_text(ev.text)[:MAX_STORED_CHARS]
        attachments = list(ev.attachments)
        conv = turn.conv
        in_ticket = conv.state in (TICKET, CONFIRM_CANCEL, CSAT)
        if ev.kind == "message" and (text or attachments):
            kept = None
            if in_ticket:
                kept = await self.desk.user_message(
                    turn.s, conv, turn.user, text, attachments, ev.message_id, turn.now, hold=True
                )
            if kept is None:
                if text:
                    self._append_details(turn, text)
                if attachments:
                    self._keep_attachments(turn, attachments)
            conv.updated_at = turn.now
        elif ev.kind == "edit" and text:
            relayed = in_ticket and bool(ev.message_id)
            if relayed and ev.message_id:
                relayed = await self.desk.user_edit(
                    turn.s, conv, turn.user, ev.message_id, text, turn.now, relay=False
                )
            if not relayed:
                self._append_details(turn, f"(edited) {text}")
        # Buttons and commands beyond the limit are refused: the user can press again.
        if warn:
            await log_event(
                turn.s,
                "flood_limited",
                actor=turn.actor(),
                at=turn.now,
                conversation_id=conv.id,
                limit=flood.LIMIT,
            )
            await self.say(turn, t("too_fast", turn.lang))
        return HandleResult(refused=True, ack=t("too_fast", turn.lang))

    # ------------------------------------------------------------------ output

    async def say(
        self,
        turn: Turn,
        text: str,
        buttons: list[list[Button]] | None = None,
        *,
        markdown: bool = False,
    ) -> None:
        """Queue a message to the user's chat (buttons carry the chat's current nonce)."""
        msg = OutMessage(text=text, buttons=buttons or [], markdown=markdown)
        await enqueue(
            turn.s,
            channel=turn.chat.channel,
            target=turn.chat.chat_key,
            kind="message",
            payload=msg.to_payload(),
            now=turn.now,
        )

    def new_prompt(self, turn: Turn) -> int:
        """Start a new set of buttons: every older button becomes stale."""
        turn.chat.prompt_nonce = (turn.chat.prompt_nonce or 0) + 1
        return turn.chat.prompt_nonce

    def button(self, nonce: int, label: str, action: str) -> Button:
        """A button whose data binds it to this prompt."""
        return Button.bound(nonce, label, action)

    # ------------------------------------------------------------------ commands

    async def _command(self, turn: Turn, command: str, args: str) -> None:
        lang = turn.lang
        if command == "start":
            conv = turn.conv
            if conv.state in (TICKET, CSAT):
                await self.say(turn, t("help", lang))
                return
            if conv.state not in (IDLE, DONE):
                await self._end_conversation(turn, "abandoned")
            await self._greet(turn)
            if args.strip():  # deep link payload or "/start my problem"
                await self._problem_text(turn, args.strip())
        elif command == "help":
            await self.say(turn, t("help", lang))
        elif command == "resume":
            await self._resume(turn, greet=args.strip() == "greet")
        elif command == "new":
            await self._new_request(turn)
        elif command == "status":
            await self._status(turn)
        elif command == "cancel":
            await self._cancel(turn)
        elif command == "forget":
            nonce = self.new_prompt(turn)
            await self.say(
                turn,
                t("forget_q", lang),
                [
                    [
                        self.button(nonce, t("btn_forget_yes", lang), "forget:yes"),
                        self.button(nonce, t("btn_forget_no", lang), "forget:no"),
                    ]
                ],
            )
        elif command == "digest":
            # Managers are served by the app before the engine; anyone else lands here and
            # gets the help, which does not even reveal that the command exists.
            await log_event(
                turn.s, "command_refused", actor=turn.actor(), at=turn.now, command=command
            )
            await self.say(turn, t("help", lang))
        elif command == "lang":
            choice = args.strip().lower()[:2]
            if choice in ("en", "ru"):
                await self._set_lang(turn, choice)
            else:
                nonce = self.new_prompt(turn)
                await self.say(
                    turn,
                    t("lang_choose", lang),
                    [
                        [
                            self.button(nonce, "English", "lang:en"),
                            self.button(nonce, "Русский", "lang:ru"),
                        ]
                    ],
                )
        else:
            await self.say(turn, t("help", lang))

    async def _resume(self, turn: Turn, *, greet: bool) -> None:
        """Show the current question again (a client that restarted lost its buttons);
        with nothing pending, greet if asked to."""
        conv = turn.conv
        state = conv.state
        if state in (IDLE, DONE):
            if greet:
                await self._greet(turn)
            return
        cat = self.content.categories.get(conv.category or "")
        if state == CHECKLIST and cat is not None and (step := cat.step(conv.step or "")):
            await self._show_step(turn, cat, step)
        elif state == KB_ANSWER:
            await self._ask_helped(turn)
        elif state == KB_SUGGEST:
            nonce = self.new_prompt(turn)
            rows = []
            for i, article_id in enumerate(conv.data.get("suggested", [])):
                article = self.kb.get(article_id)
                if article is not None:
                    rows.append([self.button(nonce, article.title[:60], f"kbp:{i}")])
            rows.append([self.button(nonce, t("btn_none_of_these", turn.lang), "kbn:")])
            await self.say(turn, t("kb_suggest", turn.lang), rows)
        elif state == CHOOSE_CATEGORY:
            nonce = self.new_prompt(turn)
            await self.say(
                turn, t("choose_category", turn.lang), self._category_buttons(turn, nonce)
            )
        elif state == DETAILS:
            await self._details_ack(turn)
        elif state == URGENCY:
            await self._ask_urgency(turn)
        elif state == CSAT:
            nonce = self.new_prompt(turn)
            await self.say(turn, t("csat_ask", turn.lang), csat_rows(nonce))
        elif state == CONFIRM_CANCEL:
            conv.state = TICKET
            await self._cancel(turn)

    async def _greet(self, turn: Turn) -> None:
        name = turn.user.display_name.split(" ")[0] if turn.user.display_name else ""
        nonce = self.new_prompt(turn)
        await self.say(
            turn,
            t("greeting", turn.lang, name=f", {name}" if name else ""),
            self._category_buttons(turn, nonce),
        )

    def _category_buttons(self, turn: Turn, nonce: int) -> list[list[Button]]:
        cats = list(self.content.categories.values())
        rows: list[list[Button]] = []
        for i in range(0, len(cats), 2):
            rows.append(
                [self.button(nonce, c.title.get(turn.lang), f"cat:{c.id}") for c in cats[i : i + 2]]
            )
        return rows

    async def _new_request(self, turn: Turn) -> None:
        open_ticket = await self._conversation_ticket(turn)
        if turn.conv.state == CONFIRM_CANCEL:
            turn.conv.state = TICKET
        if turn.conv.state not in (IDLE, DONE, TICKET, CSAT):
            await self._end_conversation(turn, "abandoned")
        # A conversation with a live ticket stays as it is: replies still reach this chat.
        turn.conv = await self._new_conversation(turn.s, turn.user, turn.chat, turn.lang, turn.now)
        nonce = self.new_prompt(turn)
        if open_ticket is not None and open_ticket.status in OPEN_STATUSES:
            text = t("new_request_ticket_open", turn.lang, number=self.desk.number(open_ticket))
        else:
            text = t("new_request", turn.lang)
        await self.say(turn, text, self._category_buttons(turn, nonce))

    async def _status(self, turn: Turn) -> None:
        tickets = await self.desk.user_tickets(turn.s, turn.user.id)
        if not tickets:
            await self.say(turn, t("status_none", turn.lang))
            return
        lines = [t("status_head", turn.lang)]
        buttons: list[list[Button]] = []
        nonce = self.new_prompt(turn)
        current = turn.conv.ticket_id
        for tk in tickets:
            number = self.desk.number(tk)
            lines.append(
                t(
                    "status_line",
                    turn.lang,
                    number=number,
                    status=t(f"status_{tk.status}", turn.lang),
                    subject=tk.subject[:80],
                )
            )
            eta = self.desk.eta_text(tk, turn.lang)
            if eta:
                lines.append(f"   {eta}")
            if tk.id != current and tk.status in OPEN_STATUSES:
                buttons.append(
                    [self.button(nonce, t("btn_write_to", turn.lang, number=number), f"tk:{tk.id}")]
                )
        await self.say(turn, "\n".join(lines), buttons)

    async def _cancel(self, turn: Turn) -> None:
        conv = turn.conv
        ticket = await self._conversation_ticket(turn)
        if conv.state == TICKET and ticket is not None and ticket.status in OPEN_STATUSES:
            conv.data = {**conv.data, "cancel_return": conv.state}
            conv.state = CONFIRM_CANCEL
            nonce = self.new_prompt(turn)
            await self.say(
                turn,
                t("cancel_ticket_q", turn.lang, number=self.desk.number(ticket)),
                [
                    [
                        self.button(nonce, t("btn_cancel_ticket", turn.lang), "cancel:yes"),
                        self.button(nonce, t("btn_keep_ticket", turn.lang), "cancel:no"),
                    ]
                ],
            )
            return
        if conv.state in (IDLE, DONE, CSAT):
            self.new_prompt(turn)
            await self.say(turn, t("nothing_to_cancel", turn.lang))
            return
        await self._end_conversation(turn, "cancelled")
        self.new_prompt(turn)
        await self.say(turn, t("cancelled", turn.lang))

    async def _set_lang(self, turn: Turn, lang: str) -> None:
        turn.user.language = lang
        turn.lang = lang
        turn.conv.lang = lang
        await log_event(
            turn.s,
            "language_set",
            actor=turn.actor(),
            at=turn.now,
            lang=lang,
            conversation_id=turn.conv.id,
        )
        await self.say(turn, t("lang_set", lang))

    # ------------------------------------------------------------------ buttons

    async def _button(self, turn: Turn, data: str) -> HandleResult:
        nonce_s, _, action = data.partition("|")
        if not nonce_s.isdecimal() or int(nonce_s) != turn.chat.prompt_nonce or not action:
            return HandleResult(ack=t("stale_button", turn.lang), refused=True)
        kind, _, value = action.partition(":")
        conv = turn.conv
        state = conv.state
        if kind == "lang" and value in ("en", "ru"):
            self.new_prompt(turn)
            await self._set_lang(turn, value)
        elif (
            kind == "cat"
            and value in self.content.categories
            and state
            in (
                IDLE,
                CHOOSE_CATEGORY,
                DONE,
            )
        ):
            if state == DONE:
                turn.conv = await self._new_conversation(
                    turn.s, turn.user, turn.chat, turn.lang, turn.now
                )
            await self._start_checklist(turn, self.content.categories[value], intro=True)
        elif kind == "kb" and state == KB_ANSWER:
            await self._kb_verdict(turn, helped=value == "yes")
        elif kind == "kbp" and state == KB_SUGGEST:
            await self._kb_pick(turn, value)
        elif kind == "kbn" and state == KB_SUGGEST:
            await self._kb_none(turn)
        elif kind == "cl" and state == CHECKLIST:
            await self._checklist_answer(turn, value)
        elif kind == "det" and state == DETAILS:
            await self._ask_urgency(turn)
        elif kind == "urg" and state == URGENCY and value in PRIORITIES:
            await self._escalate(turn, value)
        elif kind == "csat" and state == CSAT and value in ("1", "2", "3", "4", "5"):
            self.new_prompt(turn)
            await self.desk.record_csat(turn.s, conv, int(value), turn.now, actor=turn.actor())
            conv.state = DONE
            await self.say(turn, t("csat_thanks", turn.lang))
        elif kind == "cancel" and state == CONFIRM_CANCEL:
            await self._confirm_cancel(turn, value == "yes")
        elif kind == "tk" and value.isdecimal():
            await self._switch_to_ticket(turn, int(value))
        elif kind == "forget" and value in ("yes", "no"):
            self.new_prompt(turn)
            if value == "yes":
                await self._forget(turn)
            else:
                await self.say(turn, t("forget_kept", turn.lang))
        else:
            return HandleResult(ack=t("stale_button", turn.lang), refused=True)
        return HandleResult()

    async def _confirm_cancel(self, turn: Turn, yes: bool) -> None:
        self.new_prompt(turn)
        ticket = await self._conversation_ticket(turn)
        turn.conv.state = TICKET
        if ticket is None:
            return
        if yes:
            await self.desk.cancel_by_user(turn.s, ticket, turn.now, actor=turn.actor())
            await self._end_conversation(turn, "escalated")
            await self.say(turn, t("ticket_cancelled", turn.lang, number=self.desk.number(ticket)))
        else:
            await self.say(turn, t("ticket_kept", turn.lang, number=self.desk.number(ticket)))

    async def _forget(self, turn: Turn) -> None:
        """Erase the user's personal data; open tickets are cancelled with a notice to L2."""
        actor = turn.actor()
        if turn.conv.ended_at is None and turn.conv.ticket_id is None:
            await self._end_conversation(turn, "cancelled")
        counts = await privacy.erase_user(turn.s, turn.user, turn.now)
        # Cancelled after the erasure, so the notices to L2 are not erased themselves.
        tickets = (
            await turn.s.execute(
                select(Ticket).where(
                    Ticket.user_id == turn.user.id, Ticket.status.in_(OPEN_STATUSES)
                )
            )
        ).scalars()
        cancelled = 0
        for ticket in list(tickets):
            await self.desk.cancel_for_erasure(turn.s, ticket, turn.now, actor=actor)
            cancelled += 1
        turn.chat.conversation_id = None  # the next message starts afresh
        await log_event(
            turn.s, "user_erased", actor=actor, at=turn.now, cancelled=cancelled, **counts
        )
        await self.say(
            turn,
            t(
                "forget_done",
                turn.lang,
                conversations=counts["conversations"],
                tickets=counts["tickets"],
                messages=counts["messages"],
                queries=counts["kb_queries"],
                files=counts["attachments"],
                cancelled=cancelled,
            ),
        )

    async def _switch_to_ticket(self, turn: Turn, ticket_id: int) -> None:
        ticket = await turn.s.get(Ticket, ticket_id)
        # The ticket must be this user's: button data alone never grants access.
        if ticket is None or ticket.user_id != turn.user.id or ticket.status not in OPEN_STATUSES:
            await self.say(turn, t("stale_button", turn.lang))
            return
        self.new_prompt(turn)
        if turn.conv.state not in (IDLE, DONE, TICKET, CSAT):
            await self._end_conversation(turn, "abandoned")
        conv = await turn.s.get(Conversation, ticket.conversation_id)
        if conv is not None:
            turn.chat.conversation_id = conv.id
            turn.conv = conv
            conv.state = TICKET
        await self.say(turn, t("switched_to_ticket", turn.lang, number=self.desk.number(ticket)))

    # ------------------------------------------------------------------ free text

    async def _message(self, turn: Turn, ev: UserEvent) -> None:
        text = ev.text.replace("\x00", "").strip()
        if len(text) > MAX_STORED_CHARS:
            text = text[:MAX_STORED_CHARS]
            await self.say(turn, t("truncated", turn.lang, limit=MAX_STORED_CHARS))
        attachments = list(ev.attachments)
        conv = turn.conv
        state = conv.state

        if state in (TICKET, CONFIRM_CANCEL, CSAT):
            handled = await self.desk.user_message(
                turn.s,
                conv,
                turn.user,
                text,
                attachments,
                ev.message_id,
                turn.now,
                reopen_from_csat=state == CSAT,
            )
            if handled is not None:
                if state == CONFIRM_CANCEL:
                    conv.state = TICKET
                    self.new_prompt(turn)
                elif state == CSAT:
                    self.new_prompt(turn)
                    conv.state = TICKET
                    await self.say(turn, t("ticket_reopened", turn.lang, number=handled))
                return
            # The ticket is closed (or the reopen window passed): this is a new problem.
            await self._end_conversation(turn, conv.outcome or "escalated")
            turn.conv = await self._new_conversation(
                turn.s, turn.user, turn.chat, turn.lang, turn.now
            )
            state = IDLE
            conv = turn.conv

        if attachments:
            self._keep_attachments(turn, attachments)
        if not text:
            if attachments:
                if state == DETAILS:
                    await self._details_ack(turn)
                else:
                    await self.say(turn, t("attachment_saved", turn.lang))
            else:
                await self.say(turn, t("empty_message", turn.lang))
            return

        if state in (IDLE, DONE):
            if state == DONE:
                turn.conv = await self._new_conversation(
                    turn.s, turn.user, turn.chat, turn.lang, turn.now
                )
            await self._problem_text(turn, text)
        elif state in (CHOOSE_CATEGORY, KB_ANSWER, KB_SUGGEST):
            # More words about the problem: look again with everything the user said.
            if state == KB_ANSWER:
                await self._close_impressions(turn, verdict="not_helped")
            await self._problem_text(turn, text)
        elif state == CHECKLIST:
            self._append_details(turn, text)
            cat = self.content.categories.get(conv.category or "")
            step = cat.step(conv.step or "") if cat else None
            if cat is None or step is None:
                await self._to_details(turn)
                return
            await self.say(turn, t("use_buttons", turn.lang))
            await self._show_step(turn, cat, step)
        elif state == DETAILS:
            self._append_details(turn, text)
            await self._details_ack(turn)
        elif state == URGENCY:
            self._append_details(turn, text)
            await self._ask_urgency(turn)
        else:  # an unknown state from an older version: restart cleanly
            conv.state = IDLE
            await self._problem_text(turn, text)

    async def _edit(self, turn: Turn, ev: UserEvent) -> None:
        text = ev.text.replace("\x00", "").strip()[:MAX_STORED_CHARS]
        in_ticket = turn.conv.state in (TICKET, CONFIRM_CANCEL, CSAT)
        if (
            in_ticket
            and ev.message_id
            and await self.desk.user_edit(
                turn.s, turn.conv, turn.user, ev.message_id, text, turn.now
            )
        ):
            return
        if turn.conv.state in (DETAILS, CHECKLIST, URGENCY) and text:
            self._append_details(turn, f"(edited) {text}")
            await self.say(turn, t("edit_noted", turn.lang))
        # An edit of an old question in the L1 flow changes nothing the bot already did.

    def _keep_attachments(self, turn: Turn, attachments: list[Attachment]) -> None:
        data = dict(turn.conv.data)
        kept = list(data.get("attachments", []))
        kept.extend(a.to_json() for a in attachments)
        data["attachments"] = kept[-50:]  # a sane cap; L2 gets the newest
        turn.conv.data = data

    def _append_details(self, turn: Turn, text: str) -> None:
        conv = turn.conv
        joined = f"{conv.details}\n{text}" if conv.details else text
        conv.details = joined[:MAX_STORED_CHARS]

    # ------------------------------------------------------------------ KB

    async def _problem_text(self, turn: Turn, text: str) -> None:
        conv = turn.conv
        conv.problem = (f"{conv.problem}\n{text}" if conv.problem else text)[:MAX_STORED_CHARS]
        query = text[:MAX_PROBLEM_CHARS]
        shown = set(conv.data.get("shown", []))
        result = self.kb.search(query, turn.lang, exclude=shown)
        top = result.results[0] if result.results else None
        await add_now(
            turn.s,
            KbQuery(
                conversation_id=conv.id,
                query=query[:2000],
                lang=turn.lang,
                decision=result.decision,
                top_article=top.article.id if top else None,
                top_score=float(top.score) if top else None,
                at=turn.now,
            ),
        )
        await log_event(
            turn.s,
            "kb_query",
            actor=turn.actor(),
            at=turn.now,
            conversation_id=conv.id,
            query=query[:500],
            lang=turn.lang,
            decision=result.decision,
            top_article=top.article.id if top else None,
            top_score=round(float(top.score), 4) if top else None,
        )
        category = result.category or (top.article.category if top else None)
        if category is None:
            category, _ = self.kb.detect_category(query, turn.lang)
        if category in self.content.categories:
            conv.category = category
        if result.decision == "answer" and top is not None:
            await self._show_article(turn, top.article, query, float(top.score), "answer")
        elif result.decision == "suggest" and result.results:
            await self._suggest(turn, list(result.results), query)
        else:
            await self._no_answer(turn)

    async def _show_article(
        self, turn: Turn, article: Any, query: str, score: float, decision: str
    ) -> None:
        conv = turn.conv
        imp = KbImpression(
            conversation_id=conv.id,
            article_id=article.id,
            query=query[:2000],
            score=score,
            decision=decision,
            shown_at=turn.now,
        )
        await add_now(turn.s, imp)
        data = dict(conv.data)
        data["shown"] = [*data.get("shown", []), article.id]
        data["impression"] = imp.id
        data["query"] = query[:2000]
        conv.data = data
        if article.category in self.content.categories:
            conv.category = article.category
        conv.state = KB_ANSWER
        await log_event(
            turn.s,
            "kb_shown",
            actor="bot",
            at=turn.now,
            conversation_id=conv.id,
            article=article.id,
            score=round(score, 4),
            decision=decision,
        )
        await self.say(
            turn,
            f"{t('kb_found', turn.lang)}\n\n**{article.title}**\n\n{article.body}",
            markdown=True,
        )
        await self._ask_helped(turn)

    async def _ask_helped(self, turn: Turn) -> None:
        nonce = self.new_prompt(turn)
        yes = self.button(nonce, t("btn_yes_solved", turn.lang), "kb:yes")
        no = self.button(nonce, t("btn_no", turn.lang), "kb:no")
        await self.say(turn, t("kb_helped_q", turn.lang), [[yes, no]])

    async def _suggest(self, turn: Turn, results: list[Any], query: str) -> None:
        conv = turn.conv
        conv.state = KB_SUGGEST
        data = dict(conv.data)
        data["suggested"] = [r.article.id for r in results[:3]]
        data["suggested_scores"] = [round(float(r.score), 4) for r in results[:3]]
        data["query"] = query[:2000]
        conv.data = data
        nonce = self.new_prompt(turn)
        rows = [
            [self.button(nonce, r.article.title[:60], f"kbp:{i}")]
            for i, r in enumerate(results[:3])
        ]
        rows.append([self.button(nonce, t("btn_none_of_these", turn.lang), "kbn:")])
        await self.say(turn, t("kb_suggest", turn.lang), rows)

    async def _kb_pick(self, turn: Turn, value: str) -> None:
        data = turn.conv.data
        ids: list[str] = list(data.get("suggested", []))
        scores: list[float] = list(data.get("suggested_scores", []))
        if not value.isdecimal() or int(value) >= len(ids):
            await self.say(turn, t("stale_button", turn.lang))
            return
        i = int(value)
        article = self.kb.get(ids[i])
        if article is None:  # removed from the KB since it was offered
            await self._no_answer(turn)
            return
        score = scores[i] if i < len(scores) else 0.0
        await self._show_article(turn, article, str(data.get("query", "")), score, "suggest")

    async def _kb_none(self, turn: Turn) -> None:
        data = dict(turn.conv.data)
        data["shown"] = [*data.get("shown", []), *data.get("suggested", [])]
        turn.conv.data = data
        for article_id in data.get("suggested", []):
            turn.feedback.append((article_id, str(data.get("query", "")), False))
        await log_event(
            turn.s,
            "kb_rejected",
            actor=turn.actor(),
            at=turn.now,
            conversation_id=turn.conv.id,
            articles=data.get("suggested", []),
            query=str(data.get("query", ""))[:500],
        )
        await self._no_answer(turn)

    async def _close_impressions(self, turn: Turn, verdict: str) -> None:
        imp_id = turn.conv.data.get("impression")
        if not imp_id:
            return
        imp = await turn.s.get(KbImpression, imp_id)
        if imp is None or imp.verdict is not None:
            return
        imp.verdict = verdict
        imp.verdict_at = turn.now
        turn.feedback.append((imp.article_id, imp.query, verdict == "helped"))
        await log_event(
            turn.s,
            "kb_verdict",
            actor=turn.actor(),
            at=turn.now,
            conversation_id=turn.conv.id,
            article=imp.article_id,
            verdict=verdict,
            query=imp.query[:500],
        )

    async def _kb_verdict(self, turn: Turn, helped: bool) -> None:
        await self._close_impressions(turn, "helped" if helped else "not_helped")
        self.new_prompt(turn)
        if helped:
            await self._end_conversation(turn, "solved_kb")
            await self.say(turn, t("solved", turn.lang))
            return
        await self._no_answer(turn)

    async def _no_answer(self, turn: Turn) -> None:
        cat = self.content.categories.get(turn.conv.category or "")
        if cat is not None:
            await self._start_checklist(turn, cat, intro=True)
            return
        turn.conv.state = CHOOSE_CATEGORY
        nonce = self.new_prompt(turn)
        await self.say(turn, t("choose_category", turn.lang), self._category_buttons(turn, nonce))

    # ------------------------------------------------------------------ checklist

    async def _start_checklist(self, turn: Turn, cat: Category, *, intro: bool) -> None:
        conv = turn.conv
        conv.category = cat.id
        if not cat.checklist:
            await self._to_details(turn)
            return
        conv.state = CHECKLIST
        conv.step = cat.checklist[0].id
        conv.data = {**conv.data, "steps_done": []}
        await log_event(
            turn.s,
            "checklist_started",
            actor="bot",
            at=turn.now,
            conversation_id=conv.id,
            category=cat.id,
        )
        if intro:
            await self.say(turn, t("checklist_intro", turn.lang, category=cat.title.get(turn.lang)))
        await self._show_step(turn, cat, cat.checklist[0])

    def _options(self, step: ChecklistStep) -> tuple[ChecklistOption, ...]:
        if step.options:
            return step.options
        return tuple(
            ChecklistOption(
                id=o,
                label=Text(en=t(f"opt_{o}", "en"), ru=t(f"opt_{o}", "ru")),
                goto=GOTO_SOLVED if o == "fixed" else GOTO_NEXT,
            )
            for o in DEFAULT_OPTION_IDS
        )

    async def _show_step(self, turn: Turn, cat: Category, step: ChecklistStep) -> None:
        ids = [s.id for s in cat.checklist]
        n = ids.index(step.id) + 1 if step.id in ids else 1
        nonce = self.new_prompt(turn)
        rows = [
            [self.button(nonce, o.label.get(turn.lang), f"cl:{o.id}")] for o in self._options(step)
        ]
        header = t("checklist_step", turn.lang, n=n, total=len(ids))
        await self.say(turn, f"{header}\n\n{step.text.get(turn.lang)}", rows)

    async def _checklist_answer(self, turn: Turn, option_id: str) -> None:
        conv = turn.conv
        cat = self.content.categories.get(conv.category or "")
        step = cat.step(conv.step or "") if cat else None
        if cat is None or step is None:
            await self._to_details(turn)
            return
        option = next((o for o in self._options(step) if o.id == option_id), None)
        if option is None:
            await self.say(turn, t("stale_button", turn.lang))
            return
        await add_now(
            turn.s,
            ChecklistAnswer(
                conversation_id=conv.id,
                category=cat.id,
                step_id=step.id,
                option_id=option.id,
                answered_at=turn.now,
            ),
        )
        data = dict(conv.data)
        data["steps_done"] = [*data.get("steps_done", []), [step.id, option.id]]
        if option.priority:
            data["priority_floor"] = _max_priority(data.get("priority_floor"), option.priority)
        conv.data = data
        await log_event(
            turn.s,
            "checklist_answer",
            actor=turn.actor(),
            at=turn.now,
            conversation_id=conv.id,
            category=cat.id,
            step=step.id,
            option=option.id,
        )
        goto = option.goto
        if goto == GOTO_SOLVED:
            self.new_prompt(turn)
            await self._end_conversation(turn, "solved_checklist")
            await self.say(turn, t("solved", turn.lang))
            return
        if goto == GOTO_ESCALATE:
            await self._to_details(turn)
            return
        nxt = cat.next_step(step.id) if goto == GOTO_NEXT else cat.step(goto)
        if nxt is None:
            await self._to_details(turn)
            return
        conv.step = nxt.id
        await self._show_step(turn, cat, nxt)

    # ------------------------------------------------------------------ details and escalation

    async def _to_details(self, turn: Turn) -> None:
        turn.conv.state = DETAILS
        turn.conv.step = None
        nonce = self.new_prompt(turn)
        await self.say(
            turn,
            t("details_ask", turn.lang),
            [[self.button(nonce, t("btn_done", turn.lang), "det:done")]],
        )

    async def _details_ack(self, turn: Turn) -> None:
        nonce = self.new_prompt(turn)
        await self.say(
            turn,
            t("details_more", turn.lang),
            [[self.button(nonce, t("btn_done", turn.lang), "det:done")]],
        )

    async def _ask_urgency(self, turn: Turn) -> None:
        turn.conv.state = URGENCY
        nonce = self.new_prompt(turn)
        await self.say(
            turn,
            t("urgency_ask", turn.lang),
            [[self.button(nonce, t(f"urg_{p}", turn.lang), f"urg:{p}")] for p in PRIORITIES],
        )

    async def _escalate(self, turn: Turn, urgency: str) -> None:
        conv = turn.conv
        cat = self.content.categories.get(conv.category or "")
        priority = _max_priority(urgency, conv.data.get("priority_floor"))
        conv.priority = priority
        self.new_prompt(turn)
        ticket = await self.desk.open_ticket(
            turn.s, conv, turn.user, turn.chat, priority=priority, category=cat, now=turn.now
        )
        conv.state = TICKET
        conv.outcome = "escalated"
        conv.ticket_id = ticket.id
        await log_event(
            turn.s,
            "conversation_escalated",
            actor=turn.actor(),
            at=turn.now,
            conversation_id=conv.id,
            ticket_id=ticket.id,
        )
        number = self.desk.number(ticket)
        eta, closed_now = self.desk.first_response_eta(ticket, turn.lang, turn.user.timezone)
        key = "escalated_closed" if closed_now else "escalated"
        await self.say(
            turn, t(key, turn.lang, number=number, eta=eta or t("eta_unknown", turn.lang))
        )

    async def _end_conversation(self, turn: Turn, outcome: str) -> None:
        conv = turn.conv
        if conv.ended_at is None:
            conv.ended_at = turn.now
            if conv.outcome is None:
                conv.outcome = outcome
            await log_event(
                turn.s,
                "conversation_ended",
                actor=turn.actor(),
                at=turn.now,
                conversation_id=conv.id,
                outcome=conv.outcome,
                category=conv.category,
            )
        conv.state = DONE

    async def _conversation_ticket(self, turn: Turn) -> Ticket | None:
        if turn.conv.ticket_id is None:
            return None
        return await turn.s.get(Ticket, turn.conv.ticket_id)


def _is_forget(ev: UserEvent) -> bool:
    """``/forget`` or its confirmation button."""
    if ev.kind == "command":
        return ev.command.lower() == "forget"
    return ev.kind == "button" and "|forget:" in ev.data


_WHAT_KEYS = {"what_sticker", "what_location", "what_contact", "what_poll", "what_other"}


def _max_priority(a: str | None, b: str | None) -> str:
    """The more urgent of two priorities (``critical`` beats ``high``...)."""
    ranked = [p for p in (a, b) if p in PRIORITIES]
    if not ranked:
        return "normal"
    return min(ranked, key=PRIORITIES.index)
