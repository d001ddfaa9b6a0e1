"""Platform-independent events in and actions out.

Adapters translate a platform update into one of these events, hand it to
:class:`bot.service.SupportService`, and deliver whatever lands in the outbox. Nothing
here knows about Telegram or Slack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Lang(StrEnum):
    """Languages the bot speaks."""

    EN = "en"
    RU = "ru"


def pick_lang(code: str | None, default: str = "en") -> str:
    """Map a platform language code (``ru-RU``, ``en``, ``uk``) to a supported language."""
    if code:
        base = code.split("-")[0].split("_")[0].lower()
        if base in ("ru", "uk", "be", "kk"):  # users of these locales usually read Russian
            return "ru"
        if base == "en":
            return "en"
    return default


@dataclass(frozen=True)
class UserRef:
    """Who sent an event, as the platform knows them."""

    channel: str  # "telegram", "slack", "console", "memory"
    user_id: str
    display_name: str = ""
    username: str | None = None
    language_code: str | None = None
    timezone: str | None = None  # IANA name if the platform tells it (Slack does)

    @property
    def key(self) -> str:
        """A stable global id such as ``telegram:123``."""
        return f"{self.channel}:{self.user_id}"


@dataclass(frozen=True)
class Attachment:
    """A file the user or consultant sent; the platform keeps the bytes, we keep the reference."""

    kind: str  # photo, document, voice, video, audio, file
    file_id: str
    name: str | None = None
    mime: str | None = None
    size: int | None = None
    group_id: str | None = None  # album / media group the file belongs to
    channel: str = ""  # the platform that can resolve file_id

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "kind": self.kind,
            "file_id": self.file_id,
            "name": self.name,
            "mime": self.mime,
            "size": self.size,
            "group_id": self.group_id,
            "channel": self.channel,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Attachment:
        """Inverse of :meth:`to_json`."""
        return cls(
            kind=str(d.get("kind", "file")),
            file_id=str(d.get("file_id", "")),
            name=d.get("name"),
            mime=d.get("mime"),
            size=d.get("size"),
            group_id=d.get("group_id"),
            channel=str(d.get("channel", "")),
        )


UserEventKind = Literal["message", "button", "command", "edit", "unsupported"]


@dataclass(frozen=True)
class UserEvent:
    """Something an end user did in their private chat with the bot."""

    channel: str
    event_id: str  # platform-unique; a second delivery is ignored
    user: UserRef
    chat_id: str
    kind: UserEventKind
    text: str = ""
    data: str = ""  # button payload
    command: str = ""  # without the slash: start, help, new, status, cancel, lang
    args: str = ""
    attachments: tuple[Attachment, ...] = ()
    message_id: str | None = None  # the platform message (for edits and relays)
    unsupported: str | None = None  # what kind of thing it was (sticker, location...)


AgentAction = Literal[
    "message",  # plain message in the ticket thread: a reply, or a note with the prefix
    "reply",
    "note",
    "claim",
    "release",
    "reassign",
    "wait",  # ask the customer; SLA paused
    "resolve",
    "reopen",
    "l3",
    "l3_back",
    "priority",
    "tier",
    "save_kb",
    "edit",
    "list",
    "show",
    "ban",  # the ticket's user: their messages stay with the bot and never reach L2
    "unban",
]


@dataclass(frozen=True)
class AgentEvent:
    """Something a consultant did in the L2 (or L3) destination."""

    channel: str
    event_id: str
    agent: UserRef
    destination: str  # e.g. "telegram:-100123" — where it happened
    action: AgentAction
    ticket: str | None = None  # ticket number such as "FL-1042", if the platform knows it
    thread_ref: str | None = None  # topic id or replied-to message id, to find the ticket
    text: str = ""
    value: str = ""  # new priority, assignee...
    attachments: tuple[Attachment, ...] = ()
    message_id: str | None = None
    is_member: bool = False  # the platform vouches the agent belongs to the L2 channel
    # For a reply in a thread the desk may not know (a card whose post was never recorded):
    # the ticket its root message names (card metadata, signed card buttons), and whether
    # the root is a message the bot posted. Adapters fill these; the desk decides.
    root_ticket: str | None = None
    root_is_bot: bool = False
    # The thread is a chain of replies (a Telegram group without topics): this message
    # becomes part of it, so a colleague's reply to it finds the ticket too.
    reply_chain: bool = False


@dataclass(frozen=True)
class Button:
    """A choice offered to the user; ``data`` comes back in a ``button`` event."""

    label: str
    data: str

    def to_json(self) -> dict[str, str]:
        """A JSON-serialisable dict."""
        return {"label": self.label, "data": self.data}

    @classmethod
    def bound(cls, nonce: int, label: str, action: str) -> Button:
        """A button bound to the chat's prompt ``nonce``: ``"<nonce>|<action>"``; a press
        with an older nonce is a stale button."""
        return cls(label=label, data=f"{nonce}|{action}")


def csat_rows(nonce: int) -> list[list[Button]]:
    """The 1-5 rating buttons."""
    return [[Button.bound(nonce, str(i), f"csat:{i}") for i in range(1, 6)]]


@dataclass
class OutMessage:
    """A message to a user's chat, written to the outbox."""

    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    markdown: bool = False  # text is Markdown (KB article bodies); else plain text
    attachments: list[Attachment] = field(default_factory=list)

    def to_payload(self) -> dict[str, Any]:
        """The outbox payload."""
        return {
            "text": self.text,
            "buttons": [[b.to_json() for b in row] for row in self.buttons],
            "markdown": self.markdown,
            "attachments": [a.to_json() for a in self.attachments],
        }


@dataclass(frozen=True)
class HandleResult:
    """What the adapter needs right away (e.g. the text for a callback answer)."""

    duplicate: bool = False
    ack: str | None = None  # short toast for a button press
    refused: bool = False
