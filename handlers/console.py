"""The local console channel: chat with the bot as an end user, or work tickets as L2.

``firstline chat`` (and ``firstline run`` with no platform tokens) starts it. On a terminal
it is interactive; with stdin from a pipe it reads one line at a time, where a line that
is only a number presses that button — so whole sessions can be scripted. Both sides share
the database, so a user console and an L2 console in two terminals talk to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import logging
import os
import shlex
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TextIO

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select

from bot.app import App
from bot.domain import AgentAction, AgentEvent, Attachment, UserEvent, UserRef
from bot.outbox import Dispatcher, OutboxItem, SendResult
from bot.storage.models import Ticket
from escalation.card import build_card, render_plain
from escalation.desk import OPEN_STATUSES

CHANNEL = "console"
L2_TARGETS = ("l2", "l3")


def default_user() -> str:
    """The local account name, for a friendly default identity."""
    try:
        return getpass.getuser() or "demo"
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER") or "demo"


class ConsoleSender:
    """Prints outbox rows for one console party and remembers the last buttons."""

    channel = CHANNEL

    def __init__(self, out: TextIO, *, agent: bool) -> None:
        self.out = out
        self.agent = agent
        self.buttons: list[str] = []  # button data by displayed number (1-based)

    def _print(self, text: str) -> None:
        self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()

    async def send(self, item: OutboxItem) -> SendResult:
        """Render one row as text."""
        p = item.payload
        if item.kind == "message":
            text = str(p.get("text", ""))
            if p.get("markdown"):
                text = text.replace("**", "").replace("`", "")
            self._print(f"bot> {text}")
            for a in p.get("attachments", []) or []:
                self._print(f"     📎 {a.get('name') or a.get('kind')}")
            rows = p.get("buttons") or []
            if rows:
                self.buttons = []
                for row in rows:
                    for b in row:
                        self.buttons.append(str(b.get("data", "")))
                        self._print(f"  [{len(self.buttons)}] {b.get('label', '')}")
            return SendResult()
        card = item.card
        number = card.number if card else "?"
        if item.kind == "ticket_card":
            if card is None:
                return SendResult()
            head = "🆕 new ticket" if p.get("new") else "🔄 ticket updated"
            self._print(f"l2> {head}\n" + _indent(render_plain(card)))
            if card.actions and p.get("new"):
                self._print("     actions: " + ", ".join(a for a, _ in card.actions))
            return SendResult(links=[("card", f"card:{item.id}", None)])
        if item.kind == "ticket_post":
            role = p.get("role")
            if role == "user":
                self._print(f"l2> [{number}] 💬 {p.get('author') or 'user'}: {p.get('text', '')}")
                for a in p.get("attachments", []) or []:
                    self._print(f"     📎 {a.get('name') or a.get('kind')}")
            elif role == "user_edit":
                self._print(
                    f"l2> [{number}] ✏️ {p.get('author') or 'user'} edited: {p.get('text', '')}"
                )
            else:
                self._print(f"l2> [{number}] {p.get('text', '')}")
            return SendResult()
        if item.kind in ("agent_notice", "notify"):
            self._print(f"l2> {p.get('text', '')}")
            return SendResult()
        self._print(f"?> {item.kind}: {p}")
        return SendResult()


def _indent(text: str) -> str:
    return "\n".join("     " + line for line in text.splitlines())


def _event_id() -> str:
    return uuid.uuid4().hex


async def _read_lines(stream: TextIO, interactive: bool, prompt: str) -> asyncio.Queue[str | None]:
    """Feed stdin lines into a queue from a thread, so delivery keeps running meanwhile."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def reader() -> None:
        while True:
            try:
                line = input(prompt) if interactive else stream.readline()
            except (EOFError, KeyboardInterrupt):
                line = ""
                loop.call_soon_threadsafe(queue.put_nowait, None)
                return
            if not interactive and line == "":
                loop.call_soon_threadsafe(queue.put_nowait, None)
                return
            loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\r\n"))

    # A daemon thread: a blocked input() must not keep the process alive after `quit`.
    threading.Thread(target=reader, name="console-input", daemon=True).start()
    return queue


class SerialDelivery:
    """Delivery for a console: the background poll and the per-line drain never overlap,
    so a line that presses a button is read only after that button was printed."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.lock = asyncio.Lock()

    async def drain(self) -> None:
        """Deliver everything due, waiting for a background pass in flight."""
        async with self.lock:
            await self.dispatcher.drain()

    async def poll(self, stop: asyncio.Event, seconds: float = 1.0) -> None:
        """Deliver what other processes queue for us (L2 replies, SLA notices)."""
        while not stop.is_set():
            try:
                await self.drain()
            except Exception:  # a broken pass must not end the chat
                logging.getLogger(__name__).exception("console delivery failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)


async def _start_timers(app: App) -> AsyncIOScheduler:
    """SLA timers run in console processes too: the L2 console shows warnings and breaches."""
    from handlers.server import schedule_flood_flush

    scheduler = AsyncIOScheduler(timezone=UTC)
    app.timers.attach(scheduler)
    schedule_flood_flush(app, scheduler, lambda: None)
    await app.timers.sweep()  # whatever came due while nothing ran
    scheduler.start()
    return scheduler


class ConsoleUser:
    """An end user typing into the terminal."""

    def __init__(self, app: App, name: str, lang: str | None, out: TextIO = sys.stdout) -> None:
        self.app = app
        self.user = UserRef(CHANNEL, name, display_name=name, language_code=lang)
        self.chat_id = f"user:{name}"
        self.sender = ConsoleSender(out, agent=False)
        self.dispatcher: Dispatcher = app.dispatcher(
            {CHANNEL: self.sender}, target_filter=lambda _c, target: target == self.chat_id
        )
        self.delivery = SerialDelivery(self.dispatcher)

    def event_for(self, line: str) -> UserEvent | None:
        """Translate one typed line into a user event (``None`` for a blank line)."""
        text = line.strip()
        if not text:
            return None
        base = functools.partial(UserEvent, CHANNEL, _event_id(), self.user, self.chat_id)
        if text.startswith("/attach"):
            path = text[len("/attach") :].strip()
            if not path:
                return base(kind="message", text="")
            att = Attachment(kind="document", file_id=path, name=Path(path).name, channel=CHANNEL)
            return base(kind="message", attachments=(att,))
        if text.startswith("/") and len(text) > 1 and text[1].isalpha():
            command, _, args = text[1:].partition(" ")
            return base(kind="command", command=command.lower(), args=args)
        if text.isdecimal() and self.sender.buttons:
            i = int(text)
            if 1 <= i <= len(self.sender.buttons):
                return base(kind="button", data=self.sender.buttons[i - 1])
        return base(kind="message", text=text)

    async def handle_line(self, line: str) -> None:
        """Process one line and print every reply."""
        ev = self.event_for(line)
        if ev is None:
            return
        result = await self.app.handle_user(ev)
        if result.ack:
            self.sender._print(f"bot> ({result.ack})")
        await self.delivery.drain()

    async def run(self, stream: TextIO = sys.stdin) -> None:
        """Chat until EOF (or Ctrl-D / Ctrl-C on a terminal)."""
        interactive = stream.isatty()
        scheduler = await _start_timers(self.app)
        self.app.timers.after_fire = self.dispatcher.wake
        await self.delivery.drain()  # whatever L2 said while we were away
        if interactive:
            self.sender._print(
                "firstline console — you are the end user "
                f"'{self.user.user_id}'. Type your problem; a number presses a button; "
                "/help for commands; /attach PATH sends a file; Ctrl-D quits.\n"
                "L2 side: run `firstline chat --as l2` in another terminal."
            )
        # After a crash or a restart, show the pending question again with its buttons
        # (on a terminal, greet when nothing is pending).
        await self.handle_line("/resume greet" if interactive else "/resume")
        queue = await _read_lines(stream, interactive, "you> ")
        stop = asyncio.Event()
        poller = asyncio.create_task(self.delivery.poll(stop))
        try:
            while True:
                line = await queue.get()
                if line is None:
                    break
                await self.handle_line(line)
        finally:
            stop.set()
            await poller
            scheduler.shutdown(wait=False)
            await self.delivery.drain()


L2_HELP = """Commands (TICKET may be omitted after `use TICKET`; plain text replies to it):
  list | tickets           open tickets          show TICKET        the card
  use TICKET               make it current       take TICKET        claim it
  reply TICKET TEXT        answer the user       note TICKET TEXT   internal note (or //TEXT)
  wait TICKET [QUESTION]   ask the customer      resolve TICKET [TEXT]
  release TICKET           back to the queue     reassign TICKET NAME
  l3 TICKET [WHY]          escalate to L3        back TICKET        return from L3
  priority TICKET LEVEL    critical/high/normal/low
  tier TICKET TIER         correct the customer's license tier
  kb TICKET [ANSWER]       save the answer as a KB draft
  reopen TICKET            reopen a resolved ticket
  ban TICKET / unban TICKET   stop / allow the ticket's user     help | quit"""

_ACTIONS: dict[str, AgentAction] = {
    "take": "claim",
    "claim": "claim",
    "reply": "reply",
    "note": "note",
    "wait": "wait",
    "ask": "wait",
    "resolve": "resolve",
    "release": "release",
    "reassign": "reassign",
    "l3": "l3",
    "back": "l3_back",
    "priority": "priority",
    "tier": "tier",
    "kb": "save_kb",
    "reopen": "reopen",
    "ban": "ban",
    "unban": "unban",
}


class ConsoleAgent:
    """An L2 consultant working tickets from the terminal."""

    def __init__(self, app: App, name: str, out: TextIO = sys.stdout) -> None:
        self.app = app
        self.agent = UserRef(CHANNEL, name, display_name=name)
        self.sender = ConsoleSender(out, agent=True)
        self.print: Callable[[str], None] = self.sender._print
        self.current: str | None = None
        self.dispatcher = app.dispatcher(
            {CHANNEL: self.sender}, target_filter=lambda _c, target: target in L2_TARGETS
        )
        self.delivery = SerialDelivery(self.dispatcher)

    async def list_tickets(self) -> None:
        """Print the open tickets, oldest first."""
        async with self.app.db.transaction() as s:
            rows = list(
                (
                    await s.execute(
                        select(Ticket).where(Ticket.status.in_(OPEN_STATUSES)).order_by(Ticket.id)
                    )
                ).scalars()
            )
            if not rows:
                self.print("no open tickets")
                return
            for tk in rows:
                card = await build_card(s, self.app.desk, tk, self.app.clock.now())
                sla = "; ".join(f"{d.label} {d.state}" for d in card.deadlines)
                self.print(
                    f"{card.number:<9} {card.status_label:<22} {card.priority:<8} "
                    f"{card.owner_name or '-':<12} {card.user_name:<14} {card.subject[:40]}"
                    + (f"  [{sla}]" if sla else "")
                )

    async def show(self, number: str) -> None:
        """Print a ticket's card."""
        async with self.app.db.transaction() as s:
            tk = await self.app.desk.by_number(s, number)
            if tk is None:
                self.print(f"no ticket {number}")
                return
            self.print(render_plain(await build_card(s, self.app.desk, tk, self.app.clock.now())))

    def _split_ticket(self, args: list[str]) -> tuple[str | None, list[str]]:
        if args and self.app.desk.parse_number(args[0]) is not None:
            return args[0], args[1:]
        return self.current, args

    async def handle_line(self, line: str) -> bool:
        """Process one line; ``False`` means quit."""
        text = line.strip()
        if not text:
            return True
        try:
            words = shlex.split(text)
        except ValueError:
            words = text.split()
        cmd = words[0].lower()
        args = words[1:]
        if cmd in ("quit", "exit"):
            return False
        if cmd in ("help", "?"):
            self.print(L2_HELP)
            return True
        if cmd in ("list", "tickets", "ls"):
            await self.list_tickets()
            return True
        if cmd in ("show", "use") and args:
            number, _ = self._split_ticket(args)
            if number is None:
                self.print(f"not a ticket number: {args[0]}")
                return True
            if cmd == "use":
                self.current = number
                self.print(f"current ticket: {number}")
            await self.show(number)
            return True
        action: AgentAction
        value = ""
        if cmd in _ACTIONS:
            action = _ACTIONS[cmd]
            number, rest = self._split_ticket(args)
            if action in ("priority", "tier"):
                value = rest[0] if rest else ""
                rest = rest[1:]
            elif action == "reassign":
                name = rest[0] if rest else ""
                value = f"{CHANNEL}:{name}|{name}"
                rest = rest[1:]
            # Keep the user's spacing: take the text after the command words from the line.
            body = _tail(text, len(words) - len(rest)) if rest else ""
        else:
            action = "message"
            number = self.current
            body = text
        if number is None:
            self.print(
                "which ticket? name it (FL-1001) or `use FL-1001` first; `help` lists commands"
            )
            return True
        if action in ("claim", "reply", "note", "wait", "resolve"):
            self.current = number
        ev = AgentEvent(
            channel=CHANNEL,
            event_id=_event_id(),
            agent=self.agent,
            destination="console:l2",
            action=action,
            ticket=number,
            text=body,
            value=value,
        )
        result = await self.app.handle_agent(ev)
        if result.ack and not result.refused:
            self.print(f"ok: {result.ack}")
        await self.delivery.drain()
        return True

    async def run(self, stream: TextIO = sys.stdin) -> None:
        """Work tickets until EOF or ``quit``."""
        interactive = stream.isatty()
        if interactive:
            self.print(f"firstline L2 console — you are consultant '{self.agent.user_id}'.")
            self.print(L2_HELP)
        scheduler = await _start_timers(self.app)
        self.app.timers.after_fire = self.dispatcher.wake
        await self.delivery.drain()
        queue = await _read_lines(stream, interactive, "l2> ")
        stop = asyncio.Event()
        poller = asyncio.create_task(self.delivery.poll(stop))
        try:
            while True:
                line = await queue.get()
                if line is None or not await self.handle_line(line):
                    break
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await poller
            scheduler.shutdown(wait=False)
            await self.delivery.drain()


def _tail(line: str, skip_words: int) -> str:
    """``line`` without its first ``skip_words`` whitespace-separated words."""
    rest = line
    for _ in range(skip_words):
        rest = rest.lstrip()
        cut = rest.find(" ")
        rest = "" if cut == -1 else rest[cut:]
    return rest.strip()
