"""Exactly-once through crashes: a long scripted session while ``firstline run`` is SIGKILLed
at random moments and restarted, then an audit of everything the fake Slack and the fake
Telegram saw.

The bot runs as a real process in Slack HTTP mode against the fake Slack Web API
(:mod:`tests.fakes.slack_api`), on SQLite, with a 24/7 second-level SLA so every ticket gets
its warning, breach and manager escalation during the test. Eight Slack users (and two
Telegram users) each walk to a ticket, write five messages into it, and get three consultant
replies (sent only after the ticket's manager escalation, so the SLA notices are
deterministic). Meanwhile a killer task SIGKILLs
the process at seeded random moments (``FIRSTLINE_CRASH_SEED`` replays a schedule) and starts
it again on the same port and database. The driver behaves like Slack: a request the bot did
not acknowledge with 200 (refused connection, reset, 5xx) is delivered again with the same
``event_id``; a button press or command is repeated. Slack's ``users.info`` is slow now and
then (2.6 s), so some requests overrun the bot's ack budget and are acknowledged after being
parked in the inbox, before their work commits. Telegram users (long polling against the
fake Bot API) escalate to a Telegram forum desk at the same time.

At the end: every user message is in its ticket's thread exactly once and in order; every
consultant reply is in the user's DM exactly once and in order; every SLA notice once per
ticket; one card per ticket; no outbox row left unsent; no life of the process died with a
traceback. On Telegram the same: a text call a kill interrupted is probed for (an identical
``editMessageText`` above the chat's recorded high-water mark) and recorded if found, so a
copy is allowed only in a chat where the bot logged that the probe could not tell (a topic
or a private chat without a bound) and sent the call again.

Exactly once holds because the outbox marks a row in flight when it claims it, saves each
call's result before the next call, and every Slack post carries metadata naming its row
and step: a post whose record a SIGKILL prevented is found with ``conversations.history`` /
``conversations.replies`` and recorded instead of posted again. Any duplicate post fails the
test; the audit says which lives sent the copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.crash_support import (
    FIRSTLINE,
    L2,
    TG_L2,
    TICKET_NUMBER,
    TRACEBACK,
    BotProcess,
    Deliverer,
    StampedSlackApi,
    call_text,
    content_dir,
)
from tests.fakes.slack_api import ApiCall, block_actions, dm_event, slash_command, thread_reply
from tests.fakes.telegram_api import FakeMessage, FakeTelegramAPI, FakeUser

# Read at import: the autouse fixture of tests/conftest.py clears FIRSTLINE_* variables.
SEED_ENV = os.environ.get("FIRSTLINE_CRASH_SEED", "")

KILLS = 10
USERS = [f"UCR{n:02d}" for n in range(1, 9)]
AGENTS = ["UAGA", "UAGB"]
# Telegram users (private chats) with their desk in a Telegram forum, a topic per ticket.
# Few: the bot keeps Telegram's 20 posts a minute per group.
TG_USERS = [6001, 6002]
TG_AGENT = 9101
# What the bot logs when it sends a Telegram call again that may have landed before a kill
# (the probe could not tell), and when the probe found nothing there.
TG_RESENT = re.compile(
    r"telegram: (\S+) of outbox row (\d+) in chat (-?\d+) is in doubt and the probe"
)
TG_ABSENT = "was in doubt; not there, sending"
# A private-chat probe that handed its row back to wait for an id allocated after the doubt,
# and one that gave up waiting (then sends again: a TG_RESENT line follows for that row).
TG_WAITED = re.compile(r"telegram: outbox row (\d+) in chat (-?\d+): \S+ is in doubt: waiting")
TG_NO_BOUND = re.compile(r"no private-chat id allocated after the doubt of outbox row (\d+)")
USER_MESSAGES = 5
REPLIES = 3
STAGGER = 1.2  # seconds between users' first steps
# Bound of every wait for the bot. Generous: on a loaded machine a start (imports,
# migrations) takes over ten seconds, and the killer may strike again soon after.
WAIT = 120.0

MARKERS = {"warning": "SLA 50% used", "breach": "SLA breached", "manager": "Escalation to managers"}

# Minutes of SIGKILLs: run on demand with `./dev test -m crash tests/test_crash.py`.
pytestmark = [
    pytest.mark.crash,
    pytest.mark.xdist_group("crash"),
    pytest.mark.skipif(not FIRSTLINE.exists(), reason="the firstline script is not installed"),
]


def _utok(user: str, k: int) -> str:
    return f"[{user} m{k}]"


def _rtok(user: str, k: int) -> str:
    return f"[{user} r{k}]"


class Session:
    """The scripted users and consultants, and what they wait for."""

    def __init__(self, api: StampedSlackApi, dl: Deliverer, t0: float) -> None:
        self.api = api
        self.dl = dl
        self.t0 = t0
        self.tickets: dict[str, str] = {}  # user -> FL-number
        self.cards: dict[str, str] = {}  # user -> card ts (the thread)
        self.progress: dict[str, str] = {}

    def note(self, user: str, what: str) -> None:
        self.progress[user] = what

    def posts(self, channel: str) -> list[ApiCall]:
        return self.api.posts(channel)

    async def wait(self, predicate: Any, what: str, within: float = WAIT) -> Any:
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; progress: {self.progress}")
            await asyncio.sleep(0.05)

    def _control(
        self, channel: str, call: ApiCall, label: str
    ) -> tuple[dict[str, Any], str, dict[str, Any]] | None:
        """(message, block_id, button) of a live button labelled ``label`` in a post."""
        msg = self.api.messages.get((channel, str(call.response.get("ts"))))
        if msg is None:
            return None
        for block in msg.get("blocks") or []:
            if block.get("type") != "actions":
                continue
            for el in block.get("elements", []):
                text = (el.get("text") or {}).get("text", "")
                if label.lower() in text.lower():
                    return msg, str(block.get("block_id", "")), el
        return None

    async def press(self, user: str, label: str, after: int) -> int:
        """Wait for a post (from index ``after``) with the button, press it; the new index."""
        dm = "D" + user
        self.note(user, f"waiting for button {label!r}")

        def find() -> tuple[dict[str, Any], str, dict[str, Any]] | None:
            for call in reversed(self.posts(dm)[after:]):
                found = self._control(dm, call, label)
                if found is not None:
                    return found
            return None

        msg, block_id, el = await self.wait(find, f"{user}: button {label!r}")
        mark = len(self.posts(dm))
        payload = block_actions(user=user, channel=dm, message=msg, block_id=block_id, element=el)
        await self.dl.interaction(payload, f"{user} presses {label!r}")
        return mark

    async def said(self, user: str, needle: str, after: int) -> ApiCall:
        dm = "D" + user
        self.note(user, f"waiting for {needle!r}")
        found: ApiCall = await self.wait(
            lambda: next((c for c in self.posts(dm)[after:] if needle in call_text(c)), None),
            f"{user}: {needle!r}",
        )
        return found

    async def user(self, i: int) -> None:
        user = USERS[i]
        await asyncio.sleep(i * STAGGER)
        number = await self.to_ticket(user)
        for k in range(1, 4):
            self.note(user, f"message {k}")
            await self.dl.event(
                dm_event(user, f"{_utok(user, k)} still broken, attempt {k}"), f"{user} m{k}"
            )
        self.note(user, "waiting for the manager escalation")
        await self.wait(
            lambda: any(
                MARKERS["manager"] in call_text(c) and number in call_text(c)
                for c in self.posts(L2)
            ),
            f"the manager escalation of {number}",
        )
        agent = AGENTS[i % len(AGENTS)]
        # Replies interleaved with the user's last messages: r1 m4 r2 m5 r3.
        for k in range(1, REPLIES + 1):
            self.note(user, f"reply {k}")
            await self.reply(agent, user, k)
            m = REPLIES + k
            if m <= USER_MESSAGES:
                await self.dl.event(
                    dm_event(user, f"{_utok(user, m)} still broken, attempt {m}"), f"{user} m{m}"
                )
        self.note(user, "sent everything")

    async def reply(self, agent: str, user: str, k: int) -> None:
        """The consultant writes reply ``k`` in the ticket's thread."""
        await self.dl.event(
            thread_reply(
                agent,
                L2,
                self.cards[user],
                f"{_rtok(user, k)} please try step {k}",
                parent_user_id="UBOT",
            ),
            f"{agent} r{k} to {user}",
        )

    async def to_ticket(self, user: str) -> str:
        """/support new -> category -> checklist -> details -> Done -> urgency: the number."""
        dm = "D" + user
        self.note(user, "command")
        mark = len(self.posts(dm))
        await self.dl.command(slash_command(user, "new", channel=dm), f"{user}: /support new")
        mark = await self.press(user, "Crash test", mark)
        mark = await self.press(user, "Escalate now", mark)
        await self.said(user, "describe", mark)
        mark = len(self.posts(dm))
        await self.dl.event(dm_event(user, f"details of {user}: it broke"), f"{user}: details")
        mark = await self.press(user, "Done", mark)
        mark = await self.press(user, "Normal", mark)
        created = await self.said(user, "is created", mark)
        number = TICKET_NUMBER.search(call_text(created))
        assert number, call_text(created)
        self.tickets[user] = number.group(1)
        self.note(user, f"waiting for the card of {number.group(1)}")
        card = await self.wait(
            lambda: next(
                (
                    c
                    for c in self.posts(L2)
                    if not c.params.get("thread_ts")
                    and number.group(1) in call_text(c)
                    and "Escalation to managers" not in call_text(c)
                ),
                None,
            ),
            f"the card of {number.group(1)}",
        )
        self.cards[user] = str(card.response["ts"])
        return number.group(1)

    def _delivered(self, user: str) -> bool:
        thread = [call_text(c) for c in self.api.posts(L2, thread_ts=self.cards[user])]
        dm = [call_text(c) for c in self.posts("D" + user)]
        return all(
            any(_utok(user, k) in t for t in thread) for k in range(1, USER_MESSAGES + 1)
        ) and all(any(_rtok(user, k) in t for t in dm) for k in range(1, REPLIES + 1))


def _tg_utok(uid: int, k: int) -> str:
    return f"[TG{uid} m{k}]"


def _tg_rtok(uid: int, k: int) -> str:
    return f"[TG{uid} r{k}]"


class TgSession:
    """The Telegram users and their consultant: updates go into the fake's queue, which keeps
    them until the bot confirms them, so a kill never loses one (no re-delivery needed)."""

    def __init__(self, fake: FakeTelegramAPI, slack: Session) -> None:
        self.fake = fake
        self.slack = slack  # for wait() and the progress notes
        self.users = {uid: fake.user(uid, f"Tg{uid}") for uid in TG_USERS}
        self.agent = fake.user(TG_AGENT, "Agent T")
        self.tickets: dict[int, str] = {}
        self.topics: dict[int, int] = {}

    def _note(self, uid: int, what: str) -> None:
        self.slack.note(f"TG{uid}", what)

    async def press(self, user: FakeUser, label: str, after: int) -> int:
        """Wait for a message (from index ``after``) with the button, press it; the new
        index."""
        self._note(user.id, f"waiting for button {label!r}")

        def find() -> FakeMessage | None:
            for m in reversed(self.fake.sent(user.id)[after:]):
                if any(label.lower() in b["text"].lower() for b in m.buttons()):
                    return m
            return None

        msg: FakeMessage = await self.slack.wait(find, f"TG{user.id}: button {label!r}")
        mark = len(self.fake.sent(user.id))
        self.fake.press(user, msg, label)
        return mark

    async def said(self, user: FakeUser, needle: str, after: int) -> FakeMessage:
        self._note(user.id, f"waiting for {needle!r}")
        found: FakeMessage = await self.slack.wait(
            lambda: next((m for m in self.fake.sent(user.id)[after:] if needle in m.text), None),
            f"TG{user.id}: {needle!r}",
        )
        return found

    async def user(self, i: int) -> None:
        uid = TG_USERS[i]
        user = self.users[uid]
        await asyncio.sleep(0.6 + i * STAGGER)
        self._note(uid, "/new")
        mark = len(self.fake.sent(uid))
        self.fake.send_text(user, "/new")
        mark = await self.press(user, "Phone drill", mark)
        mark = await self.press(user, "Escalate now", mark)
        await self.said(user, "describe", mark)
        mark = len(self.fake.sent(uid))
        self.fake.send_text(user, f"details of TG{uid}: it broke")
        mark = await self.press(user, "Done", mark)
        mark = await self.press(user, "Normal", mark)
        created = await self.said(user, "is created", mark)
        found = TICKET_NUMBER.search(created.text)
        assert found, created.text
        number = self.tickets[uid] = found.group(1)
        self._note(uid, f"waiting for the card of {number}")
        card: FakeMessage = await self.slack.wait(
            lambda: next(
                (
                    m
                    for m in self.fake.sent(TG_L2)
                    if number in m.text and m.buttons() and m.thread_id is not None
                ),
                None,
            ),
            f"the card of {number}",
        )
        topic = self.topics[uid] = card.thread_id or 0
        for k in range(1, 4):
            self.fake.send_text(user, f"{_tg_utok(uid, k)} still broken, attempt {k}")
        self._note(uid, "waiting for the manager escalation")
        await self.slack.wait(
            lambda: any(MARKERS["manager"] in t and number in t for t in self.fake.texts(TG_L2)),
            f"the manager escalation of {number}",
        )
        for k in range(1, REPLIES + 1):
            self._note(uid, f"reply {k}")
            self.fake.send_text(
                self.agent,
                f"{_tg_rtok(uid, k)} please try step {k}",
                chat_id=TG_L2,
                thread_id=topic,
            )
            m = REPLIES + k
            if m <= USER_MESSAGES:
                # Let the reply be taken in before the user's next message (as in Slack's
                # script, where each delivery is acknowledged before the next).
                await self.slack.wait(
                    lambda k=k: any(_tg_rtok(uid, k) in t for t in self.fake.texts(uid)),
                    f"TG{uid}: reply {k}",
                )
                self.fake.send_text(user, f"{_tg_utok(uid, m)} still broken, attempt {m}")
        self._note(uid, "sent everything")

    def delivered(self) -> bool:
        return all(
            all(
                any(_tg_utok(uid, k) in t for t in self.fake.texts(TG_L2))
                for k in range(1, USER_MESSAGES + 1)
            )
            and all(
                any(_tg_rtok(uid, k) in t for t in self.fake.texts(uid))
                for k in range(1, REPLIES + 1)
            )
            for uid in TG_USERS
        )

    def audit(self) -> tuple[list[str], list[tuple[int, str]]]:
        """(problems, copies): losses and reordering are problems; each copy (chat, what)
        must be a call the bot logged as sent again in that chat after a kill."""
        problems: list[str] = []
        copies: list[tuple[int, str]] = []
        # SLA notices and other posts; cards (with buttons) show the SLA state themselves.
        desk = [m.text for m in self.fake.sent(TG_L2) if not m.buttons()]

        def check(chat: int, what: str, texts: list[str], pattern: str, want: list[str]) -> None:
            got = [tok for text in texts for tok in re.findall(pattern, text)]
            if list(dict.fromkeys(got)) != want:
                problems.append(f"{what}: {got} != {want}")
            copies.extend(
                (chat, f"{what}: {t} ×{n}") for t, n in Counter(got).items() for _ in range(n - 1)
            )

        for uid, number in self.tickets.items():
            topic = self.topics[uid]
            check(
                TG_L2,
                f"TG{uid} ({number}) topic",
                # The relayed posts; the card (with buttons) quotes the user's words too.
                [m.text for m in self.fake.sent(TG_L2, thread_id=topic) if not m.buttons()],
                rf"\[TG{uid} m\d+\]",
                [_tg_utok(uid, k) for k in range(1, USER_MESSAGES + 1)],
            )
            check(
                uid,
                f"TG{uid} ({number}) chat",
                self.fake.texts(uid),
                rf"\[TG{uid} r\d+\]",
                [_tg_rtok(uid, k) for k in range(1, REPLIES + 1)],
            )
            for kind, marker in MARKERS.items():
                n = sum(marker in t and number in t for t in desk)
                if n == 0:
                    problems.append(f"{number}: no SLA {kind}")
                copies.extend((TG_L2, f"{number}: SLA {kind} ×{n}") for _ in range(n - 1))
            cards = [
                m for m in self.fake.sent(TG_L2) if m.buttons() and number in m.text.split("\n")[0]
            ]
            topics = [t for t in self.fake.topics.get(TG_L2, {}).values() if number in t.name]
            if not cards or not topics:
                problems.append(f"{number}: {len(cards)} cards, {len(topics)} topics")
            extra = max(len(cards) - 1, 0) + max(len(topics) - 1, 0)
            copies.extend(
                (TG_L2, f"{number}: {len(cards)} cards, {len(topics)} topics") for _ in range(extra)
            )
        return problems, copies


async def _killer(bot: BotProcess, rng: random.Random, schedule: list[str], t0: float) -> None:
    """SIGKILL the bot KILLS times at random moments, restarting it each time."""
    for k in range(KILLS):
        early = k > 0 and rng.random() < 0.25  # sometimes during start-up (after migrations)
        if early:
            delay = rng.uniform(0.5, 2.5)
            await asyncio.sleep(delay)
            what = f"{delay:.2f}s after start"
        else:
            await bot.wait_healthy(within=WAIT)
            delay = rng.uniform(0.3, 3.0)
            await asyncio.sleep(delay)
            what = f"{delay:.2f}s after healthy"
        life = bot.current.n
        at = bot.kill()
        schedule.append(f"kill {k + 1}: life {life} at t={at - t0:6.2f}s ({what})")
        print(schedule[-1], flush=True)
        bot.start()
    await bot.wait_healthy(within=WAIT)


def _posts_by_life(api: StampedSlackApi) -> list[ApiCall]:
    return [c for c in api.calls_to("chat.postMessage") if c.response.get("ok")]


def _duplicates(api: StampedSlackApi, bot: BotProcess, t0: float) -> tuple[list[str], list[str]]:
    """Every post shown twice in the same place: (window duplicates, unexplained)."""
    seen: dict[tuple[str, str, str], list[ApiCall]] = defaultdict(list)
    for call in _posts_by_life(api):
        key = (
            str(call.params.get("channel")),
            str(call.params.get("thread_ts") or ""),
            call_text(call),
        )
        seen[key].append(call)
    window: list[str] = []
    other: list[str] = []
    for (channel, thread, text), calls in seen.items():
        if len(calls) < 2:
            continue
        first, second = calls[0], calls[1]
        life1 = bot.life_at(first.at)  # type: ignore[attr-defined]
        life2 = bot.life_at(second.at)  # type: ignore[attr-defined]
        killed = next((lf for lf in bot.lives if lf.n == life1), None)
        where = f"{channel}{'/' + thread if thread else ''}"
        short = text.replace("\n", " ")[:70]
        if killed is not None and killed.killed and life2 > life1 and killed.ended is not None:
            gap = killed.ended - first.at  # type: ignore[attr-defined]
            window.append(
                f"{where} {short!r}: 1st copy at t={first.at - t0:.3f}s in life {life1}, "  # type: ignore[attr-defined]
                f"killed {gap * 1000:.0f} ms later (<0: sent just before the kill, read "
                f"after), 2nd copy at t={second.at - t0:.3f}s "  # type: ignore[attr-defined]
                f"from life {life2}"
            )
        else:
            other.append(
                f"{where} {short!r}: {len(calls)} copies, lives "
                f"{[bot.life_at(c.at) for c in calls]}"  # type: ignore[attr-defined]
            )
    cards: dict[str, list[ApiCall]] = defaultdict(list)
    for call in _posts_by_life(api):
        text = call_text(call)
        m = TICKET_NUMBER.search(text)
        if (
            m
            and call.params.get("channel") == L2
            and not call.params.get("thread_ts")
            and (MARKERS["manager"] not in text)
        ):
            cards[m.group(1)].append(call)
    for number, calls in cards.items():
        if len(calls) < 2:
            continue
        first, second = calls[0], calls[1]
        life1 = bot.life_at(first.at)  # type: ignore[attr-defined]
        life2 = bot.life_at(second.at)  # type: ignore[attr-defined]
        killed = next((lf for lf in bot.lives if lf.n == life1), None)
        if killed is not None and killed.killed and life2 > life1 and killed.ended is not None:
            window.append(
                f"{L2} card of {number}: 1st at t={first.at - t0:.3f}s in life {life1}, "  # type: ignore[attr-defined]
                f"killed {(killed.ended - first.at) * 1000:.0f} ms later, 2nd (re-rendered) at "  # type: ignore[attr-defined]
                f"t={second.at - t0:.3f}s from life {life2}"  # type: ignore[attr-defined]
            )
        else:
            lives = [bot.life_at(c.at) for c in calls]  # type: ignore[attr-defined]
            other.append(f"{len(calls)} cards of {number} from lives {lives}")
    return window, other


async def test_exactly_once_through_random_sigkills(tmp_path: Path) -> None:
    seed = int(SEED_ENV) if SEED_ENV else random.SystemRandom().randrange(1, 10**9)
    print(f"\ncrash test seed: {seed} (replay with FIRSTLINE_CRASH_SEED={seed})", flush=True)
    rng = random.Random(seed)
    api = StampedSlackApi()
    await api.start()
    for user in USERS:
        api.add_user(user, user.lower(), real_name=f"User {user[-2:]}")
    for agent in AGENTS:
        api.add_user(agent, agent.lower(), real_name=f"Agent {agent[-1]}")
    api.members[L2] = ["UBOT", *AGENTS]
    # Now and then Slack is slow to tell who a user is: the event overruns the bot's 2 s ack
    # budget, so it is parked in the inbox and acknowledged before its work commits.
    slow = random.Random(seed + 1)
    api.delay = lambda method, _p: 2.6 if method == "users.info" and slow.random() < 0.3 else 0.0
    fake = FakeTelegramAPI()
    await fake.start()
    fake.add_group(TG_L2, "L2 desk", forum=True)
    bot = BotProcess(tmp_path, api, content_dir(tmp_path), telegram=fake)
    schedule: list[str] = []
    t0 = time.monotonic()
    bot.start()
    session: Session | None = None
    tg: TgSession | None = None
    try:
        await bot.wait_healthy(within=60)
        print(f"first start healthy after {time.monotonic() - t0:.2f}s", flush=True)
        async with Deliverer(bot, within=WAIT) as dl:
            session = Session(api, dl, t0)
            tg = TgSession(fake, session)
            killer = asyncio.create_task(_killer(bot, rng, schedule, t0))
            users = asyncio.gather(
                *(session.user(i) for i in range(len(USERS))),
                *(tg.user(i) for i in range(len(TG_USERS))),
            )
            try:
                await users
                await killer
            finally:
                killer.cancel()
                users.cancel()
            print(
                f"session done at t={time.monotonic() - t0:.2f}s, {dl.redeliveries} redeliveries",
                flush=True,
            )
            # Let the last deliveries settle: the outbox drains to empty and everything the
            # script sent has arrived (bounded: a loss is reported by the audit below).
            await _drained(bot)
            with contextlib.suppress(AssertionError):
                await session.wait(
                    lambda: all(session._delivered(u) for u in USERS) and tg.delivered(),
                    "the last deliveries",
                    within=10,
                )
        rc = await bot.stop()
    finally:
        if bot.alive():
            bot.kill()
        await api.close()
        await fake.close()
    print(f"stopped at t={time.monotonic() - t0:.2f}s after {len(bot.lives)} lives", flush=True)
    starts = [f"{lf.healthy - lf.started:.1f}" for lf in bot.lives if lf.healthy is not None]
    print(f"seconds from start to healthy, per life: {' '.join(starts)}", flush=True)
    assert session is not None and tg is not None

    # 1. Every life ended by our SIGKILL or a clean exit, none with a traceback.
    assert rc == 0, bot.current.log.read_text(errors="replace")[-3000:]
    for life in bot.lives:
        text = life.log.read_text(errors="replace")
        assert TRACEBACK not in text, f"life {life.n}:\n{text[-4000:]}"
        assert life.returncode == (-9 if life.killed else 0), (life.n, life.returncode)
    assert sum(life.killed for life in bot.lives) == KILLS

    problems: list[str] = []
    for user in USERS:
        number = session.tickets[user]
        # 2. The user's messages in the ticket's thread: each once, in the order sent.
        # Under any card of the ticket (a duplicate card is a thread of its own).
        card_ts = {
            str(c.response.get("ts"))
            for c in api.posts(L2)
            if not c.params.get("thread_ts") and number in call_text(c)
        }
        thread = [call_text(c) for c in api.posts(L2) if c.params.get("thread_ts") in card_ts]
        got = [tok for text in thread for tok in re.findall(rf"\[{user} m\d+\]", text)]
        want = [_utok(user, k) for k in range(1, USER_MESSAGES + 1)]
        if got != want:
            problems.append(f"{user} ({number}) thread: {got} != {want}")
        # 3. The consultant's replies in the user's DM: each once, in order.
        dm = [call_text(c) for c in api.posts("D" + user)]
        got = [tok for text in dm for tok in re.findall(rf"\[{user} r\d+\]", text)]
        want = [_rtok(user, k) for k in range(1, REPLIES + 1)]
        if got != want:
            problems.append(f"{user} ({number}) DM: {got} != {want}")
        # 4. Each SLA notice once per ticket.
        l2 = [call_text(c) for c in api.posts(L2)]
        for kind, marker in MARKERS.items():
            n = sum(marker in t and number in t for t in l2)
            if n != 1:
                problems.append(f"{number}: {n} × SLA {kind}")
    # 5. One card per ticket.
    cards = Counter(
        m.group(1)
        for c in api.posts(L2)
        if not c.params.get("thread_ts") and MARKERS["manager"] not in call_text(c)
        for m in [TICKET_NUMBER.search(call_text(c))]
        if m
    )
    for number in session.tickets.values():
        if cards[number] != 1:
            problems.append(f"{number}: {cards[number]} cards")

    # 6. The database agrees: nothing left to send or failed; every notice fired once.
    with sqlite3.connect(bot.db) as con:
        left = con.execute(
            "SELECT status, count(*) FROM outbox WHERE status != 'sent' GROUP BY status"
        ).fetchall()
        fired = dict(
            con.execute(
                "SELECT kind, count(*) FROM sla_notifications WHERE fired_at IS NOT NULL "
                "AND kind LIKE 'first_response:%' GROUP BY kind"
            ).fetchall()
        )
        linked = dict(
            con.execute(
                "SELECT t.number, l.message_key FROM message_links l JOIN tickets t "
                "ON t.id = l.ticket_id WHERE l.role = 'card'"
            ).fetchall()
        )
    orphans: dict[str, str] = {}
    for user, number in session.tickets.items():
        known = linked.get(int(number.split("-")[1]))
        if known != session.cards[user]:
            # The consultants replied under a card the bot does not know: a duplicate card.
            orphans[number] = (
                f"{number}: consultants replied under card {session.cards[user]}, the bot "
                f"knows the ticket's card as {known}"
            )
    if left:
        problems.append(f"outbox rows not sent: {left}")
    n = len(USERS) + len(TG_USERS)
    want_fired = {
        "first_response:warn:50": n,
        "first_response:breach": n,
        "first_response:manager": n,
    }
    if fired != want_fired:
        problems.append(f"fired notifications {fired} != {want_fired}")

    # 7. Telegram: nothing lost or reordered; a copy only in a chat where the bot logged that
    # its probe could not tell whether a call a kill interrupted had landed, and sent it again.
    tg_problems, tg_copies = tg.audit()
    logs = [life.log.read_text(errors="replace") for life in bot.lives]
    resent = [m for text in logs for m in TG_RESENT.finditer(text)]
    per_chat = Counter(int(m.group(3)) for m in resent)
    print(
        f"slack posts found, not posted again: {sum(t.count('already delivered') for t in logs)}"
        f"; requests parked before the ack: {sum(t.count('parked and acknowledged') for t in logs)}"
        f", replayed after a kill: {sum(t.count('replayed parked') for t in logs)}",
        flush=True,
    )
    print(
        f"telegram in-doubt calls: found {sum(t.count('already delivered') for t in logs)} "
        f"(with Slack's), not there {sum(t.count(TG_ABSENT) for t in logs)}, sent again "
        f"{[m.group(0)[10:].split(' is in')[0] for m in resent]}",
        flush=True,
    )
    waited = {int(m.group(1)) for text in logs for m in TG_WAITED.finditer(text)}
    no_bound = {int(m.group(1)) for text in logs for m in TG_NO_BOUND.finditer(text)}
    print(
        f"telegram private-chat probes that waited for a bound: rows {sorted(waited)}; "
        f"gave up waiting (sent again): rows {sorted(no_bound)}",
        flush=True,
    )
    for chat, n in Counter(chat for chat, _ in tg_copies).items():
        if n > per_chat[chat]:
            tg_problems.append(
                f"{n} Telegram copies in {chat} "
                f"{[what for c, what in tg_copies if c == chat]}, {per_chat[chat]} logged re-sends"
            )

    window, other = _duplicates(api, bot, t0)
    report = "\n".join(
        [f"seed {seed}", *schedule]
        + [f"PROBLEM: {p}" for p in problems + tg_problems]
        + [f"ORPHAN CARD: {o}" for o in orphans.values()]
        + [f"DUPLICATE (sent before a kill, again after it): {d}" for d in window]
        + [f"DUPLICATE (other): {d}" for d in other]
        + [
            f"Telegram: {len(tg_copies)} copies {tg_copies} from {len(resent)} logged "
            "in-doubt re-sends"
        ]
    )
    print(report)
    assert not (problems or tg_problems or orphans or window or other), report


async def _drained(bot: BotProcess) -> None:
    """Poll ``/healthz`` until the outbox has nothing pending or being sent (bounded)."""
    deadline = time.monotonic() + WAIT
    counts: dict[str, Any] = {}
    while time.monotonic() < deadline:
        data = await bot.healthz()
        if data is not None:
            counts = data.get("outbox", {}).get("counts", {})
            if not counts.get("pending") and not counts.get("sending"):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the outbox did not drain: {counts}")


async def test_kill_between_platform_accept_and_outbox_record(tmp_path: Path) -> None:
    """The window, hit on purpose: the process dies while Slack is answering the
    chat.postMessage of a consultant's reply (Slack stored the message; the response is
    lost). After the restart the outbox finds the post by its metadata and records it: the
    user sees the reply once."""
    api = StampedSlackApi()
    await api.start()
    user, agent = USERS[0], AGENTS[0]
    api.add_user(user, user.lower(), real_name="User 01")
    api.add_user(agent, agent.lower(), real_name="Agent A")
    api.members[L2] = ["UBOT", agent]
    bot = BotProcess(tmp_path, api, content_dir(tmp_path))
    bot.start()
    killed: list[float] = []
    try:
        await bot.wait_healthy(within=60)
        async with Deliverer(bot, within=WAIT) as dl:
            session = Session(api, dl, time.monotonic())
            await session.to_ticket(user)
            await _drained(bot)

            def kill_on_reply(call: ApiCall) -> None:
                if (
                    not killed
                    and call.method == "chat.postMessage"
                    and call.params.get("channel") == "D" + user
                    and _rtok(user, 1) in call_text(call)
                ):
                    killed.append(bot.kill())

            api.on_call = kill_on_reply
            # The kill may come before the bot acknowledged the reply event: the delivery then
            # goes on (Slack's retries) until the restarted bot takes it.
            replying = asyncio.ensure_future(session.reply(agent, user, 1))
            await session.wait(lambda: killed, "the kill inside chat.postMessage")
            api.on_call = None
            bot.start()
            await bot.wait_healthy(within=WAIT)
            await replying
            await _drained(bot)
        assert await bot.stop() == 0
    finally:
        if bot.alive():
            bot.kill()
        await api.close()
    # The killed life's post reached Slack (the fake stored it before answering).
    stored = [
        m for (c, _), m in api.messages.items() if c == "D" + user and _rtok(user, 1) in m["text"]
    ]
    lives = [c.life for c in api.posts("D" + user) if _rtok(user, 1) in call_text(c)]  # type: ignore[attr-defined]
    print(f"reply copies stored in the DM: {len(stored)}; answered posts from lives {lives}")
    assert len(stored) == 1, f"the reply reached the user {len(stored)} times"
    looked = [
        c
        for c in api.calls_to("conversations.history")
        if c.params.get("channel") == "D" + user and c.life == 2  # type: ignore[attr-defined]
    ]
    assert looked, "the restarted process did not look for the in-doubt post"
    with sqlite3.connect(bot.db) as con:
        left = con.execute("SELECT count(*) FROM outbox WHERE status != 'sent'").fetchone()[0]
    assert left == 0
