"""Load and soak benchmark: simulated users through the real engine and outbox.

    .venv/bin/python benchmarks/load.py                      # SQLite file, defaults
    .venv/bin/python benchmarks/load.py --users 50 --seconds 120 --rate 100
    .venv/bin/python benchmarks/load.py --db postgresql+asyncpg://postgres@127.0.0.1/test

Two phases:
1. **throughput** — every user sends turns as fast as the engine answers (closed loop);
   prints sustained dialog turns per second.
2. **latency at a fixed rate** — turns are offered at ``--rate`` per second (open loop);
   prints p50/p99 end-to-end turn latency (handle + delivery of the replies), the outbox lag
   and the RSS growth between the first and the last 10% of the run.

Each simulated user walks the real dialog: a question, the KB's answer or suggestions, a
"didn't help", checklist steps, and a new request, over and over. The PostgreSQL run wipes
the ``public`` schema of the given database first: use a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from bot.app import App
from bot.domain import UserEvent, UserRef
from bot.outbox import OutboxItem, SendResult, outbox_stats
from bot.storage.db import Database
from config.settings import DatabaseSettings, EscalationSettings, Settings
from handlers.memory import MemorySender

QUESTIONS = [
    "I forgot my password",
    "my vpn does not connect",
    "how do I download an invoice",
    "the server is not reachable over ssh",
    "emails are not delivered",
    "the app crashes on start",
    "не приходит письмо для сброса пароля",
    "впн очень медленный",
]


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc, else the peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TimedSender(MemorySender):
    """Records deliveries and wakes whoever waits for a reply to a user."""

    def __init__(self) -> None:
        super().__init__()
        self.waiters: dict[str, asyncio.Event] = {}

    async def send(self, item: OutboxItem) -> SendResult:
        """Deliver (in memory) and signal the user's waiter."""
        result = await super().send(item)
        waiter = self.waiters.get(item.target)
        if waiter is not None:
            waiter.set()
        return result


class SimUser:
    """One user clicking through the dialog, reading the buttons it was sent."""

    def __init__(self, app: App, sender: MemorySender, n: int, seq: itertools.count[int]) -> None:
        self.app = app
        self.sender = sender
        self.name = f"load{n}"
        self.ref = UserRef("memory", self.name, display_name=self.name, language_code="en")
        self.seq = seq
        self.rng = random.Random(n)
        self.turns_in_request = 0

    def _buttons(self) -> list[dict[str, str]]:
        for d in reversed(self.sender.delivered):
            if d.target == self.name and d.kind == "message" and d.buttons():
                return d.buttons()
        return []

    def next_event(self) -> UserEvent:
        """The next thing this user does, given what the bot last showed."""
        eid = f"l{next(self.seq)}"
        buttons = self._buttons()
        self.turns_in_request += 1
        if self.turns_in_request > 6 or not buttons:
            self.turns_in_request = 0
            if self.rng.random() < 0.5:
                return UserEvent("memory", eid, self.ref, self.name, "command", command="new")
            return UserEvent(
                "memory", eid, self.ref, self.name, "message", text=self.rng.choice(QUESTIONS)
            )
        choice = buttons[-1] if len(buttons) > 1 else buttons[0]
        if any("Done" in b["label"] for b in buttons):
            # Leave without escalating: keeps the run about the dialog, not ticket growth.
            return UserEvent("memory", eid, self.ref, self.name, "command", command="cancel")
        return UserEvent("memory", eid, self.ref, self.name, "button", data=choice["data"])


async def _reset_pg(url: str) -> None:
    db = Database(url)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await db.dispose()


async def run(args: argparse.Namespace) -> None:
    """Both phases; prints the figures."""
    url = args.db
    if url is None:
        folder = Path(tempfile.mkdtemp(prefix="firstline-load-"))
        url = f"sqlite+aiosqlite:///{folder / 'load.db'}"
    elif url.startswith("postgresql"):
        await _reset_pg(url)
    settings = Settings(
        database=DatabaseSettings(url=url),
        escalation=EscalationSettings(default_destination="memory:l2"),
    )
    app = await App.create(settings)
    sender = TimedSender()
    dispatcher = app.dispatcher({"memory": sender})
    seq = itertools.count(1)
    users = [SimUser(app, sender, n, seq) for n in range(args.users)]
    stop = asyncio.Event()
    delivery = asyncio.create_task(dispatcher.run_forever(stop, poll_seconds=0.05))

    # Phase 1: closed loop, as fast as it goes.
    turns = 0
    deadline = time.perf_counter() + args.throughput_seconds

    async def closed(u: SimUser) -> None:
        nonlocal turns
        while time.perf_counter() < deadline:
            await app.handle_user(u.next_event())
            turns += 1
            # Keep the user's view current, like a client waiting for the reply.
            await asyncio.sleep(0)

    t0 = time.perf_counter()
    await asyncio.gather(*(closed(u) for u in users))
    elapsed = time.perf_counter() - t0
    print(f"database: {url.split('://')[0]}  users: {args.users}")
    print(
        f"throughput (closed loop, {elapsed:.0f} s): {turns / elapsed:.0f} dialog turns/s "
        f"({turns} turns)"
    )

    # Phase 2: open loop at a fixed rate; latency = handle + delivery of the replies.
    latencies: list[float] = []
    lags: list[float] = []
    rss: list[tuple[float, float]] = []
    sent_before = len(sender.delivered)
    interval = 1.0 / args.rate
    start = time.perf_counter()
    end = start + args.seconds
    busy: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def one(u: SimUser) -> None:
        # A turn ends when the first reply reaches the user's chat through the outbox.
        t = time.perf_counter()
        busy.add(u.name)
        waiter = sender.waiters[u.name] = asyncio.Event()
        try:
            result = await app.handle_user(u.next_event())
            if not result.refused:  # a stale button is answered by a toast, not a message
                await asyncio.wait_for(waiter.wait(), timeout=60)
            await asyncio.sleep(0.02)  # let the rest of the reply batch land
        finally:
            busy.discard(u.name)
        latencies.append(time.perf_counter() - t - 0.02)

    i = 0
    next_at = start
    last_sample = 0.0
    gc.collect()
    while time.perf_counter() < end:
        now = time.perf_counter()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += interval
        free = [u for u in users if u.name not in busy]
        if free:
            task = asyncio.create_task(one(free[i % len(free)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        i += 1
        if time.perf_counter() - last_sample >= 1.0:
            last_sample = time.perf_counter()
            rss.append((last_sample - start, rss_mb()))
            stats = await outbox_stats(app.db, app.clock.now())
            lags.append(float(stats["lag_seconds"]))
    await asyncio.gather(*tasks)
    stop.set()
    await delivery
    await dispatcher.drain()
    ran = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    tenth = max(1, len(rss) // 10)
    early = statistics.mean(m for _, m in rss[:tenth])
    late = statistics.mean(m for _, m in rss[-tenth:])
    print(
        f"open loop at {args.rate}/s for {ran:.0f} s: {len(latencies)} turns, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print(
        f"outbox lag: max {max(lags, default=0):.2f} s, mean {statistics.mean(lags or [0]):.2f} s;"
        f" messages delivered {len(sender.delivered) - sent_before}"
    )
    print(
        f"RSS: {early:.0f} MB early, {late:.0f} MB late, growth {100 * (late - early) / early:.1f}%"
    )
    await app.close()


def main() -> None:
    """Command-line entry."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--throughput-seconds", type=float, default=30)
    p.add_argument("--seconds", type=float, default=180, help="open-loop phase length")
    p.add_argument("--rate", type=float, default=50, help="offered turns per second")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
