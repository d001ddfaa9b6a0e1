"""The Slack side of the outbox: one Web API call (or two) per outbox row.

It works for any ticket, whatever platform its user is on: cards, thread posts and notices
go to the Slack L2/L3 channel named by the row's target; ``message`` rows go only to Slack
DM chat keys (the DM channel id the user's events came from).
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

_COMMON: dict[str, Any] = {"unfurl_links": False, "unfurl_media": False}


def _error_code(exc: SlackApiError) -> str:
    data = exc.response.data if exc.response is not None else None
    if isinstance(data, Mapping):
        return str(data.get("error") or "")
    return ""


def _first(keys: list[str] | None) -> str | None:
    return keys[0] if keys else None


def failure(kind: str, exc: SlackApiError) -> SendResult:
    """Map a Web API error to the outbox's retry vocabulary."""
    resp = exc.response
    status = int(getattr(resp, "status_code", 0) or 0)
    code = _error_code(exc)
    error = f"slack {status} {code}".strip()
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
            return SendResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
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
        await self.client.chat_postMessage(channel=item.target, text=text, blocks=blocks, **_COMMON)
        await self._image(item.target, p)
        return SendResult()

    async def _card(self, item: OutboxItem) -> SendResult:
        card = item.card
        if card is None:  # the ticket is gone; nothing to show
            return SendResult()
        existing = _first(item.links.get("card"))
        if existing is not None:
            try:
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
                ts = await self._post_card(item.target, card)
                return SendResult(links=[("card", ts, None)], drop_roles=["card"])
        ts = await self._post_card(item.target, card)
        return SendResult(links=[("card", ts, None)])

    async def _post_card(self, channel: str, card: TicketCard) -> str:
        resp = await self.client.chat_postMessage(
            channel=channel,
            text=card_fallback(card),
            blocks=card_blocks(card, PRIORITIES),
            **_COMMON,
        )
        return str(resp["ts"])

    async def _post(self, item: OutboxItem) -> SendResult:
        links: list[tuple[str, str, int | None]] = []
        parent = _first(item.links.get("card"))
        lang = item.card.lang if item.card is not None else "en"
        if parent is None and item.card is not None:
            # The card never made it (failed row, deleted, new destination): thread needs one.
            parent = await self._post_card(item.target, item.card)
            links.append(("card", parent, None))
        attachments = list(item.payload.get("attachments") or [])
        body = post_text(item.payload, lang, await self._file_links(attachments))
        resp = await self.client.chat_postMessage(
            channel=item.target,
            thread_ts=parent,
            text=fallback(body),
            blocks=sections(body),
            **_COMMON,
        )
        message_id = item.payload.get("message_id")
        links.append(("relay", str(resp["ts"]), int(message_id) if message_id else None))
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
        await self.client.chat_postMessage(
            channel=item.target, text=fallback(text), blocks=sections(text), **_COMMON
        )
        await self._image(item.target, item.payload)
        return SendResult()

    async def _image(self, channel: str, payload: dict[str, Any]) -> None:
        """A PNG the core made (the digest chart); needs the ``files:write`` scope. The text
        already went out, so a failed upload is logged, not retried (no duplicate text)."""
        encoded = payload.get("image_png_b64")
        if not encoded:
            return
        try:
            await self.client.files_upload_v2(
                channel=channel,
                content=base64.b64decode(str(encoded)),
                filename=str(payload.get("image_name") or "image.png"),
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("image upload to %s failed: %s", channel, exc)

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
