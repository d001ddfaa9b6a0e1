"""An in-memory channel: the same port as Telegram and Slack, for end-to-end tests.

Tests drive the real engine with :class:`MemoryChannel` and read what each chat or L2
destination received — no platform, no network, no sleeping.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from bot.app import App
from bot.domain import AgentAction, AgentEvent, Attachment, HandleResult, UserEvent, UserRef
from bot.outbox import Dispatcher, OutboxItem, SendResult

CHANNEL = "memory"


@dataclass
class Delivered:
    """One delivered outbox row."""

    target: str
    kind: str
    payload: dict[str, Any]
    card: Any = None

    @property
    def text(self) -> str:
        """The text of a message or post."""
        return str(self.payload.get("text", ""))

    def buttons(self) -> list[dict[str, str]]:
        """The buttons of a message, flattened."""
        return [b for row in self.payload.get("buttons", []) or [] for b in row]


class MemorySender:
    """Records deliveries; can be told to fail the next calls for a target."""

    channel = CHANNEL

    def __init__(self) -> None:
        self.delivered: list[Delivered] = []
        self.fail_next: dict[str, list[SendResult]] = {}
        self._ids = itertools.count(1)

    async def send(self, item: OutboxItem) -> SendResult:
        """Record the item, or return a queued failure for its target."""
        queued = self.fail_next.get(item.target)
        if queued:
            return queued.pop(0)
        self.delivered.append(Delivered(item.target, item.kind, item.payload, item.card))
        links: list[tuple[str, str, int | None]] = []
        if item.kind == "ticket_card" and "card" not in item.links:
            links.append(("card", f"m{next(self._ids)}", None))
        elif item.kind == "ticket_post":
            links.append(("relay", f"m{next(self._ids)}", item.payload.get("message_id")))
        return SendResult(links=links)


@dataclass
class MemoryChannel:
    """Drives users and consultants through the real application."""

    app: App
    sender: MemorySender = field(default_factory=MemorySender)
    dispatcher: Dispatcher | None = None
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.dispatcher = self.app.dispatcher({CHANNEL: self.sender})
        # Ids unique per channel instance: a second instance is a new platform session.
        self._prefix = uuid.uuid4().hex[:8]

    def _id(self) -> str:
        return f"{self._prefix}-{next(self._seq)}"

    @staticmethod
    def user(name: str, lang: str = "en") -> UserRef:
        """A user identity."""
        return UserRef(CHANNEL, name, display_name=name.title(), language_code=lang)

    async def deliver(self) -> None:
        """Send everything that is due."""
        assert self.dispatcher is not None
        await self.dispatcher.drain()

    async def say(
        self,
        name: str,
        text: str,
        *,
        lang: str = "en",
        event_id: str | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> HandleResult:
        """The user ``name`` writes ``text``."""
        ev = UserEvent(
            CHANNEL,
            event_id or self._id(),
            self.user(name, lang),
            name,
            "message",
            text=text,
            attachments=attachments,
            message_id=event_id,
        )
        res = await self.app.handle_user(ev)
        await self.deliver()
        return res

    async def command(
        self, name: str, command: str, args: str = "", *, lang: str = "en"
    ) -> HandleResult:
        """The user ``name`` sends ``/command args``."""
        ev = UserEvent(
            CHANNEL, self._id(), self.user(name, lang), name, "command", command=command, args=args
        )
        res = await self.app.handle_user(ev)
        await self.deliver()
        return res

    async def press(self, name: str, label_part: str, *, lang: str = "en") -> HandleResult:
        """The user presses the newest button whose label contains ``label_part``."""
        for d in reversed(self.messages(name)):
            for b in d.buttons():
                if label_part.lower() in b["label"].lower():
                    return await self.press_data(name, b["data"], lang=lang)
        raise AssertionError(f"no button {label_part!r} for {name}: {self.transcript(name)}")

    async def press_data(self, name: str, data: str, *, lang: str = "en") -> HandleResult:
        """The user presses a button with raw ``data``."""
        ev = UserEvent(CHANNEL, self._id(), self.user(name, lang), name, "button", data=data)
        res = await self.app.handle_user(ev)
        await self.deliver()
        return res

    async def agent(
        self,
        name: str,
        action: AgentAction,
        ticket: str | None = None,
        text: str = "",
        value: str = "",
        *,
        member: bool = True,
    ) -> HandleResult:
        """The consultant ``name`` acts on ``ticket``."""
        ev = AgentEvent(
            CHANNEL,
            self._id(),
            UserRef(CHANNEL, name, display_name=name.title()),
            "memory:l2",
            action,
            ticket=ticket,
            text=text,
            value=value,
            is_member=member,
        )
        res = await self.app.handle_agent(ev)
        await self.deliver()
        return res

    def messages(self, name: str) -> list[Delivered]:
        """Everything the user's chat received."""
        return [d for d in self.sender.delivered if d.target == name and d.kind == "message"]

    def last(self, name: str) -> str:
        """The newest message text in the user's chat."""
        msgs = self.messages(name)
        return msgs[-1].text if msgs else ""

    def transcript(self, name: str) -> str:
        """The user's chat as text (for assertion messages)."""
        return "\n---\n".join(d.text for d in self.messages(name))

    def l2(self, target: str = "l2") -> list[Delivered]:
        """Everything delivered to an L2 destination."""
        return [d for d in self.sender.delivered if d.target == target]
