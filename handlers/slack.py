"""The Slack channel: end users in DMs with the bot, the L2 desk in a channel (slack-bolt).

Translate in, hand to the app, translate out — nothing else lives here:

* DMs (``message.im``), the ``/support`` command and DM buttons become :class:`UserEvent`;
* thread replies, edits and card controls in the L2/L3 channels become :class:`AgentEvent`;
* ``app_home_opened`` publishes the user's open tickets (read-only);
* :class:`~handlers.slack_sender.SlackSender` delivers the outbox.

Intake is Socket Mode when ``SLACK_APP_TOKEN`` is set, else HTTP on ``POST /slack/events``
of the shared aiohttp server (bolt verifies the signing secret: 401 on a bad signature or
a stale timestamp). Each request is processed inline, inside an ack budget well under
Slack's 3 seconds, so the unit of work normally commits *before* Slack hears "200". If it
runs longer, the raw request is first parked in the inbox (:mod:`bot.inbox`, its own short
transaction), then acknowledged, and the work finishes in the background; a crash before it
commits is replayed from the inbox at the next start. Slack's re-deliveries carry the same
``event_id`` and are dropped by the core's processed-events table, so a retry (or a replay)
is handled once even across restarts and processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select

from bot import inbox
from bot.app import App
from bot.domain import (
    AgentAction,
    AgentEvent,
    Attachment,
    HandleResult,
    UserEvent,
    UserRef,
    pick_lang,
)
from bot.i18n import t
from bot.storage.errors import database_unavailable
from bot.storage.models import TicketMessage, User
from config.settings import Settings
from escalation.desk import destination_split
from handlers.slack_render import (
    CARD_ACTION_PREFIX,
    CARD_BLOCK_PREFIX,
    USER_BUTTON_PREFIX,
    Block,
    escape,
    fallback,
    mrkdwn,
    slack_to_plain,
    without_buttons,
)
from handlers.slack_sender import CHANNEL, SlackSender, outbox_mark

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_URL = "https://slack.com/api/"
ACK_BUDGET = 2.0  # seconds of inline work before we acknowledge anyway (Slack allows 3)
USER_CACHE_SECONDS = 600.0
MEMBERS_CACHE_SECONDS = 60.0
STOP_GRACE = 10.0  # seconds in-flight work may take at shutdown
NOT_NOW = {
    "en": "Sorry, I cannot take your request right now. Please try again in a minute.",
    "ru": "Извините, сейчас не получается принять обращение. Попробуйте через минуту.",
}
PARK_BUDGET = 0.8  # seconds to park a slow request in the inbox before the ack (3 s in all)
REPLAY_EVERY = 30.0  # seconds between looks for parked requests whose work failed
# Message subtypes that carry something a person wrote.
WRITTEN = frozenset({None, "file_share", "thread_broadcast", "me_message"})
USER_COMMANDS = frozenset({"start", "help", "new", "status", "cancel", "lang", "forget"})
CARD_ACTIONS: dict[str, AgentAction] = {
    "claim": "claim",
    "release": "release",
    "wait": "wait",
    "resolve": "resolve",
    "reopen": "reopen",
    "l3": "l3",
    "l3_back": "l3_back",
    "priority": "priority",
    "save_kb": "save_kb",
}
DELETED_MARK = {"en": "🗑 (deleted by the user)", "ru": "🗑 (удалено пользователем)"}
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_BARE_MENTION = re.compile(r"<@([UW][A-Z0-9]+)>")
MENTIONS_RESOLVED = 5  # users.info calls one message may cost


# Set while parked requests are replayed: they go first, so they do not wait for the replay.
_REPLAYING: ContextVar[bool] = ContextVar("slack_replaying", default=False)


@dataclass
class _ChatTurn:
    """The lock that keeps one chat's requests in arrival order, and how many want it."""

    lock: asyncio.Lock
    users: int = 0


def api_base_url(url: str | None) -> str:
    """The Web API base URL for the SDK: ``…/api/`` with a trailing slash."""
    if not url:
        return DEFAULT_API_URL
    parts = urlsplit(url.strip())
    path = parts.path if parts.path not in ("", "/") else "/api/"
    if not path.endswith("/"):
        path += "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def desk_channel_ids(settings: Settings) -> set[str]:
    """Slack channels where consultants work: L2, L3 and any ``slack:`` route."""
    ids = {c for c in (settings.slack.l2_channel, settings.slack.l3_channel) if c}
    esc = settings.escalation
    for dest in [*esc.routes.values(), esc.default_destination, esc.l3_destination]:
        if dest:
            channel, target = destination_split(dest)
            if channel == CHANNEL and target:
                ids.add(target)
    return ids


def file_attachment(f: dict[str, Any]) -> Attachment | None:
    """A Slack file object as a domain attachment (the bytes stay in Slack)."""
    if not f.get("id") or f.get("mode") in ("tombstone", "hidden_by_limit"):
        return None
    mime = str(f.get("mimetype") or "") or None
    major = (mime or "").split("/")[0]
    kind = {"image": "photo", "video": "video", "audio": "audio"}.get(major, "document")
    size = f.get("size")
    return Attachment(
        kind=kind,
        file_id=str(f["id"]),
        name=str(f.get("name") or f.get("title") or "") or None,
        mime=mime,
        size=int(size) if isinstance(size, int) else None,
        channel=CHANNEL,
    )


def _attachments(msg: dict[str, Any]) -> tuple[Attachment, ...]:
    found = (file_attachment(f) for f in msg.get("files") or [] if isinstance(f, dict))
    return tuple(a for a in found if a is not None)


class SlackChannel:
    """The Slack platform channel as :mod:`handlers.server` sees it."""

    name = CHANNEL

    def __init__(self, app: App, *, ack_budget: float = ACK_BUDGET) -> None:
        cfg = app.settings.slack
        if cfg.bot_token is None:
            raise ValueError("SLACK_BOT_TOKEN is not set")
        self.app = app
        self.ack_budget = ack_budget
        self.socket_mode = cfg.app_token is not None
        secret = cfg.signing_secret.get_secret_value() if cfg.signing_secret else ""
        if not self.socket_mode and not secret:
            raise ValueError(
                "Slack HTTP mode needs SLACK_SIGNING_SECRET "
                "(or set SLACK_APP_TOKEN for Socket Mode)"
            )
        self.base_url = api_base_url(cfg.api_url)
        self.client = AsyncWebClient(token=cfg.bot_token.get_secret_value(), base_url=self.base_url)
        # Bolt also reads SLACK_BOT_TOKEN from the environment and then warns that the
        # client we pass wins; that is the point (the client carries SLACK_API_URL).
        bolt_log = logging.getLogger("slack_bolt.AsyncApp")
        level = bolt_log.level
        bolt_log.setLevel(logging.ERROR)
        try:
            self.bolt = AsyncApp(
                name="firstline",
                client=self.client,
                signing_secret=secret,
                # Listeners run before the response; _bounded() keeps them inside the budget.
                process_before_response=True,
                request_verification_enabled=not self.socket_mode,
            )
        finally:
            bolt_log.setLevel(level)
        self._sender = SlackSender(self.client)
        self.desk_channels = desk_channel_ids(app.settings)
        self.consultants = frozenset(cfg.consultants)
        self.bot_user_id: str | None = None
        self._users: dict[str, tuple[float, UserRef]] = {}
        self._dms: dict[str, str] = {}
        self._members: dict[str, tuple[float, frozenset[str]]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._parked: set[str] = set()  # parked requests whose work still runs here
        self._stopping = False  # set by stop(): HTTP requests are refused from then on
        self._replayer: asyncio.Task[None] | None = None
        # Requests wait for the first replay of what a previous process parked (set then).
        self._replayed = asyncio.Event()
        self._turns: dict[str, _ChatTurn] = {}
        self._socket: AsyncSocketModeHandler | None = None
        self._connecting: asyncio.Task[None] | None = None
        for channel in self.desk_channels:
            if not _CHANNEL_ID.match(channel):
                log.warning(
                    "Slack desk channel %r does not look like a channel ID (C…/G…)", channel
                )
        self._register()

    # ------------------------------------------------------------------ the PlatformChannel port

    @property
    def sender(self) -> SlackSender:
        """Delivers the ``slack`` outbox rows."""
        return self._sender

    def mount(self, web_app: web.Application) -> None:
        """HTTP mode: Events API, interactivity and slash commands on ``POST /slack/events``."""
        if not self.socket_mode:
            web_app.router.add_post("/slack/events", self.handle_http)

    async def start(self) -> None:
        """Learn who we are; in Socket Mode open the WebSocket (reconnects on its own)."""
        try:
            auth = await self.client.auth_test()
            self.bot_user_id = auth.get("user_id")
            log.info(
                "Slack bot %s (%s) on team %s", auth.get("user"), self.bot_user_id, auth.get("team")
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Slack auth.test failed (%s); bolt retries on the first request", exc)
        # Requests a previous process acknowledged but did not finish: now, then now and then.
        self._replayer = asyncio.create_task(self._replay_loop(), name="slack-inbox")
        if self.socket_mode:
            token = self.app.settings.slack.app_token
            assert token is not None
            self._socket = AsyncSocketModeHandler(
                self.bolt, app_token=token.get_secret_value(), web_client=self.client
            )
            # connect() retries until Slack answers; never hold up the other channels for it.
            self._connecting = asyncio.create_task(self._connect(), name="slack-socket-mode")

    async def _connect(self) -> None:
        assert self._socket is not None
        await self._socket.connect_async()  # type: ignore[no-untyped-call]
        log.info("Slack Socket Mode connected")

    async def stop(self) -> None:
        """Close the socket, then let in-flight work finish (bounded). HTTP requests from
        now on get 503: Slack retries events later (the next process takes them)."""
        self._stopping = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
        if self._socket is not None:
            try:
                await self._socket.close_async()  # type: ignore[no-untyped-call]
            except Exception:  # closing a half-open socket must not stop the shutdown
                log.exception("closing Slack Socket Mode failed")
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)

    async def wait_idle(self) -> None:
        """Wait (bounded) for background work: late units of work, button clean-ups."""
        while self._tasks:
            done, _ = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
            if not done:
                break

    async def handle_http(self, request: web.Request) -> web.Response:
        """One Slack HTTP request through bolt (verification, routing, ack)."""
        if self._stopping:
            return web.Response(status=503, text="shutting down", headers={"Retry-After": "5"})
        try:
            bolt_req = await to_bolt_request(request)
        except (ValueError, TypeError, AttributeError, KeyError):
            return web.Response(status=400, text="malformed request")
        if not isinstance(bolt_req.body, dict):
            return web.Response(status=400, text="malformed request")
        if not _well_formed(bolt_req.body):
            # bolt's middleware would crash on it: a 500, and Slack would retry in vain.
            return web.Response(status=400, text="malformed request")
        bolt_resp = await self.bolt.async_dispatch(bolt_req)
        return await to_aiohttp_response(bolt_resp)

    # ------------------------------------------------------------------ routing

    def _register(self) -> None:
        b = self.bolt
        b.event("message")(self._on_message)
        b.event("app_home_opened")(self._on_home)
        b.event(re.compile(".*"))(self._on_other_event)  # ack the rest: no 404, no retries
        b.action(re.compile("^" + re.escape(USER_BUTTON_PREFIX)))(self._on_user_button)
        b.action(re.compile("^" + re.escape(CARD_ACTION_PREFIX)))(self._on_card_action)
        b.action(re.compile(".*"))(self._ack_only)
        b.command(re.compile(".*"))(self._on_command)
        b.view(re.compile(".*"))(self._ack_only)
        b.shortcut(re.compile(".*"))(self._ack_only)
        b.options(re.compile(".*"))(self._ack_options)

    async def _ack_only(self, ack: Callable[..., Awaitable[Any]]) -> None:
        await ack()

    async def _ack_options(self, ack: Callable[..., Awaitable[Any]]) -> None:
        await ack(options=[])

    async def _on_other_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("member_joined_channel", "member_left_channel"):
            self._members.pop(str(event.get("channel", "")), None)
        log.debug("Slack event %s ignored", kind)

    # ------------------------------------------------------------------ running work

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Awaitable[Any], what: str) -> None:
        """Fire-and-forget work that only touches Slack's UI (losing it loses nothing)."""
        task = asyncio.ensure_future(coro)
        self._track(task)

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.warning("Slack %s failed: %s", what, f.exception())

        task.add_done_callback(done)

    async def _bounded(
        self,
        coro: Awaitable[T],
        what: str,
        park: tuple[str, str, dict[str, Any]] | None = None,
    ) -> T | None:
        """Run ``coro`` inline up to the ack budget; past it, finish in the background.

        With ``park`` (kind, event id, raw request) a request that overruns the budget is
        parked in the inbox before the acknowledgement, so Slack never hears "200" for work
        that is not durable yet; if even parking fails, the ack waits for the work (an event
        is then delivered again by Slack, and its event id makes that a no-op if it
        committed meanwhile)."""
        task = asyncio.ensure_future(coro)
        self._track(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.ack_budget)
        except TimeoutError:
            pass
        if park is not None:
            kind, event_id, body = park
            self._parked.add(event_id)  # running here: the replay leaves it alone
            self._when_done(task, what, event_id)
            try:
                await asyncio.wait_for(
                    inbox.park(self.app.db, CHANNEL, event_id, kind, body, self.app.clock.now()),
                    PARK_BUDGET,
                )
            except Exception as exc:  # the database is busy or down: no early ack
                log.warning("could not park Slack %s (%r): acknowledging it when done", what, exc)
                return await asyncio.shield(task)
        else:
            self._when_done(task, what, None)
        log.warning(
            "Slack %s still running after %.1fs: parked and acknowledged", what, self.ack_budget
        )
        return None

    def _when_done(self, task: asyncio.Future[Any], what: str, parked: str | None) -> None:
        """After slow work: unpark its request if it finished, log it if it failed (a failed
        one stays parked and is replayed later)."""

        def done(f: asyncio.Future[Any]) -> None:
            if parked is not None:
                self._parked.discard(parked)
            if f.cancelled() or f.exception() is not None:
                log.error(
                    "Slack %s failed after the ack", what,
                    exc_info=None if f.cancelled() else f.exception(),
                )
                return
            if parked is not None:
                self._spawn(inbox.unpark(self.app.db, CHANNEL, parked), "inbox clean-up")

        task.add_done_callback(done)

    async def _replay_loop(self) -> None:
        while True:
            try:
                await self.replay_parked()
            except Exception:  # the database may be down; the next round retries
                log.exception("replaying parked Slack requests failed")
            finally:
                self._replayed.set()
            await asyncio.sleep(REPLAY_EVERY)

    @contextlib.asynccontextmanager
    async def _in_order(self, chat: str) -> AsyncIterator[None]:
        """One request of a chat at a time, in arrival order, after whatever a previous
        process parked: a request that overran the ack budget (parked, acknowledged) is
        never overtaken by the user's next one, in this process or after a restart."""
        if not _REPLAYING.get():
            await self._replayed.wait()
        turn = self._turns.setdefault(chat, _ChatTurn(asyncio.Lock()))
        turn.users += 1
        try:
            async with turn.lock:  # asyncio.Lock wakes its waiters first come, first served
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                self._turns.pop(chat, None)

    async def replay_parked(self) -> int:
        """Run the parked requests whose work is not running here (a previous process was
        killed after acknowledging them, or the work failed) and that are due (a failed
        replay waits longer each time; see ``bot.inbox``); the number replayed."""
        done = 0
        token = _REPLAYING.set(True)
        try:
            rows = await inbox.parked(self.app.db, CHANNEL, now=self.app.clock.now())
        finally:
            _REPLAYING.reset(token)
        for row in rows:
            if row.event_id in self._parked:
                continue
            token = _REPLAYING.set(True)
            try:
                await self._replay(row.kind, row.event_id, row.body)
            except Exception:
                log.exception("replaying parked Slack %s %s failed", row.kind, row.event_id)
                await inbox.replay_failed(self.app.db, row.id)
                continue
            finally:
                _REPLAYING.reset(token)
            await inbox.unpark(self.app.db, CHANNEL, row.event_id)
            log.info("replayed parked Slack %s %s", row.kind, row.event_id)
            done += 1
        return done

    async def _replay(self, kind: str, event_id: str, body: dict[str, Any]) -> None:
        if kind == "message":
            await self._message(body["event"], event_id)
        elif kind == "button":
            await self._user_button(body["body"], body["action"])
        elif kind == "card":
            await self._card_action(body["body"], body["action"], None)
        elif kind == "command":
            await self._command(body["command"], event_id)
        else:
            log.warning("parked Slack request %s of unknown kind %r dropped", event_id, kind)

    # ------------------------------------------------------------------ identities

    async def user_ref(self, user_id: str, name_hint: str = "") -> UserRef:
        """Who ``user_id`` is (``users.info``, cached); degrades to the bare id."""
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            resp = await self.client.users_info(user=user_id, include_locale=True)
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.info("users.info %s failed: %s", user_id, exc)
            # An empty name leaves the stored one alone (the core only updates on a value).
            return UserRef(CHANNEL, user_id, display_name=name_hint)
        u: dict[str, Any] = resp.get("user") or {}
        profile: dict[str, Any] = u.get("profile") or {}
        ref = UserRef(
            CHANNEL,
            user_id,
            display_name=str(
                profile.get("display_name")
                or profile.get("real_name")
                or u.get("real_name")
                or u.get("name")
                or name_hint
            ),
            username=u.get("name") or None,
            language_code=u.get("locale") or None,
        )
        self._users[user_id] = (now + USER_CACHE_SECONDS, ref)
        return ref

    async def dm_channel(self, user_id: str) -> str:
        """The bot's DM with ``user_id`` (``conversations.open``, cached): the user's chat key."""
        cached = self._dms.get(user_id)
        if cached:
            return cached
        resp = await self.client.conversations_open(users=user_id)
        channel = str((resp.get("channel") or {}).get("id") or "")
        if not channel:
            raise RuntimeError(f"conversations.open gave no channel for {user_id}")
        self._dms[user_id] = channel
        return channel

    async def _channel_members(self, channel: str) -> frozenset[str] | None:
        now = time.monotonic()
        cached = self._members.get(channel)
        if cached is not None and cached[0] > now:
            return cached[1]
        members: set[str] = set()
        cursor: str | None = None
        try:
            while True:
                resp = await self.client.conversations_members(
                    channel=channel, limit=1000, cursor=cursor
                )
                members.update(str(m) for m in resp.get("members") or [])
                cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.error(
                "conversations.members %s failed (%s): card clicks are refused until it works "
                "(scopes channels:read, groups:read) or SLACK consultants are listed",
                channel,
                exc,
            )
            return None
        frozen = frozenset(members)
        self._members[channel] = (now + MEMBERS_CACHE_SECONDS, frozen)
        return frozen

    async def _vouch_clicker(self, channel: str, user_id: str) -> bool:
        """Card clicks: with a consultants list the desk decides; else channel members act.

        A public channel's card can be seen (and clicked) by anyone in the workspace from a
        preview or a link, so membership is checked rather than assumed.
        """
        if self.consultants or not channel:
            return False
        members = await self._channel_members(channel)
        return members is not None and user_id in members

    def _from_bot(self, event: dict[str, Any], context: AsyncBoltContext) -> bool:
        """Our own echoes and other bots' messages, also inside edits and deletions.

        Bolt's IgnoringSelfEvents drops our plain posts, but an edit event (our card's
        ``chat.update``) carries the bot only in the nested message.
        """
        me = {context.bot_user_id, self.bot_user_id} - {None}
        nested = {"message_changed": "message", "message_deleted": "previous_message"}
        inner = event.get(nested.get(str(event.get("subtype")), "")) or {}
        return any(
            msg.get("bot_id") or msg.get("subtype") == "bot_message" or msg.get("user") in me
            for msg in (event, inner)
        )

    async def plain(self, text: str) -> str:
        """Slack text -> plain text, with bare user mentions shown by name."""
        for uid in list(dict.fromkeys(_BARE_MENTION.findall(text)))[:MENTIONS_RESOLVED]:
            ref = await self.user_ref(uid)
            name = re.sub(r"[|<>]", "", ref.display_name)
            if name:
                text = text.replace(f"<@{uid}>", f"<@{uid}|{name}>")
        return slack_to_plain(text)

    # ------------------------------------------------------------------ messages

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        if self._from_bot(event, context):
            return
        channel = str(event.get("channel") or "")
        event_id = str(
            body.get("event_id") or f"{channel}:{event.get('event_ts') or event.get('ts')}"
        )
        if event.get("channel_type") == "im" or channel in self.desk_channels:
            await self._bounded(
                self._message(event, event_id),
                f"message {event_id}",
                ("message", event_id, {"event": event, "user": event.get("user")}),
            )

    async def _message(self, event: dict[str, Any], event_id: str) -> None:
        """Translate and handle one message event (inside the ack budget), in its chat's
        order."""
        async with self._in_order(str(event.get("channel") or "")):
            await self._message_now(event, event_id)

    async def _message_now(self, event: dict[str, Any], event_id: str) -> None:
        if event.get("channel_type") == "im":
            user_ev = await self._user_message(event, event_id)
            if user_ev is not None:
                await self.app.handle_user(user_ev)
            return
        agent_ev = await self._agent_message(event, event_id)
        if agent_ev is not None:
            await self.app.handle_agent(agent_ev)

    async def _user_message(self, event: dict[str, Any], event_id: str) -> UserEvent | None:
        subtype = event.get("subtype")
        if not event.get("channel"):
            return None  # malformed: nowhere to answer
        channel = str(event["channel"])
        if subtype in WRITTEN:
            if not event.get("user"):
                return None
            return UserEvent(
                CHANNEL,
                event_id,
                await self.user_ref(str(event["user"])),
                channel,
                "message",
                text=await self.plain(str(event.get("text") or "")),
                attachments=_attachments(event),
                message_id=str(event.get("ts") or "") or None,
            )
        if subtype == "message_changed":
            msg: dict[str, Any] = event.get("message") or {}
            prev: dict[str, Any] = event.get("previous_message") or {}
            if not msg.get("user") or msg.get("text") == prev.get("text"):
                return None  # an unfurl or a file change, not new words
            return UserEvent(
                CHANNEL,
                event_id,
                await self.user_ref(str(msg["user"])),
                channel,
                "edit",
                text=await self.plain(str(msg.get("text") or "")),
                message_id=str(msg.get("ts") or "") or None,
            )
        if subtype == "message_deleted":
            return await self._user_deletion(event, event_id)
        log.debug("DM message subtype %s ignored", subtype)
        return None

    async def _user_deletion(self, event: dict[str, Any], event_id: str) -> UserEvent | None:
        """A deleted DM: L2 learns of it only if the message was relayed to a ticket."""
        prev: dict[str, Any] = event.get("previous_message") or {}
        ts = str(event.get("deleted_ts") or prev.get("ts") or "")
        user_id = str(prev.get("user") or "")
        if not ts or not user_id:
            return None
        async with self.app.db.transaction() as s:
            relayed = (
                await s.execute(
                    select(TicketMessage.id)
                    .where(
                        TicketMessage.source_channel == CHANNEL,
                        TicketMessage.source_message_id == ts,
                        TicketMessage.direction == "in",
                    )
                    .limit(1)
                )
            ).scalar_one_or_none()
        if relayed is None:
            log.info("DM message %s deleted before it reached a ticket: ignored", ts)
            return None
        # The core has no "deleted" event: an edit to a marker is the closest honest thing.
        mark = DELETED_MARK.get(self.app.desk.l2_lang, DELETED_MARK["en"])
        return UserEvent(
            CHANNEL,
            event_id,
            await self.user_ref(user_id),
            str(event["channel"]),
            "edit",
            text=mark,
            message_id=ts,
        )

    async def _agent_message(self, event: dict[str, Any], event_id: str) -> AgentEvent | None:
        subtype = event.get("subtype")
        if not event.get("channel"):
            return None  # malformed: nowhere to answer
        channel = str(event["channel"])
        msg: dict[str, Any] = event
        action: AgentAction = "message"
        if subtype == "message_changed":
            msg = event.get("message") or {}
            prev: dict[str, Any] = event.get("previous_message") or {}
            if msg.get("text") == prev.get("text"):
                return None
            action = "edit"
        elif subtype == "message_deleted":
            log.info(
                "L2 message %s deleted in %s: the user keeps what they got",
                event.get("deleted_ts"),
                channel,
            )
            return None
        elif subtype not in WRITTEN:
            return None
        thread = msg.get("thread_ts")
        if not msg.get("user") or not thread or thread == msg.get("ts"):
            return None  # channel chatter, not a reply under a ticket card
        root_ticket, root_is_bot = await self._thread_root(channel, str(thread), msg)
        return AgentEvent(
            CHANNEL,
            event_id,
            await self.user_ref(str(msg["user"])),
            f"{CHANNEL}:{channel}",
            action,
            thread_ref=str(thread),
            text=await self.plain(str(msg.get("text") or "")),
            attachments=_attachments(msg),
            message_id=str(msg.get("ts") or "") or None,
            # Only members can post in a channel; with a consultants list the desk decides.
            is_member=not self.consultants,
            root_ticket=root_ticket,
            root_is_bot=root_is_bot,
        )

    async def _thread_root(
        self, channel: str, thread: str, msg: dict[str, Any]
    ) -> tuple[str | None, bool]:
        """(ticket, posted by us) of the root of a thread the desk does not know.

        Known threads (the usual case) cost one indexed read. Otherwise, unless the event's
        ``parent_user_id`` says a person started the thread (chatter), the root is read with
        its metadata: our cards carry their ticket number there (and in the block id of
        their controls), so a reply under a card the database never recorded still finds
        its ticket."""
        if await self.app.desk.knows_thread(CHANNEL, f"{CHANNEL}:{channel}", thread):
            return None, False
        me = {self.bot_user_id} - {None}
        parent = msg.get("parent_user_id")
        if parent is not None and parent not in me:
            return None, False
        try:
            resp = await self.client.conversations_replies(
                channel=channel, ts=thread, limit=1, include_all_metadata=True
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot read the root of thread %s in %s: %s", thread, channel, exc)
            return None, parent is not None  # parent_user_id said it is ours
        root = next((m for m in resp.get("messages") or [] if m.get("ts") == thread), None)
        if root is None:
            return None, parent is not None
        mark = outbox_mark(root)
        ours = mark is not None or (bool(me) and root.get("user") in me)
        if not ours:
            return None, False
        if mark is not None and mark.get("ticket"):
            return str(mark["ticket"]), True
        for block in root.get("blocks") or []:
            block_id = str(block.get("block_id") or "")
            if block_id.startswith(CARD_BLOCK_PREFIX):
                return block_id[len(CARD_BLOCK_PREFIX) :], True
        return None, True

    # ------------------------------------------------------------------ interactivity

    async def _on_user_button(
        self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]
    ) -> None:
        await self._bounded(
            self._user_button(body, action),
            "button",
            (
                "button",
                _press_id("btn", body, action),
                {"body": body, "action": action, "user": _actor(body)},
            ),
        )
        await ack()

    async def _user_button(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        async with self._in_order(str((body.get("channel") or {}).get("id") or "")):
            await self._user_button_now(body, action)

    async def _user_button_now(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        user_id = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        if not user_id or not channel:
            return  # a button outside a conversation (App Home): nothing to continue
        ev = UserEvent(
            CHANNEL,
            _press_id("btn", body, action),
            await self.user_ref(user_id),
            channel,
            "button",
            data=str(action.get("value") or ""),
        )
        result = await self.app.handle_user(ev)
        message: dict[str, Any] = body.get("message") or {}
        ts = message.get("ts") or (body.get("container") or {}).get("message_ts")
        label = str((action.get("text") or {}).get("text") or "")
        self._spawn(
            self._after_press(channel, user_id, ts, message, label, result), "button cleanup"
        )

    async def _after_press(
        self,
        channel: str,
        user_id: str,
        ts: str | None,
        message: dict[str, Any],
        label: str,
        result: HandleResult | None,
    ) -> None:
        """Buttons are one-shot: replace them with the choice; say so if it was stale."""
        if ts:
            blocks: list[Block] = list(message.get("blocks") or [])
            await self.client.chat_update(
                channel=channel,
                ts=ts,
                text=str(message.get("text") or " "),
                blocks=without_buttons(blocks, label),
            )
        if result is not None and result.refused and result.ack:
            await self.client.chat_postEphemeral(
                channel=channel, user=user_id, text=fallback(escape(result.ack))
            )

    async def _on_card_action(
        self,
        ack: Callable[..., Awaitable[Any]],
        body: dict[str, Any],
        action: dict[str, Any],
        respond: Callable[..., Awaitable[Any]] | None,
    ) -> None:
        await self._bounded(
            self._card_action(body, action, respond),
            "card action",
            (
                "card",
                _press_id("act", body, action),
                {"body": body, "action": action, "user": _actor(body)},
            ),
        )
        await ack()

    async def _card_action(
        self,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: Callable[..., Awaitable[Any]] | None,
    ) -> None:
        async with self._in_order(str((body.get("channel") or {}).get("id") or "")):
            await self._card_action_now(body, action, respond)

    async def _card_action_now(
        self,
        body: dict[str, Any],
        action: dict[str, Any],
        respond: Callable[..., Awaitable[Any]] | None,
    ) -> None:
        name = str(action.get("action_id", ""))[len(CARD_ACTION_PREFIX) :]
        verb = CARD_ACTIONS.get(name)
        user: dict[str, Any] = body.get("user") or {}
        user_id = str(user.get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        if verb is None or not user_id or not channel:
            return
        block_id = str(action.get("block_id") or "")
        number = (
            block_id[len(CARD_BLOCK_PREFIX) :] if block_id.startswith(CARD_BLOCK_PREFIX) else ""
        )
        message_ts = (body.get("container") or {}).get("message_ts") or (
            body.get("message") or {}
        ).get("ts")
        value = ""
        if verb == "priority":
            value = str((action.get("selected_option") or {}).get("value") or "")
        is_member = await self._vouch_clicker(channel, user_id)
        ev = AgentEvent(
            CHANNEL,
            _press_id("act", body, action),
            await self.user_ref(user_id, str(user.get("name") or "")),
            f"{CHANNEL}:{channel}",
            verb,
            ticket=number or None,
            # Without a number the card's ts finds the ticket; with one, leaving thread_ref
            # empty puts the desk's ephemeral answer in the channel where the click happened.
            thread_ref=None if number else (str(message_ts) if message_ts else None),
            value=value,
            is_member=is_member,
        )
        result = await self.app.handle_agent(ev)
        if result.refused and respond is not None and not self.consultants and not is_member:
            # A non-member cannot receive chat.postEphemeral in the channel: answer the click.
            self._spawn(
                respond(
                    text=result.ack or "",
                    response_type="ephemeral",
                    replace_original=False,
                ),
                "refusal",
            )

    async def _on_command(
        self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any]
    ) -> None:
        event_id = f"cmd:{command.get('trigger_id') or time.time_ns()}"
        # Slack never re-sends a slash command: what cannot be handled now is said to the user.
        refusal = await self._bounded(
            self._command(command, event_id),
            f"command {command.get('command')}",
            ("command", event_id, {"command": command, "user": command.get("user_id")}),
        )
        if refusal:
            await ack(text=refusal)
        else:
            await ack()

    async def _command(self, command: dict[str, Any], event_id: str) -> str | None:
        """``/support [text]``: start, continue, or run a sub-command in the user's DM.

        Returns a text for the user when the command could not be taken on (shown in reply
        to the command itself, since there is no DM to answer in)."""
        user_id = str(command.get("user_id") or "")
        text = (await self.plain(str(command.get("text") or ""))).strip()
        try:
            chat = await self.dm_channel(user_id)
        except (SlackApiError, aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            log.error("cannot open a DM with %s for %s: %s", user_id, command.get("command"), exc)
            ref = await self.user_ref(user_id, str(command.get("user_name") or ""))
            return NOT_NOW[pick_lang(ref.language_code)]
        async with self._in_order(chat):
            try:
                await self._command_in(command, event_id, user_id, chat, text)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                ref = await self.user_ref(user_id, str(command.get("user_name") or ""))
                return NOT_NOW[pick_lang(ref.language_code)]
        return None

    async def _command_in(
        self, command: dict[str, Any], event_id: str, user_id: str, chat: str, text: str
    ) -> None:
        word, _, rest = text.partition(" ")
        ref = await self.user_ref(user_id, str(command.get("user_name") or ""))
        if not text:
            ev = UserEvent(CHANNEL, event_id, ref, chat, "command", command="start")
        elif word.lower().lstrip("/") in USER_COMMANDS:
            ev = UserEvent(
                CHANNEL, event_id, ref, chat, "command", command=word.lower().lstrip("/"), args=rest
            )
        else:
            ev = UserEvent(CHANNEL, event_id, ref, chat, "message", text=text)
        await self.app.handle_user(ev)

    # ------------------------------------------------------------------ App Home

    async def _on_home(self, event: dict[str, Any]) -> None:
        if event.get("tab") != "home" or not event.get("user"):
            return
        self._spawn(self.publish_home(str(event["user"])), "views.publish")

    async def publish_home(self, user_id: str) -> None:
        """Publish the Home tab: the user's open and recently resolved tickets."""
        view = await self.home_view(user_id)
        await self.client.views_publish(user_id=user_id, view=view)

    async def home_view(self, user_id: str) -> dict[str, Any]:
        """The Home tab view, read from the database (nothing is written)."""
        desk = self.app.desk
        default = self.app.settings.dialog.default_language
        lines: list[Block] = []
        async with self.app.db.transaction() as s:
            user = (
                await s.execute(
                    select(User).where(User.channel == CHANNEL, User.external_id == user_id)
                )
            ).scalar_one_or_none()
            lang = (
                (user.language or pick_lang(user.platform_language, default)) if user else default
            )
            tickets = await desk.user_tickets(s, user.id) if user is not None else []
            for tk in tickets:
                line = t(
                    "status_line",
                    lang,
                    number=desk.number(tk),
                    status=t(f"status_{tk.status}", lang),
                    subject=tk.subject[:150],
                )
                eta = desk.eta_text(tk, lang)
                lines.append({"type": "section", "text": mrkdwn(escape(line))})
                if eta:
                    lines.append({"type": "context", "elements": [mrkdwn(escape(eta))]})
        head = t("status_head", lang) if tickets else t("status_none", lang)
        blocks: list[Block] = [{"type": "section", "text": mrkdwn(f"*{escape(head)}*")}]
        if lines:
            blocks += [{"type": "divider"}, *lines[:45]]
        blocks += [{"type": "context", "elements": [mrkdwn(escape(t("help", lang)))]}]
        return {"type": "home", "blocks": blocks}


def _actor(body: dict[str, Any]) -> str:
    """The Slack user id of whoever pressed a button ("" when absent)."""
    return str((body.get("user") or {}).get("id") or "")


def _press_id(prefix: str, body: dict[str, Any], action: dict[str, Any]) -> str:
    """The event id of a button press: the same on every delivery and replay of it."""
    return f"{prefix}:{_actor(body)}:{action.get('action_ts') or body.get('trigger_id')}"


_OBJECT_FIELDS = ("view", "message", "container", "state", "event")
_OBJECT_OR_ID_FIELDS = ("user", "team", "channel", "enterprise")
_LIST_FIELDS = ("actions", "authorizations")


def _well_formed(body: dict[str, Any]) -> bool:
    """Signed but malformed bodies (not what Slack sends) are refused before bolt sees them:
    the objects bolt reads must be objects, the lists lists of objects."""
    for key in _OBJECT_FIELDS:
        if key in body and not isinstance(body[key], dict):
            return False
    for key in _OBJECT_OR_ID_FIELDS:
        if key in body and not isinstance(body[key], dict | str):
            return False
    if body.get("type") == "block_actions" and not body.get("actions"):
        return False
    for key in _LIST_FIELDS:
        value = body.get(key)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(x, dict) for x in value)
        ):
            return False
    return True
