"""Exactly-once through crashes: a long scripted Slack session while ``firstline run`` is
SIGKILLed at random moments and restarted, then an audit of everything the fake Slack saw.

The bot runs as a real process in Slack HTTP mode against the fake Slack Web API
(:mod:`tests.fakes.slack_api`), on SQLite, with a 24/7 second-level SLA so every ticket gets
its warning, breach and manager escalation during the test. Six users each walk to a ticket,
write five messages into it, and get three consultant replies (sent only after the ticket's
manager escalation, so the SLA notices are deterministic). Meanwhile a killer task SIGKILLs
the process at seeded random moments (``FIRSTLINE_CRASH_SEED`` replays a schedule) and starts
it again on the same port and database. The driver behaves like Slack: a request the bot did
not acknowledge with 200 (refused connection, reset, 5xx) is delivered again with the same
``event_id``; a button press or command is repeated.

At the end: every user message is in its ticket's thread exactly once and in order; every
consultant reply is in the user's DM exactly once and in order; every SLA notice once per
ticket; no outbox row left unsent; no life of the process died with a traceback.

Duplicates. Delivery is at least once: the dispatcher records a row as sent only after the
platform call returned, so a SIGKILL after Slack accepted a message and before that record
re-sends it after the restart. The audit attributes every duplicate post: one whose first
copy reached Slack in the life that was killed and whose second copy came from a later life
is that documented window; anything else (two copies from one life, a duplicate intake) is a
bug and fails the test. Window duplicates also fail the test under ``FIRSTLINE_CRASH_STRICT=1``;
by default they make it *xfail* with the evidence, so they stay visible.
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
    TICKET_NUMBER,
    TRACEBACK,
    BotProcess,
    Deliverer,
    StampedSlackApi,
    call_text,
    content_dir,
)
from tests.fakes.slack_api import ApiCall, block_actions, dm_event, slash_command, thread_reply

# Read at import: the autouse fixture of tests/conftest.py clears FIRSTLINE_* variables.
SEED_ENV = os.environ.get("FIRSTLINE_CRASH_SEED", "")
STRICT = os.environ.get("FIRSTLINE_CRASH_STRICT", "") not in ("", "0")

KILLS = 10
USERS = [f"UCR{n:02d}" for n in range(1, 9)]
AGENTS = ["UAGA", "UAGB"]
USER_MESSAGES = 5
REPLIES = 3
STAGGER = 1.2  # seconds between users' first steps
WAIT = 60.0  # bound of every wait for the bot

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
            thread_reply(agent, L2, self.cards[user], f"{_rtok(user, k)} please try step {k}"),
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
                    if not c.params.get("thread_ts") and number.group(1) in call_text(c)
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


async def _killer(bot: BotProcess, rng: random.Random, schedule: list[str], t0: float) -> None:
    """SIGKILL the bot KILLS times at random moments, restarting it each time."""
    for k in range(KILLS):
        early = k > 0 and rng.random() < 0.25  # sometimes during start-up (after migrations)
        if early:
            delay = rng.uniform(0.5, 2.5)
            await asyncio.sleep(delay)
            what = f"{delay:.2f}s after start"
        else:
            await bot.wait_healthy()
            delay = rng.uniform(0.3, 3.0)
            await asyncio.sleep(delay)
            what = f"{delay:.2f}s after healthy"
        life = bot.current.n
        at = bot.kill()
        schedule.append(f"kill {k + 1}: life {life} at t={at - t0:6.2f}s ({what})")
        print(schedule[-1], flush=True)
        bot.start()
    await bot.wait_healthy()


def _posts_by_life(api: StampedSlackApi) -> list[ApiCall]:
    return [c for c in api.calls_to("chat.postMessage") if c.response.get("ok")]


def _duplicates(
    api: StampedSlackApi, bot: BotProcess, t0: float
) -> tuple[list[str], list[str]]:
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
        if m and call.params.get("channel") == L2 and not call.params.get("thread_ts") and (
            MARKERS["manager"] not in text
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
            other.append(f"{len(calls)} cards of {number} from lives "
                         f"{[bot.life_at(c.at) for c in calls]}")  # type: ignore[attr-defined]
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
    bot = BotProcess(tmp_path, api, content_dir(tmp_path))
    schedule: list[str] = []
    t0 = time.monotonic()
    bot.start()
    session: Session | None = None
    try:
        await bot.wait_healthy(within=60)
        print(f"first start healthy after {time.monotonic() - t0:.2f}s", flush=True)
        async with Deliverer(bot, within=WAIT) as dl:
            session = Session(api, dl, t0)
            killer = asyncio.create_task(_killer(bot, rng, schedule, t0))
            users = asyncio.gather(*(session.user(i) for i in range(len(USERS))))
            try:
                await users
                await killer
            finally:
                killer.cancel()
                users.cancel()
            print(f"session done at t={time.monotonic() - t0:.2f}s, "
                  f"{dl.redeliveries} redeliveries", flush=True)
            # Let the last deliveries settle: the outbox drains to empty and everything the
            # script sent has arrived (bounded: a loss is reported by the audit below).
            await _drained(bot)
            with contextlib.suppress(AssertionError):
                await session.wait(
                    lambda: all(session._delivered(u) for u in USERS), "the last deliveries",
                    within=10,
                )
        rc = await bot.stop()
    finally:
        if bot.alive():
            bot.kill()
        await api.close()
    print(f"stopped at t={time.monotonic() - t0:.2f}s after {len(bot.lives)} lives", flush=True)
    assert session is not None

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
        thread = [
            call_text(c) for c in api.posts(L2) if c.params.get("thread_ts") in card_ts
        ]
        got = [
            tok
            for text in thread
            for tok in re.findall(rf"\[{user} m\d+\]", text)
        ]
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
                f"knows the ticket's card as {known}; Desk.handle_agent drops a thread "
                f"reply it cannot map to a ticket without a word"
            )
    if left:
        problems.append(f"outbox rows not sent: {left}")
    n = len(USERS)
    want_fired = {
        "first_response:warn:50": n,
        "first_response:breach": n,
        "first_response:manager": n,
    }
    if fired != want_fired:
        problems.append(f"fired notifications {fired} != {want_fired}")

    window, other = _duplicates(api, bot, t0)
    report = "\n".join(
        [f"seed {seed}", *schedule]
        + [f"PROBLEM: {p}" for p in problems]
        + [f"ORPHAN CARD: {o}" for o in orphans.values()]
        + [f"DUPLICATE (kill window): {d}" for d in window]
        + [f"DUPLICATE (unexplained): {d}" for d in other]
    )
    print(report)
    # Losses, reordering, doubled intake, notices: hard failures. A duplicate that is not the
    # send->record window of a killed life is a hard failure too.
    assert not other, report
    if problems and not all(_explained(p, window, orphans) for p in problems):
        pytest.fail(report)
    if window:
        lost = f"; replies LOST under {len(orphans)} duplicate card(s)" if orphans else ""
        msg = (
            f"{len(window)} message(s) delivered twice because a SIGKILL fell between the "
            f"platform accepting them and the outbox recording them{lost}:\n{report}"
        )
        if STRICT:
            pytest.fail(msg)
        pytest.xfail(msg)


def _explained(problem: str, window: list[str], orphans: dict[str, str]) -> bool:
    """A thread/DM/notice count off only by copies the kill-window duplicates account for,
    or consultant replies lost under a duplicate card (itself a kill-window duplicate)."""
    number = m.group(1) if (m := TICKET_NUMBER.search(problem)) else ""
    if "DM:" in problem and number in orphans and any(number in w for w in window):
        return True
    if "thread:" in problem or "DM:" in problem:
        got, _, want = problem.partition(" != ")
        got_t = re.findall(r"\[(UCR\d+ [mr]\d+)\]", got)
        want_t = re.findall(r"\[(UCR\d+ [mr]\d+)\]", want)
        if list(dict.fromkeys(got_t)) != want_t:
            return False  # lost or reordered
        extra = [t for t, c in Counter(got_t).items() for _ in range(c - 1)]
        return all(any(f"[{t}]" in w for w in window) for t in extra)
    if "× SLA" in problem or "cards" in problem:
        number = problem.split(":")[0]
        return any(number in w for w in window)
    return False


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


@pytest.mark.xfail(
    strict=True,
    reason="known: delivery is at least once. A SIGKILL after Slack accepted a chat.postMessage "
    "and before the dispatcher recorded that outbox row as sent re-sends the row after the "
    "restart: the user sees the reply twice",
)
async def test_kill_between_platform_accept_and_outbox_record(tmp_path: Path) -> None:
    """The duplicate window, hit on purpose: the process dies while Slack is answering the
    chat.postMessage of a consultant's reply (Slack stored the message; the response is lost).
    Exactly once would need the row to be known as sent; it is re-sent after the restart."""
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
            await session.reply(agent, user, 1)
            await session.wait(lambda: killed, "the kill inside chat.postMessage")
            api.on_call = None
            bot.start()
            await bot.wait_healthy()
            await _drained(bot)
        assert await bot.stop() == 0
    finally:
        if bot.alive():
            bot.kill()
        await api.close()
    copies = [c for c in api.posts("D" + user) if _rtok(user, 1) in call_text(c)]
    lives = [c.life for c in copies]  # type: ignore[attr-defined]
    print(f"reply copies in the DM: {len(copies)} (from lives {lives})")
    # The random test's audit classifies exactly this as the kill window (not a hard bug).
    window, other = _duplicates(api, bot, time.monotonic())
    assert not other, other
    assert len(window) == len(copies) - 1, window
    assert len(copies) == 1, f"the reply reached the user {len(copies)} times (lives {lives})"
