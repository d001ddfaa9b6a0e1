"""A fake Slack on 127.0.0.1: the Web API, a Socket Mode WebSocket, and signed requests.

* :class:`FakeSlackApi` serves ``/api/<method>`` (form, query or JSON bodies, like the real
  Web API), records every call, keeps posted messages so ``chat.update`` can fail with
  ``message_not_found`` like Slack does, and injects faults (429 with ``Retry-After``,
  API errors, 5xx). Posted message ``metadata`` is kept and returned by
  ``conversations.history`` / ``conversations.replies`` only with ``include_all_metadata``,
  with the real methods' order (history newest first, replies oldest first), ``oldest`` /
  ``latest`` / ``inclusive`` bounds and cursor pagination. ``apps.connections.open`` hands out ``ws://127.0.0.1:<port>/link/``,
  where the fake Socket Mode server says ``hello``, pushes envelopes and records acks.
* :class:`SlackRequests` builds Events API, interactivity (``payload=``) and slash-command
  requests signed with the v0 HMAC scheme, to POST at the bot's ``/slack/events``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web

JSON_FIELDS = ("blocks", "attachments", "view", "metadata")


@dataclass
class ApiCall:
    """One recorded Web API call."""

    method: str
    params: dict[str, Any]
    token: str | None
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fault:
    """A queued failure for one method."""

    status: int = 429
    error: str = "ratelimited"
    retry_after: float | None = 1.0
    after: bool = False  # Slack did the work, then the answer failed (a lost response)
    match: Callable[[dict[str, Any]], bool] | None = None  # only calls with these params


class FakeSlackApi:
    """The Slack Web API and Socket Mode endpoint, good enough for bolt and the SDK."""

    def __init__(
        self,
        *,
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        team_id: str = "T0001",
        app_id: str = "A0001",
    ) -> None:
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.team_id = team_id
        self.app_id = app_id
        self.calls: list[ApiCall] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.members: dict[str, list[str]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.responses: list[dict[str, Any]] = []  # posts to response_url
        self.faults: dict[str, list[Fault]] = {}
        self.holds: dict[str, asyncio.Event] = {}
        # Seconds to wait before answering a call (method, params): a slow Slack.
        self.delay: Callable[[str, dict[str, Any]], float] | None = None
        self.sockets: list[web.WebSocketResponse] = []
        self.socket_connects = 0
        self.socket_received: list[dict[str, Any]] = []
        self._ts = itertools.count(1)
        self._app = web.Application()
        self._app.router.add_route("*", "/api/{method}", self._api)
        self._app.router.add_post("/response/{key}", self._response_url)
        self._app.router.add_get("/link/", self._socket)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeSlackApi:
        """Listen on a free port of 127.0.0.1."""
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        """Release held calls, close sockets and stop listening."""
        for gate in self.holds.values():
            gate.set()
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL (``SLACK_API_URL``)."""
        return f"{self.url}/api/"

    def response_url(self, key: str = "r1") -> str:
        """A ``response_url`` for interaction payloads that lands here."""
        return f"{self.url}/response/{key}"

    # ------------------------------------------------------------------ test helpers

    def add_user(
        self, user_id: str, name: str, *, real_name: str = "", locale: str = "en-US"
    ) -> None:
        """Make ``users.info`` know ``user_id``."""
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name or name.title(),
            "locale": locale,
            "profile": {"display_name": real_name or name.title(), "real_name": real_name},
        }

    def fail(
        self,
        method: str,
        *,
        status: int = 429,
        error: str = "ratelimited",
        retry_after: float | None = 1.0,
        times: int = 1,
        after: bool = False,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """The next ``times`` calls of ``method`` (whose params satisfy ``match``) fail like
        this; with ``after`` the call is carried out first and only its answer fails (Slack
        stored the message, the bot never heard)."""
        self.faults.setdefault(method, []).extend(
            Fault(status, error, retry_after, after, match) for _ in range(times)
        )

    def hold(self, method: str) -> asyncio.Event:
        """Calls of ``method`` hang until the returned event is set (a slow Slack)."""
        return self.holds.setdefault(method, asyncio.Event())

    def calls_to(self, method: str) -> list[ApiCall]:
        """Successful and failed calls of ``method``, in order."""
        return [c for c in self.calls if c.method == method]

    def posts(self, channel: str | None = None, *, thread_ts: str | None = None) -> list[ApiCall]:
        """Successful ``chat.postMessage`` calls, optionally to a channel / under a thread."""
        return [
            c
            for c in self.calls_to("chat.postMessage")
            if c.response.get("ok")
            and (channel is None or c.params.get("channel") == channel)
            and (thread_ts is None or c.params.get("thread_ts") == thread_ts)
        ]

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        """The current state of a posted (maybe updated) message."""
        return self.messages[(channel, ts)]

    def add_message(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> str:
        """A message a person wrote (so history reads see it); returns its ts."""
        ts = self._next_ts()
        msg: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts}
        if thread_ts:
            msg["thread_ts"] = thread_ts
        self.messages[(channel, ts)] = msg
        return ts

    async def wait_for(
        self, predicate: Callable[[], Any], within: float = 5.0, what: str = "condition"
    ) -> Any:
        """Poll ``predicate`` until it is truthy or ``within`` seconds pass (then fail)."""
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ Socket Mode

    async def push(self, envelope: dict[str, Any]) -> str:
        """Send an envelope down every open socket; returns its ``envelope_id``."""
        envelope.setdefault("envelope_id", uuid.uuid4().hex)
        for ws in self.sockets:
            if not ws.closed:
                await ws.send_str(json.dumps(envelope))
        return str(envelope["envelope_id"])

    async def push_event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry_attempt: int = 0
    ) -> str:
        """An ``events_api`` envelope around ``event``."""
        body = event_body(event, event_id=event_id, team_id=self.team_id, app_id=self.app_id)
        return await self.push(
            {
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": retry_attempt,
                "retry_reason": "timeout" if retry_attempt else "",
                "payload": body,
            }
        )

    async def push_interaction(self, payload: dict[str, Any]) -> str:
        """An ``interactive`` envelope (block_actions...)."""
        return await self.push(
            {"type": "interactive", "accepts_response_payload": False, "payload": payload}
        )

    async def push_command(self, command: dict[str, str]) -> str:
        """A ``slash_commands`` envelope."""
        return await self.push(
            {"type": "slash_commands", "accepts_response_payload": True, "payload": command}
        )

    def acked(self, envelope_id: str) -> bool:
        """Whether the bot acknowledged ``envelope_id``."""
        return any(m.get("envelope_id") == envelope_id for m in self.socket_received)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.sockets.append(ws)
        self.socket_connects += 1
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.sockets),
                    "connection_info": {"app_id": self.app_id},
                    "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                }
            )
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self.socket_received.append(json.loads(msg.data))
        finally:
            self.sockets.remove(ws)
        return ws

    # ------------------------------------------------------------------ the Web API

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        ctype = request.content_type
        if request.can_read_body:
            if ctype == "application/json":
                data = await request.json()
                if isinstance(data, dict):
                    params.update(data)
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        for key in JSON_FIELDS:
            value = params.get(key)
            if isinstance(value, str) and value[:1] in "[{":
                params[key] = json.loads(value)
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth else params.get("token")
        call = ApiCall(method, params, token)
        self.calls.append(call)
        gate = self.holds.get(method)
        if gate is not None:
            await gate.wait()
        if self.delay is not None and (pause := self.delay(method, params)) > 0:
            await asyncio.sleep(pause)
        queued = [f for f in self.faults.get(method) or [] if f.match is None or f.match(params)]
        if queued:
            fault = queued[0]
            self.faults[method].remove(fault)
            handler = getattr(self, "_m_" + method.replace(".", "_"), None)
            if fault.after and handler is not None:
                handler(params)
            call.status = fault.status
            call.response = {"ok": False, "error": fault.error}
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(int(fault.retry_after))
            return web.json_response(call.response, status=fault.status, headers=headers)
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if not token:
            call.response = {"ok": False, "error": "not_authed"}
        elif handler is None:
            call.response = {"ok": False, "error": "unknown_method"}
        else:
            call.response = handler(params)
        return web.json_response(call.response)

    def _next_ts(self) -> str:
        n = next(self._ts)
        return f"{1_700_000_000 + n}.{n:06d}"

    def _m_auth_test(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake",
            "user": "firstline",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
        }

    def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        meta = p.get("metadata")
        if meta is not None and not (
            isinstance(meta, dict)
            and isinstance(meta.get("event_type"), str)
            and isinstance(meta.get("event_payload"), dict)
        ):
            return {"ok": False, "error": "invalid_metadata_format"}
        thread = p.get("thread_ts")
        ts = self._next_ts()
        msg = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "ts": ts,
            "text": p.get("text", ""),
            "blocks": p.get("blocks") or [],
        }
        if thread:
            msg["thread_ts"] = thread
            parent = self.messages.get((channel, str(thread)))
            if parent is not None:
                msg["parent_user_id"] = parent.get("user")
        if meta is not None:
            msg["metadata"] = meta
        self.messages[(channel, ts)] = msg
        return {"ok": True, "channel": channel, "ts": ts, "message": dict(msg)}

    def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        key = (str(p.get("channel")), str(p.get("ts")))
        msg = self.messages.get(key)
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        msg["text"] = p.get("text", msg["text"])
        if "blocks" in p:
            msg["blocks"] = p["blocks"]
        msg["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {"ok": True, "channel": key[0], "ts": key[1], "text": msg["text"]}

    def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        user = str(p.get("user") or "")
        members = self.members.get(channel)
        if members is not None and user not in members:
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _m_conversations_open(self, p: dict[str, Any]) -> dict[str, Any]:
        users = str(p.get("users") or "")
        if not users:
            return {"ok": False, "error": "users_list_not_supplied"}
        return {"ok": True, "channel": {"id": "D" + users.split(",")[0]}}

    def _m_conversations_history(self, p: dict[str, Any]) -> dict[str, Any]:
        """Top-level messages (not thread replies), newest first."""
        channel = str(p.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        found = [
            m
            for (c, ts), m in self.messages.items()
            if c == channel and (not m.get("thread_ts") or m.get("thread_ts") == ts)
        ]
        return self._page(found, p, newest_first=True)

    def _m_conversations_replies(self, p: dict[str, Any]) -> dict[str, Any]:
        """A thread: the parent, then its replies, oldest first."""
        channel = str(p.get("channel") or "")
        ts = str(p.get("ts") or "")
        if (channel, ts) not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        found = [
            m
            for (c, mts), m in self.messages.items()
            if c == channel and (mts == ts or m.get("thread_ts") == ts)
        ]
        return self._page(found, p, newest_first=False)

    def _page(
        self, found: list[dict[str, Any]], p: dict[str, Any], *, newest_first: bool
    ) -> dict[str, Any]:
        """Bounds, order, metadata and cursor pagination shared by history and replies."""

        def key(ts: Any) -> float:
            return float(str(ts))

        inclusive = _truthy(p.get("inclusive"))
        oldest, latest = p.get("oldest"), p.get("latest")
        if oldest is not None:
            found = [
                m
                for m in found
                if key(m["ts"]) > key(oldest) or (inclusive and key(m["ts"]) == key(oldest))
            ]
        if latest is not None:
            found = [
                m
                for m in found
                if key(m["ts"]) < key(latest) or (inclusive and key(m["ts"]) == key(latest))
            ]
        found.sort(key=lambda m: key(m["ts"]), reverse=newest_first)
        start = int(str(p.get("cursor") or "0").removeprefix("next:") or 0)
        limit = int(p.get("limit") or (100 if newest_first else 1000))
        page = found[start : start + limit]
        with_meta = _truthy(p.get("include_all_metadata"))
        messages = [
            {k: v for k, v in m.items() if k != "metadata" or with_meta} for m in page
        ]
        more = start + limit < len(found)
        return {
            "ok": True,
            "messages": messages,
            "has_more": more,
            "response_metadata": {"next_cursor": f"next:{start + limit}" if more else ""},
        }

    def _m_conversations_members(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = str(p.get("channel") or "")
        if channel not in self.members:
            return {"ok": False, "error": "channel_not_found"}
        return {
            "ok": True,
            "members": self.members[channel],
            "response_metadata": {"next_cursor": ""},
        }

    def _m_users_info(self, p: dict[str, Any]) -> dict[str, Any]:
        user = str(p.get("user") or "")
        if user not in self.users:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": self.users[user]}

    def _m_views_publish(self, p: dict[str, Any]) -> dict[str, Any]:
        user = str(p.get("user_id") or "")
        view = p.get("view")
        if not user or not isinstance(view, dict):
            return {"ok": False, "error": "invalid_arguments"}
        self.views[user] = view
        return {"ok": True, "view": {"id": "V" + user, **view}}

    def _m_files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        file = self.files.get(str(p.get("file") or ""))
        if file is None:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": file}

    def _m_apps_connections_open(self, _p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link/?ticket={uuid.uuid4().hex}"}

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append({"key": request.match_info["key"], **body})
        return web.Response(text="ok")


def _truthy(value: Any) -> bool:
    """A boolean Web API argument (``true``, ``1``, or a JSON true)."""
    return value is True or str(value).lower() in ("1", "true")


# ---------------------------------------------------------------------- signed requests


def signature(secret: str, timestamp: str, body: str) -> str:
    """Slack's v0 request signature of ``body`` at ``timestamp``."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def event_body(
    event: dict[str, Any],
    *,
    event_id: str | None = None,
    team_id: str = "T0001",
    app_id: str = "A0001",
) -> dict[str, Any]:
    """The Events API envelope (``event_callback``) around ``event``."""
    return {
        "token": "legacy-verification-token",
        "team_id": team_id,
        "api_app_id": app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team_id, "user_id": "UBOT", "is_bot": True}],
    }


@dataclass
class SignedRequest:
    """A request ready to POST: body bytes and headers."""

    body: str
    headers: dict[str, str]


class SlackRequests:
    """Builds signed requests the way Slack sends them to ``/slack/events``."""

    def __init__(self, secret: str, *, team_id: str = "T0001", app_id: str = "A0001") -> None:
        self.secret = secret
        self.team_id = team_id
        self.app_id = app_id
        self._seq = itertools.count(1)

    def sign(
        self,
        body: str,
        content_type: str,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        retry_num: int | None = None,
    ) -> SignedRequest:
        """Sign ``body`` (a wrong ``secret`` or old ``timestamp`` makes a bad request)."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature(secret or self.secret, ts, body),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return SignedRequest(body, headers)

    def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        **sign: Any,
    ) -> SignedRequest:
        """An Events API delivery."""
        body = event_body(event, event_id=event_id, team_id=self.team_id, app_id=self.app_id)
        return self.sign(json.dumps(body), "application/json", retry_num=retry_num, **sign)

    def interaction(self, payload: dict[str, Any], **sign: Any) -> SignedRequest:
        """An interactivity delivery: ``payload=<json>`` form-encoded."""
        body = urlencode({"payload": json.dumps(payload)})
        return self.sign(body, "application/x-www-form-urlencoded", **sign)

    def command(self, command: dict[str, str], **sign: Any) -> SignedRequest:
        """A slash-command delivery (form fields)."""
        return self.sign(urlencode(command), "application/x-www-form-urlencoded", **sign)

    def url_verification(self, challenge: str) -> SignedRequest:
        """The Events API URL handshake."""
        body = json.dumps({"type": "url_verification", "challenge": challenge, "token": "x"})
        return self.sign(body, "application/json")


# ---------------------------------------------------------------------- payload builders

_ts = itertools.count(1)


def new_ts() -> str:
    """A message timestamp for a message a person writes (distinct from the fake's)."""
    n = next(_ts)
    return f"{1_600_000_000 + n}.{n:06d}"


def dm_event(
    user: str,
    text: str,
    *,
    channel: str | None = None,
    ts: str | None = None,
    files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``message.im`` event from ``user`` in their DM with the bot."""
    ev: dict[str, Any] = {
        "type": "message",
        "channel": channel or "D" + user,
        "channel_type": "im",
        "user": user,
        "text": text,
        "ts": ts or new_ts(),
    }
    ev["event_ts"] = ev["ts"]
    if files:
        ev["subtype"] = "file_share"
        ev["files"] = files
    return ev


def thread_reply(
    user: str, channel: str, thread_ts: str, text: str, *, parent_user_id: str | None = None
) -> dict[str, Any]:
    """A ``message.channels`` event: ``user`` replies under ``thread_ts`` (Slack adds the
    root's author as ``parent_user_id``)."""
    ts = new_ts()
    ev: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "channel_type": "channel",
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "thread_ts": thread_ts,
    }
    if parent_user_id is not None:
        ev["parent_user_id"] = parent_user_id
    return ev


def message_changed(
    user: str, channel: str, ts: str, old: str, new: str, *, channel_type: str = "im"
) -> dict[str, Any]:
    """A ``message_changed`` event for ``user``'s message ``ts``."""
    now = new_ts()
    return {
        "type": "message",
        "subtype": "message_changed",
        "channel": channel,
        "channel_type": channel_type,
        "hidden": True,
        "ts": now,
        "event_ts": now,
        "message": {"type": "message", "user": user, "text": new, "ts": ts, "edited": {}},
        "previous_message": {"type": "message", "user": user, "text": old, "ts": ts},
    }


def message_deleted(user: str, channel: str, ts: str, text: str) -> dict[str, Any]:
    """A ``message_deleted`` event for ``user``'s DM message ``ts``."""
    now = new_ts()
    return {
        "type": "message",
        "subtype": "message_deleted",
        "channel": channel,
        "channel_type": "im",
        "hidden": True,
        "ts": now,
        "event_ts": now,
        "deleted_ts": ts,
        "previous_message": {"type": "message", "user": user, "text": text, "ts": ts},
    }


def find_element(message: dict[str, Any], label_part: str) -> tuple[str, dict[str, Any]]:
    """(block_id, element) of the first button/select whose text contains ``label_part``."""
    for block in message.get("blocks") or []:
        if block.get("type") != "actions":
            continue
        for el in block.get("elements", []):
            text = (el.get("text") or el.get("placeholder") or {}).get("text", "")
            if label_part.lower() in text.lower() or label_part == el.get("action_id"):
                return str(block.get("block_id", "")), el
    raise AssertionError(f"no control {label_part!r} in {json.dumps(message.get('blocks'))}")


def block_actions(
    *,
    user: str,
    channel: str,
    message: dict[str, Any],
    block_id: str,
    element: dict[str, Any],
    option: str | None = None,
    response_url: str = "",
    user_name: str = "",
) -> dict[str, Any]:
    """The ``block_actions`` payload Slack sends when ``user`` uses ``element``."""
    action: dict[str, Any] = {
        "type": element.get("type", "button"),
        "action_id": element["action_id"],
        "block_id": block_id,
        "action_ts": f"{time.time():.6f}{next(_ts)}",
    }
    if element.get("type") == "static_select":
        chosen = next(o for o in element["options"] if o["value"] == option)
        action["selected_option"] = chosen
    else:
        action["value"] = element.get("value", "")
        action["text"] = element.get("text", {})
    return {
        "type": "block_actions",
        "team": {"id": "T0001", "domain": "fake"},
        "user": {"id": user, "username": user_name or user.lower(), "name": user_name or user},
        "api_app_id": "A0001",
        "token": "legacy-verification-token",
        "trigger_id": uuid.uuid4().hex,
        "container": {
            "type": "message",
            "message_ts": message["ts"],
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "channel": {"id": channel, "name": channel.lower()},
        "message": message,
        "response_url": response_url,
        "actions": [action],
    }


def slash_command(
    user: str, text: str = "", *, channel: str = "C0GENERAL", command: str = "/support"
) -> dict[str, str]:
    """The form fields of a slash command."""
    return {
        "token": "legacy-verification-token",
        "team_id": "T0001",
        "team_domain": "fake",
        "channel_id": channel,
        "channel_name": channel.lower(),
        "user_id": user,
        "user_name": user.lower(),
        "command": command,
        "text": text,
        "api_app_id": "A0001",
        "response_url": "",
        "trigger_id": uuid.uuid4().hex,
    }


def form_fields(body: str) -> dict[str, str]:
    """Decode a form body (for assertions)."""
    return dict(parse_qsl(body))
