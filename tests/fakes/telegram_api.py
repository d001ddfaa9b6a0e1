"""A fake Telegram Bot API server on 127.0.0.1 that speaks the real HTTP protocol.

* Serves ``/bot<token>/<method>`` with JSON, urlencoded and multipart bodies (aiogram sends
  the latter two), answers ``{"ok": ..., "result": ...}`` like Telegram, records every call.
* Keeps chats, messages, forum topics, callback queries and file ids. Message ids are
  Telegram's: one sequence per supergroup, and one shared by every private chat and basic
  group of the bot's account (so a private chat's ids have gaps). Topic creation and edits
  post service messages (they take an id and cannot be edited). An edit answers like the Bot
  API: the same content and buttons -> ``message is not modified``; a missing or deleted id
  -> ``message to edit not found``; someone else's or a service message -> ``message can't
  be edited``; ``editMessageText`` of a media message -> ``there is no text in the message
  to edit``; any other message of the bot is edited. It
  fails like Telegram does: ``chat not found``, ``message to edit not found``,
  ``message is not modified``, ``message thread not found``, ``TOPIC_CLOSED``,
  ``BUTTON_DATA_INVALID``, ``can't parse entities`` (strict HTML: only Telegram's tags, every
  ``<``, ``>`` and ``&`` escaped), ``message is too long``, ``wrong file identifier``, 403 for a
  user who blocked the bot.
* ``getUpdates`` long-polls a queue that tests fill (``send_text``, ``press``, ``send_album``…);
  the offset a client sends confirms everything before it (:attr:`confirmed`). A webhook set
  with ``setWebhook`` makes ``getUpdates`` answer 409, and :meth:`push` POSTs an update to it.
* Fault injection: :meth:`fail_next` makes the next call(s) of a method return 429 with
  ``retry_after``, 403, 400 with a description, or 5xx; :meth:`break_next` makes them time out
  (no answer ever comes) or lose the connection (a TCP reset) before Telegram acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import unescape
from typing import Any

import aiohttp
from aiohttp import web

BOT_ID = 777000111
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
# Parameters that are plain strings even when they look like JSON ("123", "true").
STRING_FIELDS = {
    "text",
    "caption",
    "name",
    "url",
    "secret_token",
    "callback_query_id",
    "language_code",
    "parse_mode",
    "description",
    "short_description",
    "photo",
    "document",
    "video",
    "voice",
    "audio",
    "animation",
    "video_note",
    "sticker",
    "title",
    "action",
    "icon_custom_emoji_id",
}
MEDIA_METHODS = {
    "sendphoto": "photo",
    "senddocument": "document",
    "sendvideo": "video",
    "sendvoice": "voice",
    "sendaudio": "audio",
    "sendanimation": "animation",
    "sendvideonote": "video_note",
}
ALLOWED_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "span",
    "tg-spoiler",
    "blockquote",
    "tg-emoji",
}
_TOKEN = re.compile(
    r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z-]+\s*=\s*\"[^\"]*\")*)\s*>"
    r"|&(?:lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);"
)


class ApiError(Exception):
    """A Bot API error answer."""

    def __init__(self, status: int, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after


def parse_html(text: str) -> str:
    """Telegram's HTML rules, strictly: the visible text, or :class:`ApiError` (400)."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        chunk = text[pos : m.start()]
        for bad in ("<", ">", "&"):
            at = chunk.find(bad)
            if at != -1:
                raise ApiError(
                    400,
                    f"Bad Request: can't parse entities: unescaped {bad!r} at byte offset "
                    f"{len(text[: pos + at].encode())}",
                )
        out.append(chunk)
        pos = m.end()
        token = m.group(0)
        if token.startswith("&"):
            out.append(unescape(token))
            continue
        closing, tag = m.group(1) == "/", m.group(2).lower()
        if tag not in ALLOWED_TAGS:
            raise ApiError(
                400, f'Bad Request: can\'t parse entities: Unsupported start tag "{tag}"'
            )
        if closing:
            if not stack or stack[-1] != tag:
                raise ApiError(
                    400, f'Bad Request: can\'t parse entities: Unexpected end tag "{tag}"'
                )
            stack.pop()
        else:
            stack.append(tag)
    tail = text[pos:]
    for bad in ("<", ">", "&"):
        if bad in tail:
            raise ApiError(400, f"Bad Request: can't parse entities: unescaped {bad!r}")
    out.append(tail)
    if stack:
        raise ApiError(400, f"Bad Request: can't parse entities: Can't find end tag {stack[-1]!r}")
    return "".join(out)


def utf16(text: str) -> int:
    """Telegram's length of a text."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    """One recorded Bot API call."""

    method: str
    params: dict[str, Any]
    status: int = 200
    result: Any = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    """A queued failure."""

    method: str
    status: int
    description: str
    retry_after: float | None = None
    chat_id: int | None = None
    times: int | None = 1  # None: until cleared
    network: str | None = None  # "timeout" or "reset": no HTTP answer at all


class _Broken(Exception):
    """A network fault to act out instead of answering."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


@dataclass
class Hold:
    """A call kept waiting until the test releases it: a slow platform."""

    method: str
    chat_id: int | None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class FakeChat:
    """A chat the fake knows."""

    id: int
    type: str
    title: str | None = None
    first_name: str | None = None
    username: str | None = None
    is_forum: bool = False
    blocked: bool = False  # a user who blocked the bot: 403

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.title:
            d["title"] = self.title
        if self.first_name:
            d["first_name"] = self.first_name
        if self.username:
            d["username"] = self.username
        if self.is_forum:
            d["is_forum"] = True
        return d


@dataclass
class FakeUser:
    """A Telegram account."""

    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = "en"
    is_bot: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        for k in ("last_name", "username", "language_code"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        return d


@dataclass
class FakeMessage:
    """A message in a chat (sent by the bot or by a user)."""

    chat_id: int
    message_id: int
    from_id: int
    text: str = ""  # visible text (HTML parsed)
    html: str | None = None  # what the bot sent, raw
    thread_id: int | None = None
    reply_to: int | None = None
    reply_markup: dict[str, Any] | None = None
    media: str | None = None  # photo, document, ...
    file_id: str | None = None
    media_group_id: str | None = None
    deleted: bool = False
    edits: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    service: bool = False  # a topic created / edited: no text to edit, never editable

    def buttons(self) -> list[dict[str, Any]]:
        """The inline buttons, flattened."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [b for row in rows for b in row]


@dataclass
class Topic:
    """A forum topic."""

    thread_id: int
    name: str
    closed: bool = False
    deleted: bool = False
    renames: list[str] = field(default_factory=list)


class FakeTelegramAPI:
    """The Bot API, good enough for aiogram and the firstline adapter."""

    def __init__(self, token: str = f"{BOT_ID}:TEST-fake-token", username: str = "firstline_bot"):
        self.token = token
        self.bot = FakeUser(int(token.split(":")[0]), "Firstline", username=username, is_bot=True)
        self.url = ""
        self.calls: list[Call] = []
        # Message dates (Unix seconds): tests point it at their clock.
        self.now: Callable[[], float] = time.time
        self.chats: dict[int, FakeChat] = {}
        self.messages: dict[tuple[int, int], FakeMessage] = {}
        self.topics: dict[int, dict[int, Topic]] = {}
        self.updates: list[dict[str, Any]] = []
        self.confirmed = 0  # every update_id below this was confirmed by an offset
        self.callbacks: dict[str, str | None] = {}  # id -> answer text (None: unanswered)
        self.answered: dict[str, dict[str, Any]] = {}
        self.webhook: dict[str, Any] | None = None
        self.commands: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []
        self.file_ids: set[str] = set()
        self._update_ids = itertools.count(1)
        self._msg_ids: dict[int, itertools.count[int]] = {}
        self._cb_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._group_ids = itertools.count(1)
        self._arrived = asyncio.Event()
        self._released = asyncio.Event()  # hung calls (timeouts) end when the fake closes
        self._runner: web.AppRunner | None = None
        self._closing = False

    # ------------------------------------------------------------------ server

    async def start(self, port: int = 0) -> str:
        """Listen on 127.0.0.1 (a free port by default); returns the base URL."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        sock_port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{sock_port}"
        return self.url

    async def close(self) -> None:
        """Stop listening (waking any long poll)."""
        self._closing = True
        self._arrived.set()
        self._released.set()
        for hold in self.holds:
            hold.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _params(self, request: web.Request) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        ctype = request.content_type
        if ctype == "application/json":
            body = await request.text()
            raw = json.loads(body) if body else {}
            return raw
        if request.method == "POST" and ctype in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            for k, v in form.items():
                raw[k] = v if isinstance(v, str) else f"upload:{getattr(v, 'filename', k)}"
        for k, v in request.query.items():
            raw.setdefault(k, v)
        params: dict[str, Any] = {}
        for k, v in raw.items():
            if k in STRING_FIELDS or not isinstance(v, str):
                params[k] = v
                continue
            try:
                params[k] = json.loads(v)
            except ValueError:
                params[k] = v
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params)
        self.calls.append(call)
        hold = self._take_hold(method, params)
        if hold is not None:
            await hold.release.wait()
        try:
            try:
                self._inject_fault(method, params)
            except _Broken as broken:
                return await self._act_out(request, call, broken.how)
            handler = getattr(self, f"api_{method.lower()}", None)
            if handler is None:
                kind = MEDIA_METHODS.get(method.lower())
                if kind is None:
                    raise ApiError(404, "Not Found: method not found")
                result = self._send_media(params, kind)
            else:
                result = handler(params)
                if asyncio.iscoroutine(result):
                    result = await result
        except ApiError as e:
            call.status = e.status
            body: dict[str, Any] = {
                "ok": False,
                "error_code": e.status,
                "description": e.description,
            }
            if e.retry_after is not None:
                body["parameters"] = {"retry_after": int(e.retry_after)}
            call.result = body
            return web.json_response(body, status=e.status)
        call.result = result
        return web.json_response({"ok": True, "result": result})

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        method: str,
        status: int = 429,
        description: str | None = None,
        *,
        retry_after: float | None = None,
        chat_id: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` (to ``chat_id``) fail."""
        if description is None:
            description = {
                429: f"Too Many Requests: retry after {int(retry_after or 1)}",
                403: "Forbidden: bot was blocked by the user",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(status, "Bad Request: injected")
        if status == 429 and retry_after is None:
            retry_after = 1
        self.faults.append(Fault(method.lower(), status, description, retry_after, chat_id, times))

    def break_next(
        self,
        method: str,
        how: str = "timeout",
        *,
        chat_id: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail on the network: ``"timeout"`` (the
        request is never answered) or ``"reset"`` (the connection is reset). Telegram does not
        act on them, so a retry is not a duplicate."""
        assert how in ("timeout", "reset"), how
        self.faults.append(Fault(method.lower(), 0, how, None, chat_id, times, network=how))

    async def _act_out(self, request: web.Request, call: Call, how: str) -> web.Response:
        call.status = 0
        call.result = how
        if how == "timeout":
            await self._released.wait()  # the client gives up long before
            return web.Response(status=504)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=502)  # never reaches the client

    def hold_next(self, method: str, *, chat_id: int | None = None) -> Hold:
        """Keep the next call of ``method`` (to ``chat_id``) unanswered until ``release``
        is set; ``arrived`` is set once the bot made the call."""
        hold = Hold(method.lower(), chat_id)
        self.holds.append(hold)
        return hold

    def _take_hold(self, method: str, params: dict[str, Any]) -> Hold | None:
        chat_id = _int(params.get("chat_id"))
        for hold in self.holds:
            if hold.arrived.is_set() or hold.method != method.lower():
                continue
            if hold.chat_id is None or hold.chat_id == chat_id:
                hold.arrived.set()
                return hold
        return None

    def clear_faults(self) -> None:
        """Forget every queued failure."""
        self.faults.clear()

    def _inject_fault(self, method: str, params: dict[str, Any]) -> None:
        for f in self.faults:
            if f.method != method.lower():
                continue
            if f.chat_id is not None and _int(params.get("chat_id")) != f.chat_id:
                continue
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    self.faults.remove(f)
            if f.network is not None:
                raise _Broken(f.network)
            raise ApiError(f.status, f.description, f.retry_after)

    # ------------------------------------------------------------------ world setup

    def add_group(self, chat_id: int, title: str = "L2 desk", *, forum: bool = False) -> FakeChat:
        """A group the bot is in (a supergroup; a forum if asked)."""
        chat = FakeChat(chat_id, "supergroup", title=title, is_forum=forum)
        self.chats[chat_id] = chat
        return chat

    def user(
        self,
        user_id: int,
        first_name: str,
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "en",
    ) -> FakeUser:
        """An account; its private chat with the bot exists once it writes."""
        return FakeUser(user_id, first_name, last_name, username, language_code)

    def block(self, user_id: int) -> None:
        """The user blocks the bot: sends to them answer 403."""
        self.chats[user_id].blocked = True

    def delete_topic(self, chat_id: int, thread_id: int) -> None:
        """Someone deleted a forum topic (and its messages)."""
        self.topics[chat_id][thread_id].deleted = True
        for m in self.messages.values():
            if m.chat_id == chat_id and m.thread_id == thread_id:
                m.deleted = True

    def close_topic(self, chat_id: int, thread_id: int) -> None:
        """Someone closed a forum topic."""
        self.topics[chat_id][thread_id].closed = True

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """Someone deleted a message."""
        self.messages[(chat_id, message_id)].deleted = True

    def _next_msg_id(self, chat_id: int) -> int:
        chat = self.chats.get(chat_id)
        # Private chats and basic groups take ids from the bot account's one sequence.
        box = 0 if chat is None or chat.type in ("private", "group") else chat_id
        return next(self._msg_ids.setdefault(box, itertools.count(1)))

    def _service(self, chat_id: int, thread_id: int | None, what: str) -> FakeMessage:
        """A service message the bot's action posted (a topic created or edited)."""
        mid = self._next_msg_id(chat_id)
        msg = FakeMessage(chat_id, mid, self.bot.id, text="", thread_id=thread_id, media=what)
        msg.service = True
        self.messages[(chat_id, mid)] = msg
        return msg

    def _private(self, user: FakeUser) -> FakeChat:
        chat = self.chats.get(user.id)
        if chat is None:
            chat = self.chats[user.id] = FakeChat(
                user.id, "private", first_name=user.first_name, username=user.username
            )
        return chat

    def new_file_id(self, kind: str) -> str:
        """A file id the fake will accept later."""
        fid = f"{kind}-file-{next(self._file_ids)}"
        self.file_ids.add(fid)
        return fid

    # ------------------------------------------------------------------ updates

    def queue(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Queue an update of ``kind`` and wake long polls; returns the update."""
        update = {"update_id": next(self._update_ids), kind: obj}
        self.updates.append(update)
        self._arrived.set()
        return update

    def _user_message(
        self,
        user: FakeUser,
        chat: FakeChat,
        *,
        text: str | None = None,
        thread_id: int | None = None,
        reply_to: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> FakeMessage:
        mid = self._next_msg_id(chat.id)
        raw: dict[str, Any] = {
            "message_id": mid,
            "date": int(self.now()),
            "chat": chat.to_json(),
            "from": user.to_json(),
        }
        if text is not None:
            raw["text"] = text
            if text.startswith("/"):
                cmd = text.split()[0]
                raw["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16(cmd)}]
        if reply_to is not None:
            replied = self.messages.get((chat.id, reply_to))
            if replied is not None:
                raw["reply_to_message"] = replied.raw or {
                    "message_id": reply_to,
                    "date": int(self.now()),
                    "chat": chat.to_json(),
                }
                if chat.is_forum and thread_id is None:
                    thread_id = replied.thread_id
        if thread_id is not None:
            raw["message_thread_id"] = thread_id
            if chat.is_forum:
                raw["is_topic_message"] = True
                if reply_to is None:  # in a topic, a plain message "replies" to its root
                    raw["reply_to_message"] = {
                        "message_id": thread_id,
                        "date": int(self.now()),
                        "chat": chat.to_json(),
                        "forum_topic_created": {"name": "topic", "icon_color": 7322096},
                    }
        raw.update(extra or {})
        msg = FakeMessage(
            chat.id,
            mid,
            user.id,
            text=text or raw.get("caption", ""),
            thread_id=thread_id,
            reply_to=reply_to,
            raw=raw,
            media_group_id=raw.get("media_group_id"),
        )
        self.messages[(chat.id, mid)] = msg
        return msg

    def send_text(
        self, user: FakeUser, text: str, *, chat_id: int | None = None, **kw: Any
    ) -> FakeMessage:
        """The user writes ``text`` (privately, or in group ``chat_id``)."""
        chat = self.chats[chat_id] if chat_id is not None else self._private(user)
        msg = self._user_message(user, chat, text=text, **kw)
        self.queue("message", msg.raw)
        return msg

    def send_media(
        self,
        user: FakeUser,
        kind: str,
        *,
        caption: str | None = None,
        chat_id: int | None = None,
        media_group_id: str | None = None,
        name: str | None = None,
        queue: bool = True,
        **kw: Any,
    ) -> FakeMessage:
        """The user sends a photo, document, voice, video, audio, sticker, location..."""
        chat = self.chats[chat_id] if chat_id is not None else self._private(user)
        fid = self.new_file_id(kind)
        obj: dict[str, Any] = {"file_id": fid, "file_unique_id": f"u{fid}", "file_size": 1234}
        extra: dict[str, Any] = {}
        if kind == "photo":
            extra["photo"] = [
                {**obj, "file_id": self.new_file_id("thumb"), "width": 90, "height": 90},
                {**obj, "width": 1280, "height": 960},
            ]
        elif kind == "location":
            extra["location"] = {"latitude": 55.75, "longitude": 37.62}
        elif kind == "contact":
            extra["contact"] = {"phone_number": "+100", "first_name": "X"}
        elif kind == "poll":
            extra["poll"] = {
                "id": "1",
                "question": "?",
                "options": [{"text": "a", "voter_count": 0}, {"text": "b", "voter_count": 0}],
                "total_voter_count": 0,
                "is_closed": False,
                "is_anonymous": True,
                "type": "regular",
                "allows_multiple_answers": False,
            }
        elif kind == "sticker":
            extra["sticker"] = {
                **obj,
                "type": "regular",
                "width": 512,
                "height": 512,
                "is_animated": False,
                "is_video": False,
            }
        elif kind in ("video", "video_note", "animation"):
            extra[kind] = {**obj, "width": 1, "height": 1, "duration": 1, "length": 1}
            if kind == "animation":
                extra["document"] = dict(obj)
        elif kind in ("voice", "audio"):
            extra[kind] = {**obj, "duration": 3, "mime_type": "audio/ogg"}
        else:
            extra[kind] = {**obj, "file_name": name or "file.txt", "mime_type": "text/plain"}
        if caption is not None:
            extra["caption"] = caption
        if media_group_id is not None:
            extra["media_group_id"] = media_group_id
        msg = self._user_message(user, chat, extra=extra, **kw)
        msg.media, msg.file_id = kind, fid
        if queue:
            self.queue("message", msg.raw)
        return msg

    def send_album(
        self,
        user: FakeUser,
        n: int = 3,
        *,
        caption: str | None = None,
        chat_id: int | None = None,
        **kw: Any,
    ) -> list[FakeMessage]:
        """The user sends ``n`` photos as one album (consecutive updates)."""
        group = f"album{next(self._group_ids)}"
        return [
            self.send_media(
                user,
                "photo",
                caption=caption if i == 0 else None,
                chat_id=chat_id,
                media_group_id=group,
                **kw,
            )
            for i in range(n)
        ]

    def edit_text(self, user: FakeUser, msg: FakeMessage, text: str) -> None:
        """The user edits a message they sent."""
        msg.text = text
        raw = dict(msg.raw)
        raw["text" if "text" in raw else "caption"] = text
        raw["edit_date"] = int(self.now())
        self.queue("edited_message", raw)

    def press(self, user: FakeUser, msg: FakeMessage, label: str) -> dict[str, Any]:
        """The user presses the button whose label contains ``label`` on ``msg``."""
        for b in msg.buttons():
            if label.lower() in b["text"].lower():
                return self.press_data(user, msg, b["callback_data"])
        raise AssertionError(f"no button {label!r} on {msg.text!r}: {msg.buttons()}")

    def press_data(self, user: FakeUser, msg: FakeMessage, data: str) -> dict[str, Any]:
        """A callback query with raw ``data`` from a button on ``msg``."""
        cid = str(next(self._cb_ids))
        self.callbacks[cid] = None
        return self.queue(
            "callback_query",
            {
                "id": cid,
                "from": user.to_json(),
                "chat_instance": f"ci{msg.chat_id}",
                "message": self._bot_message_json(msg),
                "data": data,
            },
        )

    def bot_added(self, chat_id: int, by: FakeUser) -> None:
        """The bot was added to a group (a ``my_chat_member`` update)."""
        chat = self.chats[chat_id]
        self.queue(
            "my_chat_member",
            {
                "chat": chat.to_json(),
                "from": by.to_json(),
                "date": int(self.now()),
                "old_chat_member": {"status": "left", "user": self.bot.to_json()},
                "new_chat_member": {"status": "member", "user": self.bot.to_json()},
            },
        )

    async def push(self, update: dict[str, Any], *, secret: str | None = None) -> int:
        """POST ``update`` to the webhook (as Telegram does); the HTTP status."""
        assert self.webhook is not None, "no webhook set"
        headers = {}
        token = self.webhook.get("secret_token") if secret is None else secret
        if token:
            headers["X-Telegram-Bot-Api-Secret-Token"] = token
        async with (
            aiohttp.ClientSession() as s,
            s.post(self.webhook["url"], json=update, headers=headers) as resp,
        ):
            return resp.status

    # ------------------------------------------------------------------ queries for tests

    def called(self, method: str) -> list[Call]:
        """Successful calls of ``method``."""
        return [c for c in self.calls if c.method.lower() == method.lower() and c.status == 200]

    def sent(self, chat_id: int, *, thread_id: int | None = None) -> list[FakeMessage]:
        """Messages the bot posted in ``chat_id`` (optionally in one topic), oldest first;
        not the service messages of its topic edits."""
        return [
            m
            for (cid, _), m in sorted(self.messages.items(), key=lambda kv: kv[0][1])
            if cid == chat_id
            and m.from_id == self.bot.id
            and m.media != "topic_edited"
            and (thread_id is None or m.thread_id == thread_id)
        ]

    def texts(self, chat_id: int, **kw: Any) -> list[str]:
        """The visible texts the bot posted in a chat."""
        return [m.text for m in self.sent(chat_id, **kw)]

    def last(self, chat_id: int) -> FakeMessage:
        """The bot's newest message in a chat."""
        msgs = self.sent(chat_id)
        assert msgs, f"the bot sent nothing to {chat_id}"
        return msgs[-1]

    def with_buttons(self, chat_id: int) -> FakeMessage:
        """The bot's newest message in a chat that still has buttons."""
        for m in reversed(self.sent(chat_id)):
            if m.buttons() and not m.deleted:
                return m
        raise AssertionError(f"no message with buttons in {chat_id}: {self.texts(chat_id)}")

    async def wait_for(
        self, predicate: Callable[[], Any], within: float = 10.0, what: str = "condition"
    ) -> Any:
        """Poll ``predicate`` until truthy (bounded); returns its value."""
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ methods

    def api_getme(self, p: dict[str, Any]) -> dict[str, Any]:
        return {**self.bot.to_json(), "can_join_groups": True, "supports_inline_queries": False}

    async def api_getupdates(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(p.get("offset") or 0)
        limit = int(p.get("limit") or 100)
        timeout = float(p.get("timeout") or 0)
        if offset:
            self.confirmed = max(self.confirmed, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        deadline = time.monotonic() + min(timeout, 50)
        while True:
            self._arrived.clear()
            ready = [u for u in self.updates if u["update_id"] >= offset][:limit]
            left = deadline - time.monotonic()
            if ready or left <= 0 or self._closing:
                return ready
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=left)

    def api_setwebhook(self, p: dict[str, Any]) -> bool:
        self.webhook = {"url": p["url"], "secret_token": p.get("secret_token"), **p}
        return True

    def api_deletewebhook(self, p: dict[str, Any]) -> bool:
        self.webhook = None
        if p.get("drop_pending_updates"):
            self.updates.clear()
        return True

    def api_getwebhookinfo(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": (self.webhook or {}).get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self.updates),
        }

    def api_setmycommands(self, p: dict[str, Any]) -> bool:
        self.commands.append(p)
        return True

    def api_deletemycommands(self, p: dict[str, Any]) -> bool:
        return True

    def api_sendchataction(self, p: dict[str, Any]) -> bool:
        return True

    def api_leavechat(self, p: dict[str, Any]) -> bool:
        return True

    def api_getchat(self, p: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(p)
        return {
            **chat.to_json(),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
                "gifts_from_channels": False,
            },
        }

    def _chat(self, p: dict[str, Any]) -> FakeChat:
        chat = self.chats.get(_int(p.get("chat_id")) or 0)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _writable(self, p: dict[str, Any]) -> tuple[FakeChat, int | None, int | None]:
        """The chat, thread and reply target of a send; Telegram's refusals."""
        chat = self._chat(p)
        if chat.blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        thread = _int(p.get("message_thread_id"))
        reply = p.get("reply_parameters") or {}
        reply_to = _int(reply.get("message_id")) or _int(p.get("reply_to_message_id"))
        if reply_to is not None:
            replied = self.messages.get((chat.id, reply_to))
            if replied is None or replied.deleted:
                if not reply.get("allow_sending_without_reply"):
                    raise ApiError(400, "Bad Request: message to be replied not found")
                reply_to = None
            elif chat.is_forum and thread is None:
                thread = replied.thread_id
        if thread is not None and chat.is_forum:
            topic = self.topics.get(chat.id, {}).get(thread)
            if topic is None or topic.deleted:
                raise ApiError(400, "Bad Request: message thread not found")
            if topic.closed:
                raise ApiError(400, "Bad Request: TOPIC_CLOSED")
        elif not chat.is_forum:
            thread = None
        return chat, thread, reply_to

    def _render(self, text: str, parse_mode: str | None, limit: int, what: str) -> str:
        visible = parse_html(text) if (parse_mode or "").upper() == "HTML" else text
        if not visible.strip():
            raise ApiError(400, f"Bad Request: {what} is empty")
        if utf16(visible) > limit:
            raise ApiError(400, f"Bad Request: {what} is too long")
        return visible

    @staticmethod
    def _check_markup(markup: Any) -> dict[str, Any] | None:
        if not markup:
            return None
        for row in markup.get("inline_keyboard", []):
            for b in row:
                data = b.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= 64:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
                if not b.get("text"):
                    raise ApiError(
                        400, "Bad Request: text buttons are unallowed in the inline keyboard"
                    )
        return dict(markup)

    def _store(
        self,
        chat: FakeChat,
        thread: int | None,
        reply_to: int | None,
        *,
        text: str = "",
        html: str | None = None,
        markup: dict[str, Any] | None = None,
        media: str | None = None,
        file_id: str | None = None,
        group: str | None = None,
    ) -> FakeMessage:
        mid = self._next_msg_id(chat.id)
        msg = FakeMessage(
            chat.id,
            mid,
            self.bot.id,
            text=text,
            html=html,
            thread_id=thread,
            reply_to=reply_to,
            reply_markup=markup,
            media=media,
            file_id=file_id,
            media_group_id=group,
        )
        self.messages[(chat.id, mid)] = msg
        msg.raw = self._bot_message_json(msg)
        return msg

    def _bot_message_json(self, msg: FakeMessage) -> dict[str, Any]:
        chat = self.chats[msg.chat_id]
        d: dict[str, Any] = {
            "message_id": msg.message_id,
            "date": int(self.now()),
            "chat": chat.to_json(),
            "from": (
                self.bot if msg.from_id == self.bot.id else FakeUser(msg.from_id, "U")
            ).to_json(),
        }
        if msg.media is None:
            d["text"] = msg.text
        else:
            if msg.text:
                d["caption"] = msg.text
            fid = msg.file_id or "x"
            obj = {"file_id": fid, "file_unique_id": f"u{fid}"}
            if msg.media == "photo":
                d["photo"] = [{**obj, "width": 1, "height": 1}]
            elif msg.media in ("video", "animation", "video_note"):
                d[msg.media] = {**obj, "width": 1, "height": 1, "duration": 1, "length": 1}
            elif msg.media in ("voice", "audio"):
                d[msg.media] = {**obj, "duration": 1}
            else:
                d["document"] = obj
        if msg.thread_id is not None:
            d["message_thread_id"] = msg.thread_id
            if chat.is_forum:
                d["is_topic_message"] = True
        if msg.reply_markup:
            d["reply_markup"] = msg.reply_markup
        if msg.media_group_id:
            d["media_group_id"] = msg.media_group_id
        return d

    def api_sendmessage(self, p: dict[str, Any]) -> dict[str, Any]:
        chat, thread, reply_to = self._writable(p)
        text = str(p.get("text") or "")
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        visible = self._render(text, p.get("parse_mode"), 4096, "message text")
        markup = self._check_markup(p.get("reply_markup"))
        msg = self._store(chat, thread, reply_to, text=visible, html=text, markup=markup)
        return msg.raw

    def _file(self, value: Any) -> str:
        fid = str(value)
        if fid.startswith("upload:"):
            return self.new_file_id("upload")
        if fid not in self.file_ids:
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        return fid

    def _send_media(self, p: dict[str, Any], kind: str) -> dict[str, Any]:
        chat, thread, reply_to = self._writable(p)
        fid = self._file(p.get(kind))
        caption = p.get("caption")
        visible = (
            self._render(caption, p.get("parse_mode"), 1024, "message caption") if caption else ""
        )
        markup = self._check_markup(p.get("reply_markup"))
        msg = self._store(
            chat,
            thread,
            reply_to,
            text=visible,
            html=caption,
            markup=markup,
            media=kind,
            file_id=fid,
        )
        return msg.raw

    def api_sendmediagroup(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        chat, thread, reply_to = self._writable(p)
        media = p.get("media") or []
        if not 2 <= len(media) <= 10:
            raise ApiError(400, "Bad Request: wrong number of media in the album")
        kinds = {m.get("type") for m in media}
        if len(kinds - {"photo", "video"}) and len(kinds) > 1:
            raise ApiError(
                400, "Bad Request: documents and audio can't be mixed with other media types"
            )
        checked = []
        for m in media:
            fid = self._file(m.get("media"))
            cap = m.get("caption")
            visible = self._render(cap, m.get("parse_mode"), 1024, "message caption") if cap else ""
            checked.append((str(m.get("type")), fid, visible, cap))
        group = f"bot-album-{next(self._group_ids)}"
        out = []
        for kind, fid, visible, cap in checked:
            msg = self._store(
                chat, thread, reply_to, text=visible, html=cap, media=kind, file_id=fid, group=group
            )
            out.append(msg.raw)
        return out

    def _own(self, p: dict[str, Any]) -> FakeMessage:
        chat = self._chat(p)
        msg = self.messages.get((chat.id, _int(p.get("message_id")) or 0))
        if msg is None or msg.deleted:
            raise ApiError(400, "Bad Request: message to edit not found")
        if msg.from_id != self.bot.id or msg.service:
            raise ApiError(400, "Bad Request: message can't be edited")
        return msg

    def api_editmessagetext(self, p: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(p)
        if msg.media is not None:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        text = str(p.get("text") or "")
        visible = self._render(text, p.get("parse_mode"), 4096, "message text")
        markup = self._check_markup(p.get("reply_markup"))
        if text == msg.html and markup == msg.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        msg.text, msg.html, msg.reply_markup = visible, text, markup
        msg.edits += 1
        msg.raw = self._bot_message_json(msg)
        return msg.raw

    def api_editmessagereplymarkup(self, p: dict[str, Any]) -> dict[str, Any]:
        msg = self._own(p)
        markup = self._check_markup(p.get("reply_markup"))
        if markup == msg.reply_markup:
            raise ApiError(400, NOT_MODIFIED)
        msg.reply_markup = markup
        msg.edits += 1
        msg.raw = self._bot_message_json(msg)
        return msg.raw

    def api_deletemessage(self, p: dict[str, Any]) -> bool:
        msg = self._own(p)
        msg.deleted = True
        return True

    def api_answercallbackquery(self, p: dict[str, Any]) -> bool:
        cid = str(p.get("callback_query_id"))
        if cid not in self.callbacks or cid in self.answered:
            raise ApiError(
                400,
                "Bad Request: query is too old and response timeout expired or query ID is invalid",
            )
        self.answered[cid] = p
        self.callbacks[cid] = p.get("text")
        return True

    def api_createforumtopic(self, p: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(p)
        if not chat.is_forum:
            raise ApiError(400, "Bad Request: the chat is not a forum")
        name = str(p.get("name") or "")
        if not 1 <= len(name) <= 128:
            raise ApiError(
                400,
                "Bad Request: TOPIC_TITLE_EMPTY"
                if not name
                else "Bad Request: TOPIC_TITLE_INVALID",
            )
        mid = self._next_msg_id(chat.id)  # the topic's root service message
        self.topics.setdefault(chat.id, {})[mid] = Topic(mid, name)
        root = FakeMessage(chat.id, mid, self.bot.id, text="", thread_id=mid, media="topic")
        root.service = True
        self.messages[(chat.id, mid)] = root
        return {"message_thread_id": mid, "name": name, "icon_color": 7322096}

    def _topic(self, p: dict[str, Any]) -> Topic:
        chat = self._chat(p)
        topic = self.topics.get(chat.id, {}).get(_int(p.get("message_thread_id")) or 0)
        if topic is None or topic.deleted:
            raise ApiError(400, "Bad Request: TOPIC_ID_INVALID")
        return topic

    def api_editforumtopic(self, p: dict[str, Any]) -> bool:
        topic = self._topic(p)
        name = p.get("name")
        if name is None or name == topic.name:
            raise ApiError(400, "Bad Request: TOPIC_NOT_MODIFIED")
        topic.name = str(name)
        topic.renames.append(topic.name)
        self._service(self._chat(p).id, topic.thread_id, "topic_edited")
        return True

    def api_closeforumtopic(self, p: dict[str, Any]) -> bool:
        self._topic(p).closed = True
        return True

    def api_reopenforumtopic(self, p: dict[str, Any]) -> bool:
        self._topic(p).closed = False
        return True

    def api_deleteforumtopic(self, p: dict[str, Any]) -> bool:
        topic = self._topic(p)
        self.delete_topic(self._chat(p).id, topic.thread_id)
        return True


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
