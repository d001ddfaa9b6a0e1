"""The Telegram channel: end users in private chats, the L2 desk in a group (aiogram 3).

Intake translates a Bot API update into a :class:`~bot.domain.UserEvent` or
:class:`~bot.domain.AgentEvent` and hands it to the app, which commits it once; only then is
the update acknowledged to Telegram (the next ``getUpdates`` offset, or the webhook's 200).
A process killed mid-update therefore gets the update again, and the event-id check makes the
second delivery a no-op. Delivery lives in :mod:`handlers.telegram_sender`, rendering in
:mod:`handlers.telegram_render`. No business decision is made here: the desk checks who may do
what, the engine checks that a button is current.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiogram import Bot
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramConflictError,
    TelegramUnauthorizedError,
)
from aiogram.methods import Response, TelegramMethod
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllPrivateChats,
    BotCommandScopeChat,
    CallbackQuery,
    Chat,
    ChatMemberUpdated,
    InaccessibleMessage,
    Message,
    Update,
    User,
)
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy import select

from bot.app import App
from bot.domain import (
    AgentAction,
    AgentEvent,
    Attachment,
    UserEvent,
    UserRef,
    pick_lang,
)
from bot.outbox import Sender
from bot.storage.errors import database_unavailable
from bot.storage.models import Ticket
from escalation.card import build_card
from handlers.telegram_render import (
    ALERT_LIMIT,
    CallbackSigner,
    CardPress,
    card_keyboard,
    is_card_data,
    priority_keyboard,
)
from handlers.telegram_sender import (
    CHANNEL,
    RateLimits,
    TelegramSender,
    outbox_high_water,
)

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 - a header name
ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
MAX_HANDLE_ATTEMPTS = 5  # then an update that keeps failing is logged and skipped

USER_COMMANDS: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("start", "Start / describe a problem"),
        ("help", "What this bot can do"),
        ("new", "A new request"),
        ("status", "My tickets"),
        ("cancel", "Cancel the current request"),
        ("lang", "Language / Язык"),
        ("forget", "Erase my personal data"),
    ],
    "ru": [
        ("start", "Начать / описать проблему"),
        ("help", "Что умеет бот"),
        ("new", "Новое обращение"),
        ("status", "Мои заявки"),
        ("cancel", "Отменить текущее обращение"),
        ("lang", "Язык / Language"),
        ("forget", "Удалить мои персональные данные"),
    ],
}
DESK_COMMANDS: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("take", "Take the ticket of this thread"),
        ("note", "Internal note (not sent to the user)"),
        ("wait", "Ask the customer; pauses the SLA"),
        ("resolve", "Resolve the ticket"),
        ("l3", "Escalate to L3"),
        ("priority", "Set priority: low, normal, high, critical"),
        ("release", "Give the ticket back to the queue"),
        ("reopen", "Reopen a resolved ticket"),
        ("kb", "Save the answer as a KB draft"),
    ],
    "ru": [
        ("take", "Взять заявку этой ветки"),
        ("note", "Внутренняя заметка (не уходит клиенту)"),
        ("wait", "Запросить у клиента; SLA на паузе"),
        ("resolve", "Заявка решена"),
        ("l3", "Передать на L3"),
        ("priority", "Приоритет: low, normal, high, critical"),
        ("release", "Вернуть заявку в очередь"),
        ("reopen", "Открыть решённую заявку снова"),
        ("kb", "Сохранить ответ как черновик статьи"),
    ],
}
# Desk commands -> desk actions. Unknown commands are never relayed to a customer.
DESK_ACTIONS: dict[str, AgentAction] = {
    "take": "claim",
    "claim": "claim",
    "note": "note",
    "reply": "reply",
    "wait": "wait",
    "ask": "wait",
    "resolve": "resolve",
    "l3": "l3",
    "l2": "l3_back",
    "priority": "priority",
    "release": "release",
    "reopen": "reopen",
    "kb": "save_kb",
}
UNSUPPORTED_KINDS = {
    "sticker": "sticker",
    "location": "location",
    "venue": "location",
    "contact": "contact",
    "poll": "poll",
    "dice": "other",
    "game": "other",
    "story": "other",
    "invoice": "other",
    "paid_media": "other",
    "checklist": "other",
}
FOREIGN_GROUP_NOTE = {
    "en": "👋 I only work in private chats. Write to me directly: https://t.me/{username}",
    "ru": "👋 Я работаю только в личных сообщениях. Напишите мне: https://t.me/{username}",
}
BAD_BUTTON = {
    "en": "⛔ This button is not valid here.",
    "ru": "⛔ Эта кнопка здесь недействительна.",
}
BACK = {"en": "↩️ Back", "ru": "↩️ Назад"}
_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{3,64}))?(?:\s+|$)(.*)$", re.S)
_TICKET_ARG = re.compile(r"^[A-Za-z]{1,8}-\d{1,9}$")


class _Session(AiohttpSession):
    """aiogram's session, keeping alive the response models it parses with.

    aiogram builds ``Response[<result type>]`` for every call; pydantic caches such
    parametrised models only weakly, so after each garbage collection the model was built
    again (~10 ms of CPU each time: a third of the Telegram path's cost under load).
    """

    _models: ClassVar[dict[Any, Any]] = {}

    def check_response(
        self, bot: Bot, method: TelegramMethod[Any], status_code: int, content: str
    ) -> Response[Any]:
        """aiogram's check, with the result type's response model held strongly."""
        returning = method.__returning__
        if returning not in self._models:
            self._models[returning] = Response[returning]  # type: ignore[valid-type]
        return super().check_response(bot, method, status_code, content)


def make_bot(token: str, api_url: str | None, *, timeout: float = 30.0) -> Bot:
    """A Bot whose every call goes to ``api_url`` when set (a self-hosted or test server)."""
    if api_url:
        session = _Session(api=TelegramAPIServer.from_base(api_url), timeout=timeout)
    else:
        session = _Session(timeout=timeout)
    return Bot(
        token,
        session=session,
        default=DefaultBotProperties(parse_mode="HTML", link_preview_is_disabled=True),
    )


def webhook_secret(settings_secret: str | None, token: str) -> str:
    """The configured secret, else one derived from the token (a webhook is never open)."""
    if settings_secret:
        return settings_secret
    return hashlib.sha256(b"firstline-webhook\x00" + token.encode()).hexdigest()[:48]


@dataclass
class _Unit:
    """Updates handled as one event: a single update, or every part of one album."""

    updates: list[Update]
    album: tuple[int, str] | None = None  # (chat id, media_group_id)

    @property
    def first(self) -> int:
        return min(u.update_id for u in self.updates)

    @property
    def last(self) -> int:
        return max(u.update_id for u in self.updates)


def group_updates(updates: Sequence[Update]) -> list[_Unit]:
    """Gather the parts of each album (same chat and media_group_id) into one unit, placed
    where its first part was; everything else stays one update per unit, in order."""
    units: list[_Unit] = []
    albums: dict[tuple[int, str], _Unit] = {}
    for u in sorted(updates, key=lambda x: x.update_id):
        msg = u.message
        if msg is not None and msg.media_group_id:
            key = (msg.chat.id, msg.media_group_id)
            if key in albums:
                albums[key].updates.append(u)
                continue
            albums[key] = unit = _Unit([u], album=key)
            units.append(unit)
        else:
            units.append(_Unit([u]))
    return units


@dataclass
class _PendingAlbum:
    """Webhook mode: album parts arrive as separate requests; they wait for one another."""

    updates: list[Update] = field(default_factory=list)
    done: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None
    started: float = 0.0


class TelegramChannel:
    """The Telegram platform channel as :mod:`handlers.server` plugs it in."""

    name = CHANNEL

    def __init__(
        self,
        app: App,
        *,
        bot: Bot | None = None,
        limits: RateLimits | None = None,
        polling_timeout: int = 25,
        album_window: float = 0.8,
    ) -> None:
        self.app = app
        self.settings = app.settings.telegram
        token = self.settings.bot_token.get_secret_value() if self.settings.bot_token else ""
        if not token:
            raise ValueError("TELEGRAM_BOT_TOKEN is not set")
        self.bot = bot or make_bot(token, self.settings.api_url)
        self.signer = CallbackSigner(token)
        self._sender = TelegramSender(
            self.bot,
            self.signer,
            limits=limits,
            high_water=outbox_high_water(app.db),
            wall=lambda: app.clock.now().timestamp(),
        )
        self.polling_timeout = polling_timeout
        self.album_window = album_window
        secret = self.settings.webhook_secret
        self.secret = webhook_secret(secret.get_secret_value() if secret else None, token)
        self.desk_chats = self._desk_chat_ids()
        self.username: str | None = None
        self.offset: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failures: dict[int, int] = {}
        self._db_down = 0  # consecutive units refused because the database was unavailable
        self._album_seen: dict[tuple[int, str], float] = {}
        self._pending: dict[tuple[int, str], _PendingAlbum] = {}
        self._noted_groups: set[int] = set()
        self._busy = 0
        self._stripped: dict[int, set[str]] = {}  # update id -> message parts we dropped

    # ------------------------------------------------------------------ the server's port

    @property
    def sender(self) -> Sender:
        """Delivers this channel's outbox rows."""
        return self._sender

    @property
    def webhook_mode(self) -> bool:
        """Whether Telegram pushes updates to us (else we poll)."""
        return bool(self.settings.webhook_url)

    def mount(self, web_app: web.Application) -> None:
        """Route ``POST /telegram/webhook`` when a webhook URL is configured, and close the
        Bot API session when the server shuts down (after the outbox's last delivery)."""
        if self.webhook_mode:
            web_app.router.add_post(WEBHOOK_PATH, self.webhook_handler)

        async def close_session(_app: web.Application) -> None:
            await self.close()

        web_app.on_cleanup.append(close_session)

    async def start(self) -> None:
        """Register commands and the webhook (or drop it), then poll in the background."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="telegram-intake")

    async def stop(self) -> None:
        """Stop intake; an update being handled finishes first."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=15)
            self._task = None

    async def close(self) -> None:
        """Close the HTTP session (after delivery has stopped)."""
        await self.bot.session.close()

    # ------------------------------------------------------------------ setup

    def _desk_chat_ids(self) -> set[int]:
        """Every Telegram chat that is an L2/L3 destination: the settings and the routes."""
        chats: set[int] = set()
        for cid in (self.settings.l2_chat_id, self.settings.l3_chat_id):
            if cid is not None:
                chats.add(cid)
        esc = self.app.settings.escalation
        for dest in [*esc.routes.values(), esc.default_destination, esc.l3_destination]:
            if dest and dest.startswith(CHANNEL + ":"):
                with contextlib.suppress(ValueError):
                    chats.add(int(dest.split(":", 1)[1]))
        return chats

    async def setup(self) -> None:
        """getMe, setMyCommands (en, ru; users and desk), and the webhook (or its removal)."""
        me = await self.bot.get_me()
        self.username = me.username
        for lang, commands in USER_COMMANDS.items():
            cmds = [BotCommand(command=c, description=d) for c, d in commands]
            scope = BotCommandScopeAllPrivateChats()
            await self.bot.set_my_commands(cmds, scope=scope, language_code=lang)
            if lang == "en":  # everyone whose language we do not speak
                await self.bot.set_my_commands(cmds, scope=scope)
        for chat in sorted(self.desk_chats):
            cmds = [BotCommand(command=c, description=d) for c, d in DESK_COMMANDS["en"]]
            try:
                await self.bot.set_my_commands(cmds, scope=BotCommandScopeChat(chat_id=chat))
            except TelegramAPIError as e:  # not in the group yet: the menu is a nicety
                log.warning("could not set desk commands in %s: %s", chat, e.message)
        if self.webhook_mode:
            assert self.settings.webhook_url
            await self.bot.set_webhook(
                url=self.settings.webhook_url,
                secret_token=self.secret,
                allowed_updates=ALLOWED_UPDATES,
            )
            log.info("Telegram webhook set to %s", self.settings.webhook_url)
        else:
            # Pending updates stay: they are fetched and committed by the polling loop.
            await self.bot.delete_webhook(drop_pending_updates=False)

    async def _run(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.setup()
                break
            except TelegramUnauthorizedError:
                log.error("Telegram rejected the bot token; check TELEGRAM_BOT_TOKEN")
            except Exception:
                log.exception("Telegram setup failed; retrying in %.0fs", delay)
            if await self._sleep(delay):
                return
            delay = min(delay * 2, 60.0)
        if not self.webhook_mode:
            await self.poll_forever()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; ``True`` when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        return self._stopping.is_set()

    # ------------------------------------------------------------------ long polling

    async def _fetch(self, wait: int, limit: int = 100) -> list[Update] | None:
        """getUpdates from the confirmed offset; ``None`` when stopping interrupted it."""
        call = asyncio.ensure_future(
            self.bot.get_updates(
                offset=self.offset,
                limit=limit,
                timeout=wait,
                allowed_updates=ALLOWED_UPDATES,
                request_timeout=wait + 15,
            )
        )
        stopper = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({call, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if call not in done:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await call
            return None
        try:
            return call.result()
        except ClientDecodeError as e:
            # One update aiogram cannot read (a newer Bot API?) must not block the rest.
            data = e.data if isinstance(e.data, dict) else {}
            if not data.get("ok") or not isinstance(data.get("result"), list):
                raise
            updates: list[Update] = []
            for raw in data["result"]:
                try:
                    updates.append(self.parse_update(raw))
                except ValueError:
                    log.warning("getUpdates returned an item that is not an update: %.200r", raw)
            return updates

    def parse_update(self, raw: Any) -> Update:
        """Validate one raw update leniently: parts aiogram rejects are dropped (and, for a
        message, remembered as unsupported content) instead of losing the whole update.

        Raises :class:`ValueError` for something that is not an update at all (no object,
        no integer ``update_id``): there is nothing to confirm or answer.
        """
        if not isinstance(raw, dict):
            raise ValueError("an update must be a JSON object")
        uid_raw = raw.get("update_id")
        if isinstance(uid_raw, bool) or not isinstance(uid_raw, int):
            raise ValueError("an update needs an integer update_id")
        try:
            return Update.model_validate(raw, context={"bot": self.bot})
        except ValidationError as e:
            bad = {tuple(err["loc"][:2]) for err in e.errors() if len(err["loc"]) >= 2}
        uid = uid_raw
        trimmed = copy.deepcopy(raw)
        for kind, key in bad:
            part = trimmed.get(str(kind))
            if isinstance(part, dict) and isinstance(key, str):
                part.pop(key, None)
                self._stripped.setdefault(uid, set()).add(key)
        log.warning("update %s: dropped parts aiogram cannot read: %s", uid, sorted(bad))
        try:
            return Update.model_validate(trimmed, context={"bot": self.bot})
        except ValidationError:
            log.warning("update %s cannot be read at all; ignoring it", uid)
            return Update(update_id=uid)

    async def poll_forever(self) -> None:
        """Fetch, commit, and only then confirm (the next offset), until stopped."""
        delay = 1.0
        while not self._stopping.is_set():
            try:
                updates = await self._fetch(self.polling_timeout)
            except TelegramConflictError as e:
                log.error("getUpdates conflict (another instance or a webhook?): %s", e.message)
                updates = None
                if await self._sleep(5.0):
                    break
                continue
            except Exception as e:
                log.warning("getUpdates failed (%s); retrying in %.0fs", e, delay)
                if await self._sleep(delay):
                    break
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            if updates is None:
                break
            wait = await self.process_batch(updates)
            if wait > 0 and await self._sleep(wait):
                break

    async def poll_once(self, *, flush_albums: bool = True) -> int:
        """One non-blocking getUpdates and its processing (tests, tools); the count fetched."""
        updates = await self._fetch(0) or []
        await self.process_batch(updates, flush_albums=flush_albums)
        return len(updates)

    async def process_batch(
        self, updates: Sequence[Update], *, flush_albums: bool = False
    ) -> float:
        """Handle a batch in order and advance the offset past what was committed.

        Returns seconds to pause before the next fetch: an album at the end of the batch may
        still be arriving (its parts are left unconfirmed and fetched again), or an update
        failed and is retried after a backoff.
        """
        if not updates:
            return 0.0
        units = group_updates(updates)
        deferred: _Unit | None = None
        pause = 0.0
        last = units[-1]
        if not flush_albums and last.album is not None and len(updates) < 100:
            seen = self._album_seen.setdefault(last.album, time.monotonic())
            left = self.album_window - (time.monotonic() - seen)
            if left > 0:
                deferred, units, pause = last, units[:-1], left
        for unit in units:
            if not await self._handle_safely(unit):
                self.offset = unit.first  # everything before it is committed
                tries = self._failures.get(unit.first, 0) or self._db_down
                return min(2.0 ** max(tries, 1), 30.0)
            if unit.album is not None:
                self._album_seen.pop(unit.album, None)
        if deferred is not None:
            self.offset = deferred.first
        else:
            self.offset = max(u.update_id for u in updates) + 1
        return pause

    async def _handle_safely(self, unit: _Unit) -> bool:
        """Handle a unit; ``False`` means retry it later (nothing after it is confirmed).

        An update that keeps failing is skipped after a few tries so it cannot block the
        rest; a database outage is not the update's fault and never counts as a try.
        """
        try:
            await self.handle_unit(unit)
        except Exception as exc:
            if database_unavailable(exc):
                self._db_down += 1
                log.warning(
                    "database unavailable (%s); update %s stays unconfirmed", exc, unit.first
                )
                return False
            self._db_down = 0
            n = self._failures.get(unit.first, 0) + 1
            self._failures[unit.first] = n
            if n < MAX_HANDLE_ATTEMPTS:
                log.exception("update %s failed (attempt %s); will retry", unit.first, n)
                return False
            log.exception(
                "update %s failed %s times; skipping it: %s",
                unit.first,
                n,
                [u.model_dump_json(exclude_none=True)[:2000] for u in unit.updates],
            )
        self._db_down = 0
        self._failures.pop(unit.first, None)
        return True

    # ------------------------------------------------------------------ webhook

    async def webhook_handler(self, request: web.Request) -> web.Response:
        """``POST /telegram/webhook``: check the secret, commit the update, then answer 200."""
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            log.warning("webhook request with a wrong secret from %s", request.remote)
            return web.Response(status=401, text="unauthorized")
        if self._stopping.is_set():  # shutting down: Telegram re-sends it to the next process
            return web.Response(status=503, text="retry")
        try:
            data = await request.json()
            update = self.parse_update(data)
        except Exception:
            log.warning("webhook request with a malformed body")
            return web.Response(status=400, text="bad update")
        try:
            await self.ingest(update)
        except Exception as exc:
            if database_unavailable(exc):
                log.warning("database unavailable; webhook update %s refused", update.update_id)
                return web.Response(status=503, text="retry")
            log.exception("webhook update %s failed; Telegram will retry", update.update_id)
            return web.Response(status=500, text="retry")
        return web.Response(status=200, text="ok")

    async def ingest(self, update: Update) -> None:
        """Handle one pushed update; album parts wait (briefly) to be handled together."""
        msg = update.message
        if msg is None or not msg.media_group_id:
            await self.handle_unit(_Unit([update]))
            return
        key = (msg.chat.id, msg.media_group_id)
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _PendingAlbum(
                done=loop.create_future(), started=loop.time()
            )
        if all(u.update_id != update.update_id for u in pending.updates):
            pending.updates.append(update)
        if pending.timer is not None:
            pending.timer.cancel()
        # Debounce: flush a short while after the last part, but never later than 3 windows.
        delay = min(
            self.album_window, max(pending.started + 3 * self.album_window - loop.time(), 0)
        )
        pending.timer = loop.call_later(delay, self._flush_album, key)
        assert pending.done is not None
        await asyncio.shield(pending.done)

    def _flush_album(self, key: tuple[int, str]) -> None:
        pending = self._pending.pop(key, None)
        if pending is None or pending.done is None:
            return
        done = pending.done

        async def run() -> None:
            try:
                await self.handle_unit(_Unit(pending.updates, album=key))
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        task = asyncio.ensure_future(run())
        task.add_done_callback(lambda t: None)
        done.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)

    # ------------------------------------------------------------------ translation

    async def handle_unit(self, unit: _Unit) -> None:
        """Translate and handle one unit (an update, or an album)."""
        self._busy += 1
        try:
            u = unit.updates[0]
            if u.message is not None:
                await self._on_message([x.message for x in unit.updates if x.message], unit)
            elif u.edited_message is not None:
                await self._on_message([u.edited_message], unit, edited=True)
            elif u.callback_query is not None:
                await self._on_callback(u.callback_query, u.update_id)
            elif u.my_chat_member is not None:
                await self._on_membership(u.my_chat_member)
            else:
                log.info("ignoring update %s of type %s", u.update_id, _event_type(u))
        finally:
            self._busy -= 1
            for x in unit.updates:  # what validation stripped is needed only while handling
                self._stripped.pop(x.update_id, None)

    @staticmethod
    def _event_id(unit: _Unit, msgs: Sequence[Message]) -> str:
        if unit.album is not None:
            # Stable whichever update ids the parts had: a re-delivery is recognised.
            first = min(m.message_id for m in msgs)
            return f"g{unit.album[0]}:{unit.album[1]}:{first}"
        return f"u{unit.first}"

    async def _on_message(self, msgs: list[Message], unit: _Unit, *, edited: bool = False) -> None:
        if not msgs:
            return
        m = msgs[0]
        chat = m.chat
        for x in msgs:  # ids of the bot's shared sequence: bounds for in-doubt probes
            self._sender.observe_incoming(chat.id, x.message_id, x.date.timestamp())
        if chat.type == "private":
            await self._user_message(msgs, unit, edited=edited)
        elif chat.id in self.desk_chats:
            await self._desk_message(msgs, unit, edited=edited)
        elif chat.type in ("group", "supergroup"):
            await self._foreign_group(m)
        else:
            log.debug("ignoring a message in %s chat %s", chat.type, chat.id)

    @staticmethod
    def _user_ref(user: User) -> UserRef:
        return UserRef(
            channel=CHANNEL,
            user_id=str(user.id),
            display_name=user.full_name,
            username=user.username,
            language_code=user.language_code,
        )

    async def _user_message(self, msgs: list[Message], unit: _Unit, *, edited: bool) -> None:
        m = msgs[0]
        if m.from_user is None or m.from_user.is_bot:
            return
        base: dict[str, Any] = {
            "channel": CHANNEL,
            "event_id": self._event_id(unit, msgs),
            "user": self._user_ref(m.from_user),
            "chat_id": str(m.chat.id),
            "message_id": str(m.message_id),
        }
        text = next((x.text or x.caption for x in msgs if x.text or x.caption), None) or ""
        attachments = tuple(a for x in msgs for a in attachments_of(x))
        if edited:
            if not text:
                return  # an edited caption-less media message: nothing to relay
            await self.app.handle_user(UserEvent(kind="edit", text=text, **base))
            return
        command = parse_command(m) if m.text else None
        if command is not None:
            name, args = command
            ev = UserEvent(kind="command", command=name, args=args, text=text, **base)
        elif text or attachments:
            ev = UserEvent(kind="message", text=text, attachments=attachments, **base)
        else:
            what = unsupported_kind(m, self._stripped.pop(unit.first, set()))
            if what is None:
                log.debug("ignoring a service message in private chat %s", m.chat.id)
                return
            ev = UserEvent(kind="unsupported", unsupported=what, **base)
        await self.app.handle_user(ev)

    # ------------------------------------------------------------------ the desk

    def _is_member(self) -> bool:
        # With a consultant list the desk checks it; without one, the L2 group is the list.
        return not self.settings.consultants

    @staticmethod
    def thread_ref(m: Message) -> str | None:
        """The key of the ticket thread a desk message belongs to: its forum topic, else the
        message it replies to (the card or a relayed post), else its reply thread root."""
        if m.is_topic_message and m.message_thread_id:
            return str(m.message_thread_id)
        if m.reply_to_message is not None:
            return str(m.reply_to_message.message_id)
        if m.message_thread_id:
            return str(m.message_thread_id)
        return None

    async def _desk_message(self, msgs: list[Message], unit: _Unit, *, edited: bool) -> None:
        m = msgs[0]
        if m.from_user is None or m.from_user.is_bot:
            return  # other bots, channel posts and anonymous admins cannot act as consultants
        text = next((x.text or x.caption for x in msgs if x.text or x.caption), None) or ""
        attachments = tuple(a for x in msgs for a in attachments_of(x))
        action: AgentAction = "edit" if edited else "message"
        ticket: str | None = None
        value = ""
        command = parse_command(m) if m.text else None
        if command is not None:
            name, args = command
            if command_for_other_bot(m, self.username):
                return
            mapped = DESK_ACTIONS.get(name)
            if mapped is None or edited:
                return  # not ours, or an edited command: never relay it to a customer
            action = mapped
            words = args.split(maxsplit=1)
            if words and _TICKET_ARG.match(words[0]):
                ticket, args = words[0], words[1] if len(words) > 1 else ""
                words = args.split(maxsplit=1)
            if action == "priority":
                value = words[0] if words else ""
                args = words[1] if len(words) > 1 else ""
            text = args.strip()
        ref = self.thread_ref(m)
        if action in ("message", "edit") and ref is None:
            return  # chatter in the room, not in a ticket's thread
        root_ticket, root_is_bot = self._root(m)
        if action == "message" and not text and not attachments:
            return  # service messages (topic created, pinned...)
        ev = AgentEvent(
            channel=CHANNEL,
            event_id=self._event_id(unit, msgs),
            agent=self._user_ref(m.from_user),
            destination=f"{CHANNEL}:{m.chat.id}",
            action=action,
            ticket=ticket,
            thread_ref=ref,
            text=text,
            value=value,
            attachments=attachments,
            message_id=str(m.message_id),
            is_member=self._is_member(),
            root_ticket=root_ticket,
            root_is_bot=root_is_bot,
            reply_chain=not m.is_topic_message,
        )
        await self.app.handle_agent(ev)

    def _root(self, m: Message) -> tuple[str | None, bool]:
        """(ticket, posted by us) of the message a desk message replies to.

        A card carries its ticket in its signed buttons, so a reply to a card the database
        never recorded (a copy a crash left behind) still finds its ticket; a reply to any
        other message of ours that is no ticket's gets a "not delivered" answer."""
        root = m.reply_to_message
        if root is None or root.from_user is None or root.from_user.id != self.bot.id:
            return None, False
        rows = root.reply_markup.inline_keyboard if root.reply_markup is not None else []
        for row in rows:
            for button in row:
                data = button.callback_data or ""
                press = self.signer.verify(m.chat.id, data) if is_card_data(data) else None
                if press is not None:
                    return press.number, True
        return None, True

    async def _foreign_group(self, m: Message) -> None:
        """A group that is not a desk: stay quiet, except one pointer when addressed."""
        command = parse_command(m) if m.text else None
        if command is None or command_for_other_bot(m, self.username):
            return
        await self._note_group(m.chat, m.from_user.language_code if m.from_user else None)

    async def _note_group(self, chat: Chat, lang_code: str | None) -> None:
        if chat.id in self._noted_groups or not self.username:
            return
        self._noted_groups.add(chat.id)
        lang = pick_lang(lang_code)
        with contextlib.suppress(TelegramAPIError):
            await self.bot.send_message(
                chat.id, FOREIGN_GROUP_NOTE[lang].format(username=self.username), parse_mode=None
            )

    async def _on_membership(self, upd: ChatMemberUpdated) -> None:
        status = upd.new_chat_member.status
        chat = upd.chat
        log.info("bot membership in %s (%s) is now %s", chat.id, chat.type, status)
        if chat.id in self.desk_chats:
            self._sender.forget_chat(chat.id)
        elif chat.type in ("group", "supergroup") and status in ("member", "administrator"):
            await self._note_group(chat, upd.from_user.language_code)

    # ------------------------------------------------------------------ buttons

    async def _answer(self, cq: CallbackQuery, text: str | None, *, alert: bool = False) -> None:
        try:
            await self.bot.answer_callback_query(
                cq.id, text=(text or None) and text[:ALERT_LIMIT], show_alert=alert or None
            )
        except TelegramAPIError as e:  # too old, or answered by a previous run
            log.info("answerCallbackQuery failed: %s", e.message)

    async def _on_callback(self, cq: CallbackQuery, update_id: int) -> None:
        msg = cq.message
        data = cq.data or ""
        if msg is None:
            await self._answer(cq, None)  # inline-mode buttons: not ours
            return
        chat = msg.chat
        if chat.id in self.desk_chats:
            await self._desk_callback(cq, update_id, data)
        elif chat.type == "private":
            await self._user_callback(cq, update_id, data)
        else:
            await self._answer(cq, BAD_BUTTON[pick_lang(cq.from_user.language_code)])

    async def _user_callback(self, cq: CallbackQuery, update_id: int, data: str) -> None:
        msg = cq.message
        assert msg is not None
        ev = UserEvent(
            channel=CHANNEL,
            event_id=f"u{update_id}",
            user=self._user_ref(cq.from_user),
            chat_id=str(msg.chat.id),
            kind="button",
            data=data,
            message_id=str(msg.message_id),
        )
        result = await self.app.handle_user(ev)
        await self._answer(cq, None if result.duplicate else result.ack)
        # The engine has moved on either way (answered, or the button was stale): remove
        # the keyboard so no button that does nothing stays on screen.
        if isinstance(msg, Message) and msg.reply_markup is not None:
            with contextlib.suppress(TelegramAPIError):
                await self.bot.edit_message_reply_markup(
                    chat_id=msg.chat.id, message_id=msg.message_id, reply_markup=None
                )

    async def _desk_callback(self, cq: CallbackQuery, update_id: int, data: str) -> None:
        msg = cq.message
        assert msg is not None
        chat_id = msg.chat.id
        press = self.signer.verify(chat_id, data) if is_card_data(data) else None
        lang = self.app.desk.l2_lang
        if press is None:
            log.warning("refused a forged or foreign callback %r from %s", data, cq.from_user.id)
            await self._answer(cq, BAD_BUTTON[lang], alert=True)
            return
        if press.action in ("prio_menu", "prio_back"):
            await self._switch_keyboard(cq, press, lang)
            return
        ref: str | None = None
        if isinstance(msg, Message):
            ref = str(msg.message_thread_id) if msg.is_topic_message else str(msg.message_id)
        ev = AgentEvent(
            channel=CHANNEL,
            event_id=f"u{update_id}",
            agent=self._user_ref(cq.from_user),
            destination=f"{CHANNEL}:{chat_id}",
            action=press.action,  # type: ignore[arg-type]  # verified against ACTION_CODES
            ticket=press.number,
            thread_ref=ref,
            value=press.value,
            is_member=self._is_member(),
        )
        result = await self.app.handle_agent(ev)
        await self._answer(
            cq, None if result.duplicate else result.ack, alert=result.refused and bool(result.ack)
        )
        if press.action == "priority":
            await self._restore_keyboard(msg, press)

    async def _card_of(self, number: str) -> Any:
        """The current card of ticket ``number`` (read-only), or ``None``."""
        async with self.app.db.transaction() as s:
            n = self.app.desk.parse_number(number)
            if n is None:
                return None
            ticket = (
                await s.execute(select(Ticket).where(Ticket.number == n))
            ).scalar_one_or_none()
            if ticket is None:
                return None
            return await build_card(s, self.app.desk, ticket, self.app.clock.now())

    async def _switch_keyboard(self, cq: CallbackQuery, press: CardPress, lang: str) -> None:
        """Priority opens a second keyboard on the card; "back" restores the card's own."""
        msg = cq.message
        assert msg is not None
        if press.action == "prio_menu":
            card = await self._card_of(press.number)
            markup = priority_keyboard(
                press.number,
                card.priority if card is not None else None,
                self.signer,
                msg.chat.id,
                BACK.get(lang, BACK["en"]),
            )
            with contextlib.suppress(TelegramAPIError):
                await self.bot.edit_message_reply_markup(
                    chat_id=msg.chat.id, message_id=msg.message_id, reply_markup=markup
                )
        else:
            await self._restore_keyboard(msg, press)
        await self._answer(cq, None)

    async def _restore_keyboard(self, msg: Message | InaccessibleMessage, press: CardPress) -> None:
        card = await self._card_of(press.number)
        if card is None:
            return
        with contextlib.suppress(TelegramAPIError):
            await self.bot.edit_message_reply_markup(
                chat_id=msg.chat.id,
                message_id=msg.message_id,
                reply_markup=card_keyboard(card, self.signer, msg.chat.id),
            )


# ---------------------------------------------------------------------- message parsing


def _event_type(u: Update) -> str:
    """The update's kind for a log line (aiogram raises for a kind it does not know)."""
    try:
        return u.event_type
    except LookupError:
        return "unknown"


def parse_command(m: Message) -> tuple[str, str] | None:
    """``/take@bot FL-1 text`` -> ``("take", "FL-1 text")``; ``None`` if not a command."""
    text = m.text or ""
    if not text.startswith("/"):
        return None
    if m.entities and not any(e.type == "bot_command" and e.offset == 0 for e in m.entities):
        return None
    match = _COMMAND.match(text)
    if match is None:
        return None
    return match.group(1).lower(), match.group(3).strip()


def command_for_other_bot(m: Message, username: str | None) -> bool:
    """``/cmd@otherbot``: a command addressed to someone else in a group."""
    match = _COMMAND.match(m.text or "")
    if match is None or match.group(2) is None or username is None:
        return False
    return match.group(2).lower() != username.lower()


def attachments_of(m: Message) -> list[Attachment]:
    """The files of a message as attachments (the platform keeps the bytes)."""
    group = m.media_group_id
    out: list[Attachment] = []
    if m.photo:
        p = max(m.photo, key=lambda x: (x.width * x.height, x.file_size or 0))
        out.append(Attachment("photo", p.file_id, None, "image/jpeg", p.file_size, group, CHANNEL))
    for kind, obj in (
        ("document", m.document),
        ("video", m.video),
        ("audio", m.audio),
        ("voice", m.voice),
        ("animation", m.animation),
        ("video_note", m.video_note),
    ):
        if obj is None:
            continue
        name = getattr(obj, "file_name", None)
        mime = getattr(obj, "mime_type", None)
        if kind == "animation" and m.document is not None:
            continue  # an animation also fills ``document``; keep one
        out.append(Attachment(kind, obj.file_id, name, mime, obj.file_size, group, CHANNEL))
    return out


def unsupported_kind(m: Message, stripped: set[str] | None = None) -> str | None:
    """What a user sent that the bot cannot use (sticker, location...), or ``None`` for a
    service message (nothing the user wrote). ``stripped``: parts dropped at validation."""
    for attr, what in UNSUPPORTED_KINDS.items():
        if getattr(m, attr, None) is not None or attr in (stripped or ()):
            return what
    if stripped:
        return "other"
    return None
