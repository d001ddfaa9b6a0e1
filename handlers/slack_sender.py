"""The Slack side of the outbox: one Web API call (or two) per outbox row.

It works for any ticket, whatever platform its user is on: cards, thread posts and notices
go to the Slack L2/L3 channel named by the row's target; ``message`` rows go only to Slack
DM chat keys (the DM channel id the user's events came from).

Exactly once: every post carries message metadata (``firstline_outbox``: the outbox row id
and the step), so a post whose attempt is in doubt (the process died between Slack
accepting it and the outbox recording it) is looked up in the channel or thread with
``include_all_metadata`` and recorded instead of posted again. Cards also carry their ticket
number, which lets the adapter route a reply under a card the database does not know.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.outbox import OutboxItem, SendResult
from config.categories import PRIORITIES
from escalation.card import TicketCard
from handlers.slack_render import (
    attachment_line,
    card_blocks,
    card_fallback,
    escape,
    fallback,
    message_blocks,
    post_text,
    sections,
)

log = logging.getLogger(__name__)

CHANNEL = "slack"

# The user is gone for good: stop, and let the desk flag them unreachable.
USER_GONE = frozenset(
    {
        "channel_not_found",
        "is_archived",
        "user_not_found",
        "user_disabled",
        "cannot_dm_bot",
        "account_inactive",
        "not_in_channel",
    }
)
# The request itself is wrong: retrying the same row cannot help.
BAD_REQUEST = frozenset(
    {
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_arguments",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_thread_ts",
        "user_not_in_channel",
        "restricted_action",
    }
)
# The card we want to edit no longer exists: post a new one.
CARD_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# The lookup of an in-doubt post cannot work (no history scope, channel gone): post again.
LOOKUP_IMPOSSIBLE = frozenset(
    {
        "missing_scope",
        "not_allowed_token_type",
        "channel_not_found",
        "thread_not_found",
        "not_in_channel",
        "access_denied",
    }
)

# Message metadata of every post: which outbox row and step it delivers.
EVENT_TYPE = "firstline_outbox"
LOOKUP_PAGES = 5  # pages of history read while looking for an in-doubt post
HISTORY_PAGE = 100
REPLIES_PAGE = 200

_COMMON: dict[str, Any] = {"unfurl_links": False, "unfurl_media": False}


def _error_code(exc: SlackApiError) -> str:
    data = exc.response.data if exc.response is not None else None
    if isinstance(data, Mapping):
        return str(data.get("error") or "")
    return ""


def _first(keys: list[str] | None) -> str | None:
    return keys[0] if keys else None


def metadata(item: OutboxItem, step: str, **extra: Any) -> dict[str, Any]:
    """The message metadata that names the outbox row and step a post delivers."""
    return {"event_type": EVENT_TYPE, "event_payload": {"row": item.id, "step": step, **extra}}


def outbox_mark(message: dict[str, Any]) -> dict[str, Any] | None:
    """The ``firstline_outbox`` payload of a message from the Web API, if it has one."""
    meta = message.get("metadata")
    if not isinstance(meta, Mapping) or meta.get("event_type") != EVENT_TYPE:
        return None
    payload = meta.get("event_payload")
    return dict(payload) if isinstance(payload, Mapping) else None


def _ts_key(ts: str) -> tuple[int, int]:
    whole, _, frac = ts.partition(".")
    return (int(whole or 0), int(frac or 0)) if (whole + frac).isdigit() else (0, 0)


def failure(kind: str, exc: SlackApiError) -> SendResult:
    """Map a Web API error to the outbox's retry vocabulary."""
    resp = exc.response
    status = int(getattr(resp, "status_code", 0) or 0)
    code = _error_code(exc)
    error = f"slack {status} {code}".strip()
    if status >= 500:
        # Slack may have done it before failing to answer: the retry looks first.
        return SendResult(ok=False, error=error, maybe_sent=True)
    if status == 429 or code == "ratelimited":
        headers = getattr(resp, "headers", None) or {}
        raw = headers.get("Retry-After") or headers.get("retry-after") or "1"
        try:
            delay = max(float(raw), 0.0)
        except (TypeError, ValueError):
            delay = 1.0
        return SendResult(ok=False, retry_after=delay, error=error)
    if kind == "message" and code in USER_GONE:
        return SendResult(ok=False, permanent=True, unreachable=True, error=error)
    if code in BAD_REQUEST:
        return SendResult(ok=False, permanent=True, error=error)
    # Auth problems, a missing bot in the L2 channel, 5xx: an admin or time can fix these.
    return SendResult(ok=False, error=error)


class SlackSender:
    """Delivers outbox rows of the ``slack`` channel through the Web API."""

    channel = CHANNEL

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def send(self, item: OutboxItem) -> SendResult:
        """Make the platform call(s) for ``item``."""
        try:
            if item.kind == "message":
                return await self._message(item)
            if item.kind == "ticket_card":
                return await self._card(item)
            if item.kind == "ticket_post":
                return await self._post(item)
            if item.kind == "agent_notice":
                return await self._agent_notice(item)
            if item.kind == "notify":
                return await self._notify(item)
        except SlackApiError as exc:
            result = failure(item.kind, exc)
            log.warning("slack %s to %s failed: %s", item.kind, item.target, result.error)
            return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The request may have reached Slack before the connection failed.
            return SendResult(
                ok=False, error=f"{type(exc).__name__}: {exc}"[:300], maybe_sent=True
            )
        log.warning("slack sender: unknown outbox kind %r (row %s) dropped", item.kind, item.id)
        return SendResult(ok=False, permanent=True, error=f"unknown kind {item.kind}")

    # ------------------------------------------------------------------ kinds

    async def _message(self, item: OutboxItem) -> SendResult:
        p = item.payload
        attachments = list(p.get("attachments") or [])
        files = await self._file_links(attachments)
        text, blocks = message_blocks(
            str(p.get("text", "")),
            markdown=bool(p.get("markdown")),
            buttons=p.get("buttons") or [],
            attachments=attachment_line(attachments, files),
        )
        await self._post_once(item, "post", text=text, blocks=blocks)
        await self._image(item, p)
        return SendResult()

    async def _post_once(
        self,
        item: OutboxItem,
        step: str,
        *,
        text: str,
        blocks: list[dict[str, Any]],
        thread_ts: str | None = None,
        **meta: Any,
    ) -> str:
        """chat.postMessage as one step of ``item``: made once, found again if in doubt."""

        async def post() -> str:
            resp = await self.client.chat_postMessage(
                channel=item.target,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                metadata=metadata(item, step, **meta),
                **_COMMON,
            )
            return str(resp["ts"])

        async def find() -> str | None:
            return await self.find_post(item, step, thread_ts)

        ts: str = await item.step(step, post, find=find)
        return ts

    async def find_post(self, item: OutboxItem, step: str, thread_ts: str | None) -> str | None:
        """The ts of the post an earlier attempt of ``item`` made for ``step``, if any.

        Reads the thread (``conversations.replies``) or the channel (``conversations.history``,
        newest first) with ``include_all_metadata``, from the newest post of this ticket the
        database knows: the target's rows go out one at a time, so the post, if it exists, is
        newer. In a channel the search stops at the first post of an older row. Bounded to
        a few pages; if Slack cannot be asked (no history scope), the post is made again.
        """
        known = [k for keys in item.links.values() for k in keys if _ts_key(k) != (0, 0)]
        oldest = max(known, key=_ts_key) if known else None
        cursor: str | None = None
        try:
            for _ in range(LOOKUP_PAGES):
                if thread_ts is not None:
                    resp = await self.client.conversations_replies(
                        channel=item.target,
                        ts=thread_ts,
                        oldest=oldest,
                        include_all_metadata=True,
                        limit=REPLIES_PAGE,
                        cursor=cursor,
                    )
                else:
                    resp = await self.client.conversations_history(
                        channel=item.target,
                        oldest=oldest,
                        include_all_metadata=True,
                        limit=HISTORY_PAGE,
                        cursor=cursor,
                    )
                for message in resp.get("messages") or []:
                    mark = outbox_mark(message)
                    if mark is None:
                        continue
                    if mark.get("row") == item.id and mark.get("step") == step:
                        return str(message["ts"])
                    row = mark.get("row")
                    if thread_ts is None and isinstance(row, int) and row < item.id:
                        return None  # newest first: an older row's post; ours is not there
                cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    return None
        except SlackApiError as exc:
            if _error_code(exc) not in LOOKUP_IMPOSSIBLE:
                raise  # rate limits, outages: try the whole row again later
            log.warning(
                "cannot look for outbox row %s in %s (%s): posting it again (grant the "
                "*:history scopes so a crash never doubles a message)",
                item.id,
                item.target,
                _error_code(exc),
            )
            return None
        log.warning("outbox row %s: not in %d pages of %s", item.id, LOOKUP_PAGES, item.target)
        return None

    async def _card(self, item: OutboxItem) -> SendResult:
        card = item.card
        if card is None:  # the ticket is gone; nothing to show
            return SendResult()
        existing = _first(item.links.get("card"))
        if existing is not None:
            try:
                # An edit shows the current state: doing it twice does no harm.
                await self.client.chat_update(
                    channel=item.target,
                    ts=existing,
                    text=card_fallback(card),
                    blocks=card_blocks(card, PRIORITIES),
                )
                return SendResult()
            except SlackApiError as exc:
                if _error_code(exc) not in CARD_GONE:
                    raise
                log.info("card %s of %s was deleted; posting a new one", existing, card.number)
                ts = await self._post_card(item, card)
                return SendResult(links=[("card", ts, None)], drop_roles=["card"])
        ts = await self._post_card(item, card)
        return SendResult(links=[("card", ts, None)])

    async def _post_card(self, item: OutboxItem, card: TicketCard) -> str:
        return await self._post_once(
            item,
            "card",
            text=card_fallback(card),
            blocks=card_blocks(card, PRIORITIES),
            ticket=card.number,
        )

    async def _post(self, item: OutboxItem) -> SendResult:
        links: list[tuple[str, str, int | None]] = []
        parent = _first(item.links.get("card"))
        lang = item.card.lang if item.card is not None else "en"
        if parent is None and item.card is not None:
            # The card never made it (failed row, deleted, new destination): thread needs one.
            parent = await self._post_card(item, item.card)
            links.append(("card", parent, None))
        attachments = list(item.payload.get("attachments") or [])
        body = post_text(item.payload, lang, await self._file_links(attachments))
        ts = await self._post_once(
            item, "post", text=fallback(body), blocks=sections(body), thread_ts=parent
        )
        message_id = item.payload.get("message_id")
        links.append(("relay", ts, int(message_id) if message_id else None))
        return SendResult(links=links)

    async def _agent_notice(self, item: OutboxItem) -> SendResult:
        p = item.payload
        agent = str(p.get("agent") or "")
        text = escape(str(p.get("text", "")))
        if not agent:
            return SendResult(ok=False, permanent=True, error="agent_notice without an agent")
        kwargs: dict[str, Any] = {}
        if p.get("thread_ref"):
            kwargs["thread_ts"] = str(p["thread_ref"])
        try:
            await self.client.chat_postEphemeral(
                channel=item.target, user=agent, text=fallback(text), **kwargs
            )
        except SlackApiError as exc:
            if _error_code(exc) in ("user_not_in_channel", "channel_not_found", "not_in_channel"):
                # A non-member clicked a card in a public channel: nobody can show them an
                # ephemeral there, and the intake already answered the click itself.
                log.info("notice to %s in %s not deliverable: %s", agent, item.target, exc)
                return SendResult()
            raise
        return SendResult()

    async def _notify(self, item: OutboxItem) -> SendResult:
        text = escape(str(item.payload.get("text", "")))
        await self._post_once(item, "post", text=fallback(text), blocks=sections(text))
        await self._image(item, item.payload)
        return SendResult()

    async def _image(self, item: OutboxItem, payload: dict[str, Any]) -> None:
        """A PNG the core made (the digest chart); needs the ``files:write`` scope. The text
        already went out, so a failed upload is logged, not retried (no duplicate text); an
        upload in doubt after a crash is not repeated (an upload carries no metadata)."""
        encoded = payload.get("image_png_b64")
        if not encoded:
            return

        async def upload() -> bool:
            try:
                await self.client.files_upload_v2(
                    channel=item.target,
                    content=base64.b64decode(str(encoded)),
                    filename=str(payload.get("image_name") or "image.png"),
                )
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("image upload to %s failed: %s", item.target, exc)
                return False
            return True

        async def assume_done() -> bool:
            return True  # at most once: a second chart is no better than a missing one

        await item.step("image", upload, find=assume_done)

    # ------------------------------------------------------------------ files

    async def _file_links(self, attachments: list[dict[str, Any]]) -> dict[str, str]:
        """Permalinks of Slack files (best effort: a name without a link is fine)."""
        links: dict[str, str] = {}
        for a in attachments:
            if a.get("channel") != CHANNEL or not a.get("file_id"):
                continue
            try:
                resp = await self.client.files_info(file=str(a["file_id"]))
            except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.info("files.info %s failed: %s", a.get("file_id"), exc)
                continue
            file = resp.get("file") or {}
            if file.get("permalink"):
                links[str(a["file_id"])] = str(file["permalink"])
        return links
