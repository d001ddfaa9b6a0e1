"""Telegram delivery: one outbox row -> Bot API calls, within Telegram's rate limits.

The dispatcher (:mod:`bot.outbox`) keeps per-chat order, persistence and retries; this module
renders, paces the calls, and maps every Bot API outcome onto a :class:`SendResult`:
429 -> ``retry_after``; 5xx, timeouts and network errors -> retry with backoff; 403 from a user
-> permanent and unreachable; "message is not modified" -> success; a card or topic that was
deleted -> posted anew (``drop_roles``), so nothing is lost.

A row may take several calls (a long text in parts, a topic then its card, an album then a
caption). Each is an :meth:`~bot.outbox.OutboxItem.step`: what it returned is saved in the
database before the next call, so a retry or a restart goes on with the next call.

The call that was running when the process died (or that failed with a 5xx or a timeout) is
*in doubt*. The Bot API has no idempotency key and no way to read a chat back, but message
ids are sequential, and every bot message of a chat goes through this chat's outbox rows one
at a time: a bot message above the newest id the database recorded for the chat can only be
the in-doubt one. For a text message the sender *probes* the ids above that mark with
``editMessageText`` carrying exactly the text and buttons it meant to send: Telegram answers
"message is not modified" only for our own message with that content (found: its id is
recorded, nothing is sent), "message to edit not found" where there is nothing, and "message
can't be edited" for someone else's message. Supergroups number their messages per chat, so
a few "not found" in a row end the probe (nothing there: send). Private chats and basic
groups share one sequence of the bot's account (another chat's id answers "not found"), so
there the probe looks between two bounds: below, the highest shared-box id of any chat
recorded before the in-doubt row was created (:func:`outbox_high_water`); above, an id
allocated after the doubt arose — got by this process's own later call, or an incoming
message dated after it (:meth:`TelegramSender.observe_incoming`). Without an upper bound the
row is handed back for a short retry (``ProbeWait``) so that other traffic gives one; after
``PROBE_WAIT`` it is sent again, logged. A probe that cannot tell (no mark, an unrecorded
message of an earlier failed row may sit above it, too many ids to look at, no bound in
time) sends again, logged. Topics, media and images in doubt are sent
again, logged: at most one copy per crash. Edits (card re-renders, topic names, keyboards)
are idempotent and simply repeated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    AiogramError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import (
    BufferedInputFile,
    InlineKeyboardMarkup,
    InputMediaAudio,
    InputMediaDocument,
    InputMediaPhoto,
    InputMediaVideo,
    MediaUnion,
    Message,
    ReplyParameters,
)
from sqlalchemy import select

from bot.outbox import OutboxItem, SendResult
from bot.storage.db import Database
from bot.storage.models import Outbox
from handlers.telegram_render import (
    MAX_CAPTION,
    CallbackSigner,
    card_keyboard,
    esc,
    post_pieces,
    render_card,
    render_text,
    split_text,
    topic_name,
    utf16_len,
    visible,
)

log = logging.getLogger(__name__)

CHANNEL = "telegram"
T = TypeVar("T")
ALBUM_KINDS = ("photo", "video", "document", "audio")
GLOBAL = "*"  # the limiter key of calls that only count against the global rate

# Bot API descriptions we act on (matched case-insensitively as substrings).
NOT_MODIFIED = ("message is not modified", "topic_not_modified")
EDIT_TARGET_GONE = ("message to edit not found", "message_id_invalid", "message can't be edited")
THREAD_GONE = (
    "message thread not found",
    "thread not found",
    "topic_deleted",
    "topic_closed",
    "topic_id_invalid",
)
NO_TOPICS = ("not enough rights", "chat is not a forum", "not a forum", "chat_not_modified")
BAD_MARKUP = ("can't parse entities", "unsupported start tag", "can't find end")
BAD_FILE = ("wrong file identifier", "wrong remote file", "file_id", "wrong type of the web page")
EDIT_NOT_FOUND = ("message to edit not found", "message_id_invalid")
GONE_USER = ("chat not found", "user is deactivated", "peer_id_invalid")
# A desk group that was deleted, deactivated, or took the bot's right to write: an admin's fix
# (a new chat id, the bot added back) away, so its rows wait instead of being dropped.
DESK_UNAVAILABLE = (
    "chat not found",
    "group chat was deactivated",
    "have no rights to send",
    "not enough rights to send",
    "chat_write_forbidden",
)


def _has(exc: TelegramAPIError, needles: tuple[str, ...]) -> bool:
    text = exc.message.lower()
    return any(n in text for n in needles)


# ---------------------------------------------------------------------- in-doubt probes

PROBE_CALLS = 20  # edits one in-doubt send may try in a supergroup
PROBE_GAP = 3  # "not found" in a row that end a probe in a supergroup (dense ids)
# Private chats: other chats' ids between the bounds answer "not found" (safe, but each costs
# an edit); paced by the limiter's global rate, 120 edits take ~4 s at 30/s.
BOX_PROBE_CALLS = 120
BOX_LOOKAHEAD = PROBE_GAP  # ids above the highest known one a probe looks at without a bound
PROBE_RETRY = 1.0  # seconds before a private-chat probe without an upper bound looks again
PROBE_WAIT = 60.0  # ... and how long it waits for one before sending again (logged)
DATE_SLACK = 1.0  # message dates are whole Unix seconds
# Outbox timestamps are written by the processes' clocks: one host's clock, or hosts kept in
# step by NTP. A row counts as recorded before another was created only this much earlier.
CLOCK_SLACK = timedelta(seconds=1)
MARK_ROWS = 5000  # outbox rows looked back for a chat's high-water mark
BOX_MEMORY = 4096  # private-chat message ids remembered with their chat
DOUBT_MEMORY = 1024  # private-chat probes waiting for an upper bound


class _Unknown:
    """The probe could not tell whether the in-doubt call landed."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


class _Wait:
    """A private-chat probe has no upper bound yet: look again shortly (not sent meanwhile)."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT: Final = _Wait()


class ProbeWait(Exception):
    """The in-doubt call's probe needs an id allocated after the doubt: retry the row soon."""


@dataclass
class _Doubt:
    """A private-chat probe of one outbox row in this process.

    ``mono``/``wall``: when this process first probed for the row — the moment the doubt
    arose as far as bounds go (see :meth:`TelegramSender._doubt`). ``probed``: the highest
    id already looked at (a later look goes on above it). ``calls``: edits made so far.
    """

    text: str
    mono: float
    wall: float
    probed: int = 0
    calls: int = 0


@dataclass(frozen=True)
class HighWater:
    """What the database knows of a chat before an outbox row: the newest message id the bot
    recorded there (``None``: none in the rows looked at), and ``safe``: no earlier row may
    have left an unrecorded message above it (one that failed for good while in doubt)."""

    message_id: int | None
    safe: bool = True
    # The highest shared-box id (private chats and basic groups, any chat) recorded before
    # the row was created: the in-doubt message, if any, has a higher id.
    box: int | None = None


HighWaterSource = Callable[[str, int], Awaitable[HighWater]]


def _ids(value: Any) -> list[int]:
    """The message ids in a step's recorded result (ints, lists of ints; not bools)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [i for v in value for i in _ids(v)]
    return []


def outbox_high_water(db: Database) -> HighWaterSource:
    """The high-water mark of a Telegram chat from its earlier outbox rows' recorded results.

    Rows of one target are delivered one at a time in id order, so the newest row with a
    recorded id holds the chat's newest known bot message. For the shared box it also reads
    the highest private-chat / basic-group id of any chat whose row was *recorded* (``sent_at``)
    before this row was *created*: that id was allocated before the row existed, so before any
    call of it (row ids alone would not do: rows of different chats are delivered out of id
    order). The outbox keeps no claim time, so the creation time is the latest moment known to
    precede the in-doubt call; it is tighter only by the row's queueing delay. Only read when
    a send is in doubt (after a crash or a 5xx), and at most ``MARK_ROWS`` rows back.
    """

    async def look(target: str, row_id: int) -> HighWater:
        async with db.transaction() as s:
            rows = (
                await s.execute(
                    select(Outbox.status, Outbox.result)
                    .where(
                        Outbox.channel == CHANNEL,
                        Outbox.target == target,
                        Outbox.id < row_id,
                        Outbox.id >= row_id - MARK_ROWS,
                    )
                    .order_by(Outbox.id.desc())
                )
            ).all()
            box: int | None = None
            created = await s.scalar(select(Outbox.created_at).where(Outbox.id == row_id))
            if _shared_box(_chat(target)) and created is not None:
                # A row created before ours and sent before it: its id is smaller than ours.
                earlier = (
                    await s.execute(
                        select(Outbox.target, Outbox.result).where(
                            Outbox.channel == CHANNEL,
                            Outbox.status == "sent",
                            Outbox.id < row_id,
                            Outbox.id >= row_id - MARK_ROWS,
                            Outbox.sent_at < created - CLOCK_SLACK,
                        )
                    )
                ).all()
                box = max(
                    (
                        i
                        for t, result in earlier
                        if _shared_box(_chat(t))
                        for v in ((result or {}).get("done") or {}).values()
                        for i in _ids(v)
                    ),
                    default=None,
                )
        for status, result in rows:
            state = result or {}
            if status != "sent" and (state.get("doubt") or state.get("inflight")):
                # Ended (or still stuck) in doubt: its message may sit unrecorded above the
                # mark, and an edit probe would rewrite it.
                return HighWater(None, safe=False)
            ids = [i for v in (state.get("done") or {}).values() for i in _ids(v)]
            if ids:
                return HighWater(max(ids), box=box)
        return HighWater(None, box=box)

    return look


def _shared_box(chat: int | str) -> bool:
    """Private chats and basic groups share one message id sequence (the bot account's);
    supergroups and channels number their own messages."""
    return not str(chat).startswith("-100")


# ---------------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class RateLimits:
    """Telegram's published limits as token buckets (bursts are tolerated, averages are not).

    ``max_wait``: a longer wait is not slept inside the call but handed back to the outbox as
    ``retry_after``, so one busy group never holds up every other chat's delivery.
    """

    global_per_second: float = 30.0
    private_per_second: float = 1.0
    private_burst: float = 3.0
    group_per_minute: float = 20.0
    group_burst: float = 20.0
    max_wait: float = 5.0

    @classmethod
    def unlimited(cls) -> RateLimits:
        """No pacing (tests against a fake server)."""
        big = 1e9
        return cls(big, big, big, big * 60, big, 0.0)


@dataclass
class _Bucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    at: float


class RateLimiter:
    """Reservation-style token buckets: global, and one per chat (private vs group)."""

    def __init__(
        self,
        limits: RateLimits,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self._global = _Bucket(limits.global_per_second, limits.global_per_second, 1.0, now)
        self._global.tokens = self._global.burst
        self._chats: dict[str, _Bucket] = {}

    def _bucket(self, chat: str, now: float) -> _Bucket:
        if chat == GLOBAL:
            return self._global
        b = self._chats.get(chat)
        if b is None:
            if chat.startswith("-"):  # groups and channels have negative ids
                rate, burst = self.limits.group_per_minute / 60.0, self.limits.group_burst
            else:
                rate, burst = self.limits.private_per_second, self.limits.private_burst
            b = self._chats[chat] = _Bucket(rate, burst, burst, now)
        return b

    @staticmethod
    def _refill(b: _Bucket, now: float) -> None:
        b.tokens = min(b.burst, b.tokens + (now - b.at) * b.rate)
        b.at = now

    def reserve(self, chat: str) -> float:
        """Take a token from both buckets; the seconds to wait before the call (0 = now).

        A wait longer than ``max_wait`` is returned without taking anything.
        """
        now = self.clock()
        buckets = tuple({id(b): b for b in (self._global, self._bucket(chat, now))}.values())
        for b in buckets:
            self._refill(b, now)
        wait = max((1.0 - b.tokens) / b.rate if b.tokens < 1.0 else 0.0 for b in buckets)
        if wait > self.limits.max_wait:
            return wait
        for b in buckets:
            b.tokens -= 1.0
        return wait

    async def acquire(self, chat: str, *, edit: bool = False) -> None:
        """Wait for a slot; raise :class:`Deferred` when it is too far away.

        Edits (of a card, a keyboard, a topic name) are not new messages: Telegram's
        per-chat limits are about sending, so edits only count against the global rate.
        """
        wait = self.reserve(GLOBAL if edit else chat)
        if wait > self.limits.max_wait:
            raise Deferred(wait)
        if wait > 0:
            await self.sleep(wait)


class Deferred(Exception):
    """Our own limiter says: try this row again in ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited locally for {wait:.1f}s")
        self.wait = wait


class ThreadGone(Exception):
    """The forum topic a message was meant for was deleted or closed."""


# ---------------------------------------------------------------------- progress


@dataclass
class _Progress:
    """One attempt at an outbox row: its steps (saved across attempts) and the references
    the attempt collects (rebuilt on every attempt from the steps' recorded results)."""

    item: OutboxItem
    links: list[tuple[str, str, int | None]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)


@dataclass
class _Home:
    """Where a ticket's messages go in a desk chat."""

    thread_id: int | None = None
    reply_to: int | None = None


class TelegramSender:
    """The :class:`bot.outbox.Sender` of the Telegram channel."""

    channel = CHANNEL

    def __init__(
        self,
        bot: Bot,
        signer: CallbackSigner,
        *,
        limits: RateLimits | None = None,
        limiter: RateLimiter | None = None,
        high_water: HighWaterSource | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bot = bot
        self.signer = signer
        self.limiter = limiter or RateLimiter(limits or RateLimits())
        # Without it an in-doubt send is simply made again (logged).
        self.high_water = high_water
        # Private-chat message ids this process saw: id -> chat, and (when the call that
        # got it started, id) — the upper bound a probe in a private chat needs.
        self._box_chat: OrderedDict[int, int] = OrderedDict()
        self._box_seen: deque[tuple[float, int]] = deque(maxlen=BOX_MEMORY)
        # Incoming private-chat / basic-group messages: (date in Unix seconds, id).
        self._box_dated: deque[tuple[float, int]] = deque(maxlen=BOX_MEMORY)
        self._box_top = 0  # the highest shared-box id known to exist
        self.wall = wall  # Unix seconds, to compare with message dates
        self._doubts: OrderedDict[int, _Doubt] = OrderedDict()  # outbox row id -> its probe
        # Row id -> when it first waited for a bound: a row waits PROBE_WAIT in all, not per
        # doubt (a chat whose sends keep failing with 5xx is not held a minute each time).
        self._waiting: OrderedDict[int, float] = OrderedDict()
        self._forum: dict[int, bool] = {}
        self._topic_names: dict[tuple[int, int], str] = {}
        self._migrated: dict[int, int] = {}
        self._keyboards: dict[int, int] = {}  # user chat -> the message with its live buttons

    # ------------------------------------------------------------------ entry point

    async def send(self, item: OutboxItem) -> SendResult:
        """Deliver one outbox row; never raises for a Bot API outcome."""
        prog = _Progress(item)
        try:
            await self._dispatch(item, prog)
        except ProbeWait as w:
            # Not an attempt: nothing was sent, the row stays in doubt and its chat waits.
            log.info("telegram: outbox row %s in chat %s: %s", item.id, item.target, w)
            return SendResult(ok=False, retry_after=PROBE_RETRY, deferred=True, error=str(w))
        except Deferred as d:
            return SendResult(ok=False, retry_after=d.wait, error=str(d))
        except TelegramRetryAfter as e:
            return SendResult(ok=False, retry_after=float(e.retry_after), error=_err(e))
        except TelegramMigrateToChat as e:
            # The group became a supergroup: follow it; the admin should update the chat id.
            old = _chat(item.target)
            self._migrated[old] = e.migrate_to_chat_id
            log.error(
                "Telegram chat %s migrated to %s: set the new id in the settings",
                old,
                e.migrate_to_chat_id,
            )
            return SendResult(ok=False, retry_after=0.0, error=_err(e))
        except TelegramForbiddenError as e:
            if _is_private(item.target):
                return SendResult(ok=False, permanent=True, unreachable=True, error=_err(e))
            # Kicked from a desk group: keep the row until an admin adds the bot back.
            log.error("the bot cannot post in chat %s: %s", item.target, e.message)
            return SendResult(ok=False, error=_err(e))
        except TelegramBadRequest as e:
            if _is_private(item.target) and _has(e, GONE_USER):
                return SendResult(ok=False, permanent=True, unreachable=True, error=_err(e))
            if not _is_private(item.target) and _has(e, DESK_UNAVAILABLE):
                log.error("the bot cannot post in chat %s: %s", item.target, e.message)
                return SendResult(ok=False, error=_err(e))
            log.warning("Telegram refused outbox row %s (%s): %s", item.id, item.kind, e.message)
            return SendResult(ok=False, permanent=True, error=_err(e))
        except TelegramEntityTooLarge as e:
            return SendResult(ok=False, permanent=True, error=_err(e))
        except (TelegramServerError, TelegramNetworkError) as e:
            # 5xx, timeouts, lost connections: Telegram may have sent it before failing.
            return SendResult(ok=False, error=_err(e), maybe_sent=True)
        except TelegramAPIError as e:
            # 401/404/409 and the like: transient or an admin's fix away; nothing was sent.
            return SendResult(ok=False, error=_err(e))
        except (TimeoutError, OSError) as e:
            return SendResult(ok=False, error=f"{type(e).__name__}: {e}"[:500], maybe_sent=True)
        except (ThreadGone, AiogramError) as e:
            # Topic trouble we could not route around, malformed responses.
            return SendResult(ok=False, error=f"{type(e).__name__}: {e}"[:500])
        return SendResult(links=list(prog.links), drop_roles=list(dict.fromkeys(prog.drop)))

    async def _dispatch(self, item: OutboxItem, prog: _Progress) -> None:
        try:
            await self._kind(item, prog)
        except ProbeWait:
            raise
        except BaseException:
            self._doubts.pop(item.id, None)
            raise
        self._doubts.pop(item.id, None)
        self._waiting.pop(item.id, None)

    async def _kind(self, item: OutboxItem, prog: _Progress) -> None:
        if item.kind == "message":
            await self._message(item, prog)
        elif item.kind == "ticket_card":
            await self._card(item, prog)
        elif item.kind == "ticket_post":
            await self._post(item, prog)
        elif item.kind == "agent_notice":
            await self._notice(item, prog)
        elif item.kind == "notify":
            await self._texts(
                prog, "n", self._target(item), split_text(str(item.payload.get("text", "")))
            )
            await self._image(prog, self._target(item), item.payload)
        else:
            log.warning("outbox row %s has unknown kind %r; skipped", item.id, item.kind)

    # ------------------------------------------------------------------ primitives

    def _target(self, item: OutboxItem) -> int:
        chat = _chat(item.target)
        return self._migrated.get(chat, chat)

    async def _once(
        self,
        prog: _Progress,
        key: str,
        call: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = False,
        probe: Callable[[], Awaitable[T | _Unknown | _Wait | None]] | None = None,
    ) -> T:
        """Run ``call`` unless an earlier attempt of the same row already did (saved in the
        database). ``call`` returns message ids: JSON, as the outbox stores them.

        If this is the call in doubt, ``probe`` looks for what it may have left: found, its
        result is recorded instead of calling; nothing there, the call is made; ``UNKNOWN``
        (or no probe), the call is made again and the outbox logs and counts the re-send;
        ``WAIT``, the row is handed back for a retry (:class:`ProbeWait`).
        """
        item = prog.item
        if item.in_doubt and not idempotent and key not in item.done:
            found = await probe() if probe is not None else UNKNOWN
            if isinstance(found, _Wait):
                raise ProbeWait(
                    f"{key} is in doubt: waiting for a private-chat id allocated after it"
                )
            if isinstance(found, _Unknown):
                log.warning(
                    "telegram: %s of outbox row %s in chat %s is in doubt and the probe "
                    "could not tell; sending it again",
                    key,
                    item.id,
                    item.target,
                )
                return await item.step(key, call)

            async def known() -> T | None:
                return found

            if found is None:
                log.info(
                    "telegram: %s of outbox row %s in chat %s was in doubt; not there, sending",
                    key,
                    item.id,
                    item.target,
                )
            return await item.step(key, call, find=known)
        return await item.step(key, call, idempotent=idempotent)

    # ------------------------------------------------------------------ probes

    def _observe(self, chat: int, ids: list[int], started: float) -> None:
        """Remember private-chat message ids a call (started at ``started``) got."""
        if not _shared_box(chat):
            return
        for mid in ids:
            self._remember(chat, mid)
            self._box_seen.append((started, mid))

    def observe_incoming(self, chat: int, message_id: int, date: float) -> None:
        """A message someone sent in a private chat or basic group (the channel calls this
        for every message it receives): its id is taken from the bot's shared sequence, so
        it is another chat's id for the probes, and — when its ``date`` is later than the
        moment a doubt arose — an upper bound for them."""
        if not _shared_box(chat):
            return
        self._remember(chat, message_id)
        self._box_dated.append((date, message_id))

    def _remember(self, chat: int, message_id: int) -> None:
        """A shared-box id and its chat (the newest ``BOX_MEMORY`` of them)."""
        self._box_chat[message_id] = chat
        self._box_top = max(self._box_top, message_id)
        while len(self._box_chat) > BOX_MEMORY:
            self._box_chat.popitem(last=False)

    def _box_upper(self, doubt: _Doubt) -> int | None:
        """The highest private-chat id allocated after anything the in-doubt call could have
        left: got by our own call started after the doubt arose, or dated by Telegram more
        than a rounding after it."""
        later = [mid for at, mid in self._box_seen if at >= doubt.mono]
        later += [mid for date, mid in self._box_dated if date > doubt.wall + DATE_SLACK]
        return max(later) if later else None

    def _doubt(self, row: int, text: str) -> _Doubt:
        """The probe state of an in-doubt row, begun now if this process has none.

        Its moment is this process's first probe for the row: the attempt that made the
        in-doubt call had ended before (its process died — the dispatcher hands a row on only
        once its worker is gone or its lock expired — or it recorded a 5xx or a timeout), so
        every id that call could have got was allocated by then. It stays fixed while the row
        waits for a bound, so ids seen meanwhile count. Not the process start (a 5xx doubt
        arises later) nor the claim of the failed attempt (the outbox does not keep it).
        """
        doubt = self._doubts.get(row)
        if doubt is None or doubt.text != text:
            doubt = self._doubts[row] = _Doubt(text, time.monotonic(), self.wall())
            while len(self._doubts) > DOUBT_MEMORY:
                self._doubts.popitem(last=False)
        return doubt

    async def _probe_text(
        self,
        prog: _Progress,
        chat: int,
        html_text: str,
        plain: str | None,
        markup: InlineKeyboardMarkup | None,
    ) -> int | _Unknown | _Wait | None:
        """Look for the in-doubt text message above the chat's high-water mark (module
        docstring): its id, ``None`` (not there), ``UNKNOWN`` or ``WAIT`` (private chats: no
        upper bound yet; look again shortly)."""
        item = prog.item
        if self.high_water is None or chat != _chat(item.target):
            return UNKNOWN  # no database to ask, or the chat migrated meanwhile
        box = _shared_box(chat)
        doubt = self._doubt(item.id, html_text) if box else None
        mark = await self.high_water(item.target, item.id)
        own = [i for v in item.done.values() for i in _ids(v)]  # this row's earlier calls
        if not mark.safe or (mark.message_id is None and not own):
            return UNKNOWN
        floor = max([*own, *([mark.message_id] if mark.message_id else [])])
        if box and mark.box is not None:
            floor = max(floor, mark.box)  # other chats' ids recorded before the row existed
        candidate = max(floor, doubt.probed) if doubt is not None else floor
        text = html_text
        mode: str | None = "HTML"
        calls = misses = 0
        while True:
            candidate += 1
            if doubt is not None:
                upper = self._box_upper(doubt)
                if upper is not None and candidate > upper:
                    return None  # every id the in-doubt call could have got was looked at
                # Without a bound, look only at ids known to exist and the next few (the
                # in-doubt message is often right there): above may be nothing yet.
                if upper is None and candidate > max(self._box_top, floor) + BOX_LOOKAHEAD:
                    since = self._waiting.setdefault(item.id, doubt.wall)
                    while len(self._waiting) > DOUBT_MEMORY:
                        self._waiting.popitem(last=False)
                    if self.wall() - since >= PROBE_WAIT:
                        log.warning(
                            "telegram: no private-chat id allocated after the doubt of outbox "
                            "row %s came within %.0fs",
                            item.id,
                            PROBE_WAIT,
                        )
                        return UNKNOWN
                    return WAIT  # ids above may not exist yet: wait for one that does
                if self._box_chat.get(candidate, chat) != chat:
                    doubt.probed = candidate
                    continue  # another chat's message
                if doubt.calls >= BOX_PROBE_CALLS:
                    return UNKNOWN
                doubt.calls += 1
            elif calls >= PROBE_CALLS:
                return UNKNOWN
            calls += 1
            await self.limiter.acquire(str(chat), edit=True)
            try:
                await self.bot.edit_message_text(
                    chat_id=chat,
                    message_id=candidate,
                    text=text,
                    parse_mode=mode,
                    reply_markup=markup,
                )
            except TelegramBadRequest as e:
                if _has(e, NOT_MODIFIED):
                    return candidate  # ours, with exactly this content
                if _has(e, BAD_MARKUP) and mode is not None:
                    # The send fell back to plain text the same way: probe that instead.
                    text = plain if plain is not None else visible(html_text)
                    mode = None
                    candidate -= 1
                    continue
                # Not ours with this content, looked at after the doubt arose: that stays so.
                if doubt is not None:
                    doubt.probed = candidate
                if _has(e, EDIT_NOT_FOUND):
                    misses += 1
                    if not box and misses >= PROBE_GAP:
                        return None
                    continue
                misses = 0  # a user's or a service message: look further
                continue
            # Only an unrecorded message of ours can be edited here, and with this row's
            # content it would have answered "not modified": the mark was wrong. It shows
            # this row's content now, so it counts as delivered rather than sent twice.
            log.error(
                "telegram: the probe for outbox row %s edited message %s in chat %s",
                item.id,
                candidate,
                chat,
            )
            return candidate

    async def _send_html(
        self,
        chat: int,
        html_text: str,
        *,
        plain: str | None = None,
        markup: InlineKeyboardMarkup | None = None,
        home: _Home | None = None,
    ) -> int:
        """sendMessage in HTML; if Telegram cannot parse our markup, send the plain text."""
        await self.limiter.acquire(str(chat))
        started = time.monotonic()
        home = home or _Home()
        reply = (
            ReplyParameters(message_id=home.reply_to, allow_sending_without_reply=True)
            if home.reply_to
            else None
        )
        try:
            msg = await self.bot.send_message(
                chat_id=chat,
                text=html_text,
                parse_mode="HTML",
                reply_markup=markup,
                message_thread_id=home.thread_id,
                reply_parameters=reply,
            )
        except TelegramBadRequest as e:
            if _has(e, THREAD_GONE):
                raise ThreadGone(e.message) from e
            if not _has(e, BAD_MARKUP):
                raise
            log.error("Telegram could not parse our HTML (%s); sending plain text", e.message)
            msg = await self.bot.send_message(
                chat_id=chat,
                text=plain if plain is not None else visible(html_text),
                parse_mode=None,
                reply_markup=markup,
                message_thread_id=home.thread_id,
                reply_parameters=reply,
            )
        self._observe(chat, [msg.message_id], started)
        return msg.message_id

    async def _texts(
        self,
        prog: _Progress,
        key: str,
        chat: int,
        pieces: list[str],
        *,
        markdown: bool = False,
        markup: InlineKeyboardMarkup | None = None,
        home: _Home | None = None,
    ) -> list[int]:
        """Send source-text pieces in order (rendered to HTML), buttons on the last one."""
        ids: list[int] = []
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            html_text = render_text(piece, markdown=markdown)

            async def call(
                html_text: str = html_text, piece: str = piece, last: bool = last
            ) -> int:
                return await self._send_html(
                    chat, html_text, plain=piece, markup=markup if last else None, home=home
                )

            async def probe(
                html_text: str = html_text, piece: str = piece, last: bool = last
            ) -> int | _Unknown | _Wait | None:
                return await self._probe_text(
                    prog, chat, html_text, piece, markup if last else None
                )

            ids.append(await self._once(prog, f"{key}:{n}", call, probe=probe))
        return ids

    async def _media(
        self,
        prog: _Progress,
        key: str,
        chat: int,
        attachments: list[dict[str, Any]],
        *,
        caption: str | None = None,
        home: _Home | None = None,
    ) -> list[int]:
        """Send attachments by file id: albums for photos/videos (and for documents, audio),
        one call per voice note or other file. Files from other platforms become a line of text.
        """
        home = home or _Home()
        ids: list[int] = []
        ours = [
            a for a in attachments if a.get("channel") in ("", CHANNEL, None) and a.get("file_id")
        ]
        foreign = [a for a in attachments if a not in ours]
        # Albums for what Telegram can group (photos with videos, documents, audio), one call
        # for anything else; the caption rides on the first call.
        sends: list[list[dict[str, Any]]] = []
        for kinds in (("photo", "video"), ("document",), ("audio",)):
            same = [a for a in ours if a.get("kind") in kinds]
            sends.extend(same[i : i + 10] for i in range(0, len(same), 10))
        sends.extend([a] for a in ours if a.get("kind") not in ALBUM_KINDS)
        for n, group in enumerate(sends):
            cap = caption if n == 0 else None

            async def call(group: list[dict[str, Any]] = group, cap: str | None = cap) -> list[int]:
                if len(group) == 1:
                    return [await self._single(chat, group[0], cap, home)]
                return await self._album(chat, group, cap, home)

            ids.extend(await self._once(prog, f"{key}:{n}", call))
        if foreign:
            names = ", ".join(str(a.get("name") or a.get("kind") or "file") for a in foreign)
            ids.extend(await self._texts(prog, f"{key}:f", chat, [f"📎 {names}"], home=home))
        if caption is not None and not sends:

            async def probe() -> list[int] | _Unknown | _Wait | None:
                assert caption is not None
                found = await self._probe_text(prog, chat, caption, None, None)
                return [found] if isinstance(found, int) else found

            ids.extend(
                await self._once(
                    prog, f"{key}:c", lambda: self._caption_only(chat, caption, home), probe=probe
                )
            )
        return ids

    async def _caption_only(self, chat: int, caption: str, home: _Home) -> list[int]:
        return [await self._send_html(chat, caption, home=home)]

    async def _album(
        self, chat: int, group: list[dict[str, Any]], caption: str | None, home: _Home
    ) -> list[int]:
        media: list[MediaUnion] = []
        for n, a in enumerate(group):
            cap = caption if n == 0 else None
            kind = a.get("kind")
            fid = str(a["file_id"])
            if kind == "photo":
                media.append(InputMediaPhoto(media=fid, caption=cap, parse_mode="HTML"))
            elif kind == "video":
                media.append(InputMediaVideo(media=fid, caption=cap, parse_mode="HTML"))
            elif kind == "audio":
                media.append(InputMediaAudio(media=fid, caption=cap, parse_mode="HTML"))
            else:
                media.append(InputMediaDocument(media=fid, caption=cap, parse_mode="HTML"))
        await self.limiter.acquire(str(chat))
        started = time.monotonic()
        try:
            msgs = await self.bot.send_media_group(
                chat_id=chat,
                media=media,
                message_thread_id=home.thread_id,
                reply_parameters=_reply(home),
            )
        except TelegramBadRequest as e:
            if _has(e, THREAD_GONE):
                raise ThreadGone(e.message) from e
            if not _has(e, BAD_FILE):
                raise
            names = ", ".join(str(a.get("name") or a.get("kind")) for a in group)
            return [await self._send_html(chat, f"📎 {esc(names)} (file unavailable)", home=home)]
        self._observe(chat, [m.message_id for m in msgs], started)
        return [m.message_id for m in msgs]

    async def _single(self, chat: int, a: dict[str, Any], caption: str | None, home: _Home) -> int:
        kind = str(a.get("kind") or "document")
        fid = str(a["file_id"])
        common: dict[str, Any] = {
            "chat_id": chat,
            "message_thread_id": home.thread_id,
            "reply_parameters": _reply(home),
        }
        senders: dict[str, Callable[..., Awaitable[Message]]] = {
            "photo": lambda: self.bot.send_photo(photo=fid, caption=caption, **common),
            "video": lambda: self.bot.send_video(video=fid, caption=caption, **common),
            "voice": lambda: self.bot.send_voice(voice=fid, caption=caption, **common),
            "audio": lambda: self.bot.send_audio(audio=fid, caption=caption, **common),
            "animation": lambda: self.bot.send_animation(animation=fid, caption=caption, **common),
            "video_note": lambda: self.bot.send_video_note(video_note=fid, **common),
        }
        call = senders.get(
            kind, lambda: self.bot.send_document(document=fid, caption=caption, **common)
        )
        await self.limiter.acquire(str(chat))
        started = time.monotonic()
        try:
            msg = await call()
        except TelegramBadRequest as e:
            if _has(e, THREAD_GONE):
                raise ThreadGone(e.message) from e
            if not _has(e, BAD_FILE):
                raise
            name = a.get("name") or kind
            return await self._send_html(chat, f"📎 {esc(name)} (file unavailable)", home=home)
        self._observe(chat, [msg.message_id], started)
        return msg.message_id

    # ------------------------------------------------------------------ end-user messages

    async def _message(self, item: OutboxItem, prog: _Progress) -> None:
        p = item.payload
        chat = self._target(item)
        text = str(p.get("text") or "")
        markdown = bool(p.get("markdown"))
        markup = _user_markup(p.get("buttons") or [])
        attachments = list(p.get("attachments") or [])
        pieces = split_text(text) if text.strip() else []
        if not pieces and markup is not None:
            pieces = ["⬇️"]
        ids = await self._texts(prog, "t", chat, pieces, markdown=markdown, markup=markup)
        if markup is not None and ids:
            await self._retire_keyboard(chat, ids[-1])
        if attachments:
            await self._media(prog, "m", chat, attachments)
        await self._image(prog, chat, p)

    async def _image(self, prog: _Progress, chat: int, payload: dict[str, Any]) -> None:
        """A PNG the core made (the digest chart), sent after the text it illustrates."""
        encoded = payload.get("image_png_b64")
        if not encoded:
            return
        data = base64.b64decode(str(encoded))
        name = str(payload.get("image_name") or "image.png")

        async def call() -> int:
            await self.limiter.acquire(str(chat))
            started = time.monotonic()
            msg = await self.bot.send_photo(chat, BufferedInputFile(data, filename=name))
            self._observe(chat, [msg.message_id], started)
            return msg.message_id

        await self._once(prog, "img", call)

    async def _retire_keyboard(self, chat: int, newest: int) -> None:
        """New buttons make the previous ones stale (the engine bumped the prompt): take the
        old keyboard off the screen. Cosmetic — a stale press is refused politely anyway."""
        old = self._keyboards.get(chat)
        self._keyboards[chat] = newest
        if old is None or old == newest:
            return
        with contextlib.suppress(TelegramAPIError, Deferred):
            await self.limiter.acquire(str(chat), edit=True)
            await self.bot.edit_message_reply_markup(
                chat_id=chat, message_id=old, reply_markup=None
            )

    # ------------------------------------------------------------------ the desk

    async def is_forum(self, chat: int) -> bool:
        """Whether a desk chat has topics (cached; refreshed when Telegram says otherwise)."""
        if chat not in self._forum:
            info = await self.bot.get_chat(chat_id=chat)
            self._forum[chat] = bool(info.is_forum)
        return self._forum[chat]

    def forget_chat(self, chat: int) -> None:
        """Look the chat up again next time (it may have become a forum, or stopped being one)."""
        self._forum.pop(chat, None)

    async def _new_topic(self, prog: _Progress, key: str, chat: int, name: str) -> int | None:
        """Create a topic; ``None`` when the chat cannot have one (we fall back to a card)."""

        async def call() -> int | None:
            await self.limiter.acquire(str(chat))
            try:
                topic = await self.bot.create_forum_topic(chat_id=chat, name=name)
            except TelegramBadRequest as e:
                if not _has(e, NO_TOPICS):
                    raise
                log.warning(
                    "cannot create a topic in %s (%s): posting a card instead", chat, e.message
                )
                if "forum" in e.message.lower():
                    self._forum[chat] = False
                return None
            self._topic_names[(chat, topic.message_thread_id)] = name
            return topic.message_thread_id

        thread: int | None = await self._once(prog, key, call)
        if thread is not None and ("topic", str(thread), None) not in prog.links:
            prog.links.append(("topic", str(thread), None))
        return thread

    async def _send_card(
        self, item: OutboxItem, prog: _Progress, chat: int, key: str, thread: int | None
    ) -> int:
        assert item.card is not None
        html_text = render_card(item.card)
        markup = card_keyboard(item.card, self.signer, chat)
        mid: int = await self._once(
            prog,
            key,
            lambda: self._send_html(chat, html_text, markup=markup, home=_Home(thread_id=thread)),
            probe=lambda: self._probe_text(prog, chat, html_text, None, markup),
        )
        if ("card", str(mid), None) not in prog.links:
            prog.links.append(("card", str(mid), None))
        return mid

    async def _rehome(self, item: OutboxItem, prog: _Progress, chat: int, attempt: int) -> _Home:
        """A fresh home for a ticket whose topic or card vanished: a new topic with the card,
        or — where topics are impossible — a new card message in the chat."""
        prog.drop.extend(["topic", "card"])
        prog.links = [link for link in prog.links if link[0] not in ("topic", "card")]
        thread: int | None = None
        if item.card is not None and await self.is_forum(chat):
            thread = await self._new_topic(prog, f"topic{attempt}", chat, topic_name(item.card))
        if item.card is None:
            return _Home(thread_id=thread)
        card_id = await self._send_card(item, prog, chat, f"card{attempt}", thread)
        return _Home(thread_id=thread, reply_to=None if thread else card_id)

    async def _card(self, item: OutboxItem, prog: _Progress) -> None:
        card = item.card
        if card is None:
            return  # the ticket is gone; nothing to show
        chat = self._target(item)
        topic = _last_int(item.links.get("topic"))
        card_id = _last_int(item.links.get("card"))
        if card_id is not None:
            shown = card_id

            async def edit() -> bool:
                """True: the card shows the current state; False: it was deleted."""
                await self.limiter.acquire(str(chat), edit=True)
                try:
                    await self.bot.edit_message_text(
                        chat_id=chat,
                        message_id=shown,
                        text=render_card(card),
                        parse_mode="HTML",
                        reply_markup=card_keyboard(card, self.signer, chat),
                    )
                except TelegramBadRequest as e:
                    if _has(e, NOT_MODIFIED):
                        return True
                    if _has(e, EDIT_TARGET_GONE):
                        return False  # deleted: post it anew below
                    raise
                return True

            if await self._once(prog, "edited", edit, idempotent=True):
                if topic is not None:
                    await self._rename(chat, topic, topic_name(card))
                return
            card_id = None
        # First delivery, or the card message vanished.
        if item.links.get("card"):
            prog.drop.append("card")
        thread = topic
        if thread is None and await self.is_forum(chat):
            thread = await self._new_topic(prog, "topic", chat, topic_name(card))
        try:
            await self._send_card(item, prog, chat, "card", thread)
        except ThreadGone:
            self.forget_chat(chat)
            await self._rehome(item, prog, chat, 1)
        if topic is not None and "topic" not in prog.drop:
            await self._rename(chat, topic, topic_name(card))

    async def _rename(self, chat: int, thread: int, name: str) -> None:
        """Rename the ticket's topic when its status changed (cosmetic: errors are logged)."""
        if self._topic_names.get((chat, thread)) == name:
            return
        try:
            await self.limiter.acquire(str(chat), edit=True)
            await self.bot.edit_forum_topic(chat_id=chat, message_thread_id=thread, name=name)
        except Deferred:
            return  # next card update renames it
        except TelegramBadRequest as e:
            if not _has(e, NOT_MODIFIED):
                log.info("could not rename topic %s in %s: %s", thread, chat, e.message)
                return
        self._topic_names[(chat, thread)] = name

    def _home(self, item: OutboxItem) -> _Home:
        topic = _last_int(item.links.get("topic"))
        if topic is not None:
            return _Home(thread_id=topic)
        return _Home(reply_to=_last_int(item.links.get("card")))

    async def _post(self, item: OutboxItem, prog: _Progress) -> None:
        p = item.payload
        chat = self._target(item)
        home = self._home(item)
        if home.thread_id is None and home.reply_to is None and item.card is not None:
            # A post before any card (e.g. the card row failed for good): give it a home.
            home = await self._rehome(item, prog, chat, 0)
            prog.drop.clear()
        tm_id = p.get("message_id")
        tm = int(tm_id) if isinstance(tm_id, int | str) and str(tm_id).isdigit() else None
        for attempt in range(3):
            try:
                ids = await self._post_body(prog, f"p{attempt}", chat, p, home)
            except ThreadGone:
                self.forget_chat(chat)
                home = await self._rehome(item, prog, chat, attempt + 2)
                continue
            for mid in ids:
                prog.links.append(("relay", str(mid), tm))
            return
        raise ThreadGone("the ticket's topic keeps vanishing")

    async def _post_body(
        self, prog: _Progress, key: str, chat: int, p: dict[str, Any], home: _Home
    ) -> list[int]:
        pieces = post_pieces(p)
        attachments = list(p.get("attachments") or [])
        ids: list[int] = []
        # A short text rides on the album as its caption: one post in the thread.
        caption_fits = len(pieces) == 1 and utf16_len(visible(pieces[0])) <= MAX_CAPTION
        if attachments and caption_fits:
            return await self._media(
                prog, f"{key}m", chat, attachments, caption=pieces[0], home=home
            )
        for n, piece in enumerate(pieces):

            async def call(piece: str = piece) -> int:
                return await self._send_html(chat, piece, home=home)

            async def probe(piece: str = piece) -> int | _Unknown | _Wait | None:
                return await self._probe_text(prog, chat, piece, None, None)

            ids.append(await self._once(prog, f"{key}t{n}", call, probe=probe))
        if attachments:
            ids.extend(await self._media(prog, f"{key}m", chat, attachments, home=home))
        return ids

    async def _notice(self, item: OutboxItem, prog: _Progress) -> None:
        p = item.payload
        chat = self._target(item)
        ref = p.get("thread_ref")
        text = f"⚠️ {esc(p.get('text', ''))}"
        homes: list[_Home] = []
        if ref is not None and str(ref).isdigit():
            if await self.is_forum(chat):
                homes.append(_Home(thread_id=int(str(ref))))
            homes.append(_Home(reply_to=int(str(ref))))
        homes.append(_Home())
        for n, home in enumerate(homes):

            async def call(home: _Home = home) -> int:
                return await self._send_html(chat, text, home=home)

            async def probe() -> int | _Unknown | _Wait | None:
                return await self._probe_text(prog, chat, text, None, None)

            try:
                await self._once(prog, f"n{n}", call, probe=probe)
                return
            except ThreadGone:
                continue


def _err(e: Exception) -> str:
    return f"{type(e).__name__}: {getattr(e, 'message', e)}"[:500]


def _chat(target: str) -> int:
    return int(target)


def _is_private(target: str) -> bool:
    return not target.startswith("-")


def _last_int(keys: list[str] | None) -> int | None:
    for key in reversed(keys or []):
        with contextlib.suppress(ValueError):
            return int(key)
    return None


def _reply(home: _Home) -> ReplyParameters | None:
    if home.reply_to is None:
        return None
    return ReplyParameters(message_id=home.reply_to, allow_sending_without_reply=True)


def _user_markup(rows: list[list[dict[str, Any]]]) -> InlineKeyboardMarkup | None:
    from handlers.telegram_render import user_keyboard

    return user_keyboard(rows)
