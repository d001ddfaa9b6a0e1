"""Load and soak benchmark: simulated users through the real engine, outbox and adapter.

    .venv/bin/python benchmarks/load.py                         # memory channel, SQLite, ~5 min
    .venv/bin/python benchmarks/load.py --channel telegram      # through the fake Bot API
    .venv/bin/python benchmarks/load.py --quick                 # 10 s + 20 s, a smoke run
    .venv/bin/python benchmarks/load.py --processes 2           # two bot processes, one file
    .venv/bin/python benchmarks/load.py --db sqlite+aiosqlite:///path/load.db
    .venv/bin/python benchmarks/load.py --db postgresql+asyncpg://postgres@127.0.0.1/scratch

Channels:
* ``memory`` — events go straight to ``App.handle_user``; replies leave through the outbox
  to an in-memory sender.
* ``telegram`` — the real aiogram adapter (long polling, outbox sender, HTTP) against the
  fake Bot API server of ``tests/fakes/telegram_api.py``. The fake and the simulated users
  run in a child process, as Telegram and its users would be elsewhere; the bot process is
  measured alone. The sender's rate limits are off (Telegram itself allows ~30 messages/s).

``--processes N`` (memory channel) runs N bot processes on the one database, the users
split between them, each process delivering its own users' replies: the deployment that
uses more than one core. Its figures are sums over the processes.

Two phases:
1. **throughput** (``--throughput-seconds``) — ``--concurrency`` users at a time each send
   their next turn as soon as the bot answered the previous one (closed loop); prints dialog
   turns per second and replies delivered per second while the outbox keeps up.
2. **soak at a fixed rate** (``--seconds``) — turns offered at ``--rate`` per second (open
   loop); prints p50/p99 of a turn (from the user's action to the bot's first reply in the
   chat), the outbox lag (commit to delivery) and the bot process's RSS growth between the
   first and the last tenth of the run.

Each of ``--users`` simulated users walks the real dialog: a question, the KB's answer or
suggestions, "didn't help", checklist steps, a cancel or a new request, over and over. A
large population keeps each user at a human pace (the flood limit is 10 typed events per
10 s). A PostgreSQL URL has its ``public`` schema wiped first: use a scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr
from sqlalchemy import func, select, text

from bot.app import App, freeze_startup_heap
from bot.domain import UserEvent, UserRef
from bot.outbox import OutboxItem, SendResult
from bot.storage.db import Database
from bot.storage.models import Outbox
from config.settings import DatabaseSettings, EscalationSettings, Settings, TelegramSettings

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
REPLY_TIMEOUT = 60.0  # seconds a simulated user waits for an answer before giving up


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process in MB (Linux /proc)."""
    with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# ---------------------------------------------------------------------------- the users


@dataclass
class Script:
    """What one simulated user does next, given the buttons the bot last showed them."""

    rng: random.Random
    turns_in_request: int = 0

    def next(self, buttons: list[tuple[str, str]]) -> tuple[str, str]:
        """``("text", words)``, ``("command", name)`` or ``("button", data)``."""
        self.turns_in_request += 1
        if self.turns_in_request > 6 or not buttons:
            self.turns_in_request = 0
            if self.rng.random() < 0.5:
                return "command", "new"
            return "text", self.rng.choice(QUESTIONS)
        if any("Done" in label for label, _ in buttons):
            # Leave without escalating: keeps the run about the dialog, not ticket growth.
            return "command", "cancel"
        return "button", buttons[-1][1] if len(buttons) > 1 else buttons[0][1]


@dataclass
class Results:
    """What a run measured (both channels fill the same fields)."""

    closed_turns: int = 0
    closed_seconds: float = 0.0
    closed_replies: int = 0
    backlog_after_closed: int = 0
    drain_seconds: float = 0.0
    offered: int = 0
    skipped: int = 0  # offered while every user was still waiting for an answer
    open_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    timeouts: int = 0
    refused: int = 0
    bot_cpu_seconds: float = 0.0  # CPU time of the bot process over both phases
    closed_cpu_seconds: float = 0.0  # of it, in the closed loop (memory channel)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class IdlePool:
    """Users not waiting for an answer; a random one is taken in O(1)."""

    def __init__(self, users: int, seed: int) -> None:
        self.free = list(range(users))
        self.rng = random.Random(seed)

    def take(self) -> int | None:
        """A random idle user (now busy), or ``None`` when every user waits."""
        if not self.free:
            return None
        i = self.rng.randrange(len(self.free))
        self.free[i], self.free[-1] = self.free[-1], self.free[i]
        return self.free.pop()

    def give_back(self, n: int) -> None:
        """``n`` got its answer."""
        self.free.append(n)


async def closed_loop(
    turn: Callable[[int], Awaitable[None]], users: int, concurrency: int, seconds: float
) -> int:
    """``concurrency`` workers each run turns of random idle users for ``seconds``."""
    pool = IdlePool(users, 1)
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            n = pool.take()
            assert n is not None  # fewer workers than users
            try:
                await turn(n)
            finally:
                pool.give_back(n)
            done += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, users))))
    return done


async def open_loop(
    turn: Callable[[int], Awaitable[None]], users: int, rate: float, seconds: float, res: Results
) -> None:
    """Offer a turn of a random idle user every ``1/rate`` seconds for ``seconds``."""
    pool = IdlePool(users, 2)
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int) -> None:
        try:
            await turn(n)
        finally:
            pool.give_back(n)

    start = time.perf_counter()
    next_at = start
    while next_at < start + seconds:
        now = time.perf_counter()
        if now < next_at:
            await asyncio.sleep(next_at - now)
        next_at += 1.0 / rate
        res.offered += 1
        n = pool.take()
        if n is None:
            res.skipped += 1
            continue
        task = asyncio.create_task(one(n))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    res.open_seconds = time.perf_counter() - start


# ---------------------------------------------------------------------------- memory channel


class BenchSender:
    """The memory channel's delivery side, keeping only what the users need."""

    channel = "memory"

    def __init__(self) -> None:
        self.buttons: dict[str, list[tuple[str, str]]] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.delivered = 0

    async def send(self, item: OutboxItem) -> SendResult:
        """Deliver in memory; wake the user waiting for a reply."""
        self.delivered += 1
        if item.kind == "message":
            rows = item.payload.get("buttons") or []
            flat = [(b["label"], b["data"]) for row in rows for b in row]
            if flat:
                self.buttons[item.target] = flat
        waiter = self.waiters.pop(item.target, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter())
        return SendResult()


async def run_memory(
    args: argparse.Namespace,
    url: str,
    rss: list[tuple[float, float]],
    *,
    first_user: int = 0,
    sync: Callable[[], None] | None = None,
) -> Results:
    """Both phases through the in-memory channel.

    With ``--processes`` this runs in each bot process for its own slice of the users
    (``args.users`` from ``first_user``); ``sync`` waits for the other processes before each
    phase, and the dispatcher takes only its own users' rows (the replies are delivered to
    an in-memory sender, which only the process of that user has).
    """
    names = [f"u{first_user + n}" for n in range(args.users)]
    mine = frozenset(names)
    app = await App.create(_settings(url), migrate=sync is None)
    sender = BenchSender()
    dispatcher = app.dispatcher(
        {"memory": sender},
        target_filter=None if sync is None else (lambda _channel, target: target in mine),
    )
    stop = asyncio.Event()
    delivery = asyncio.create_task(dispatcher.run_forever(stop))
    scripts = [Script(random.Random(first_user + n)) for n in range(args.users)]
    refs = [
        UserRef("memory", name, display_name=f"User {name[1:]}", language_code="en")
        for name in names
    ]
    seq = iter(range(1, 10**12))
    res = Results()
    record = [False]
    freeze_startup_heap()  # as handlers/server.py does once started

    async def turn(n: int) -> None:
        name = names[n]
        kind, value = scripts[n].next(sender.buttons.get(name, []))
        eid = f"e{first_user}-{next(seq)}"  # unique across the processes too
        if kind == "text":
            ev = UserEvent("memory", eid, refs[n], name, "message", text=value)
        elif kind == "command":
            ev = UserEvent("memory", eid, refs[n], name, "command", command=value)
        else:
            ev = UserEvent("memory", eid, refs[n], name, "button", data=value)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[float] = loop.create_future()
        sender.waiters[name] = waiter
        t0 = time.perf_counter()
        result = await app.handle_user(ev)
        committed = time.perf_counter()
        if result.refused:  # a stale button or the flood limit: a toast, no message
            sender.waiters.pop(name, None)
            if record[0]:
                res.refused += 1
                res.latencies.append(committed - t0)
            return
        try:
            at = await asyncio.wait_for(waiter, REPLY_TIMEOUT)
        except TimeoutError:
            res.timeouts += 1
            return
        if record[0]:
            res.latencies.append(at - t0)
            res.lags.append(at - committed)

    loop = asyncio.get_running_loop()
    if sync is not None:
        await loop.run_in_executor(None, sync)
    sampler = asyncio.create_task(_sample_rss(rss, os.getpid()))
    cpu0 = time.process_time()
    delivered0 = sender.delivered
    t0 = time.perf_counter()
    res.closed_turns = await closed_loop(
        turn, args.users, args.concurrency, args.throughput_seconds
    )
    res.closed_seconds = time.perf_counter() - t0
    res.closed_cpu_seconds = time.process_time() - cpu0
    res.closed_replies = sender.delivered - delivered0
    res.backlog_after_closed = await _backlog(app.db)
    t1 = time.perf_counter()
    while await _backlog(app.db):  # noqa: ASYNC110 (a database count, not an in-process flag)
        await asyncio.sleep(0.05)
    res.drain_seconds = time.perf_counter() - t1
    record[0] = True
    gc.collect()
    if sync is not None:
        await loop.run_in_executor(None, sync)
    await open_loop(turn, args.users, args.rate, args.seconds, res)
    res.bot_cpu_seconds = time.process_time() - cpu0
    sampler.cancel()
    stop.set()
    await delivery
    await app.close()
    return res


async def _backlog(db: Database) -> int:
    async with db.transaction() as s:
        return int(
            (
                await s.execute(
                    select(func.count()).where(Outbox.status.in_(("pending", "sending")))
                )
            ).scalar_one()
        )


async def _sample_rss(rss: list[tuple[float, float]], pid: int) -> None:
    start = time.perf_counter()
    while True:
        rss.append((time.perf_counter() - start, rss_mb(pid)))
        await asyncio.sleep(1.0)


def _settings(url: str, **extra: Any) -> Settings:
    return Settings(
        database=DatabaseSettings(url=url),
        escalation=EscalationSettings(default_destination="memory:l2"),
        **extra,
    )


# ---------------------------------------------------------------------------- telegram


async def run_telegram(
    args: argparse.Namespace, url: str, rss: list[tuple[float, float]]
) -> Results:
    """Both phases through the aiogram adapter; the fake Bot API runs in a child process."""
    from handlers.telegram import TelegramChannel
    from handlers.telegram_sender import RateLimits

    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=telegram_side, args=(theirs, vars(args)), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    api_url, token = await loop.run_in_executor(None, ours.recv)
    app = await App.create(
        _settings(
            url,
            telegram=TelegramSettings(bot_token=SecretStr(token), api_url=api_url),
        )
    )
    channel = TelegramChannel(app, limits=RateLimits.unlimited(), polling_timeout=10)
    dispatcher = app.dispatcher({channel.name: channel.sender})
    stop = asyncio.Event()
    delivery = asyncio.create_task(dispatcher.run_forever(stop))
    await channel.start()
    freeze_startup_heap()  # as handlers/server.py does once started
    sampler = asyncio.create_task(_sample_rss(rss, os.getpid()))
    cpu0 = time.process_time()
    ours.send("go")
    res = Results(**await loop.run_in_executor(None, ours.recv))
    res.bot_cpu_seconds = time.process_time() - cpu0
    sampler.cancel()
    await channel.stop()
    stop.set()
    await delivery
    await channel.close()
    await app.close()
    ours.send("bye")
    child.join(timeout=30)
    return res


def telegram_side(conn: Connection, options: dict[str, Any]) -> None:
    """The child process: the fake Bot API and the simulated Telegram users."""
    asyncio.run(_telegram_side(conn, argparse.Namespace(**options)))


async def _telegram_side(conn: Connection, args: argparse.Namespace) -> None:
    from tests.fakes.telegram_api import FakeChat, FakeMessage, FakeTelegramAPI

    class BenchFake(FakeTelegramAPI):
        """The fake, remembering each chat's newest keyboard and waking waiting users."""

        def __init__(self) -> None:
            super().__init__()
            self.keyboards: dict[int, FakeMessage] = {}
            self.waiters: dict[int, asyncio.Future[float]] = {}
            self.press_of: dict[str, int] = {}  # callback query id -> user id

        def _store(self, chat: FakeChat, *a: Any, **kw: Any) -> FakeMessage:
            msg = super()._store(chat, *a, **kw)
            if msg.buttons():
                self.keyboards[chat.id] = msg
            self._wake(chat.id)
            return msg

        def api_answercallbackquery(self, p: dict[str, Any]) -> bool:
            ok = super().api_answercallbackquery(p)
            cid = str(p.get("callback_query_id"))
            uid = self.press_of.pop(cid, None)
            if uid is not None and p.get("text"):  # refused: the toast is the answer
                self._wake(uid)
            return ok

        def _wake(self, chat_id: int) -> None:
            waiter = self.waiters.pop(chat_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(time.perf_counter())

    fake = BenchFake()
    await fake.start()
    conn.send((fake.url, fake.token))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)  # "go"
    users = [fake.user(10_000 + n, f"User{n}", language_code="en") for n in range(args.users)]
    scripts = [Script(random.Random(n)) for n in range(args.users)]
    res = Results()
    record = [False]
    replies = [0]

    async def turn(n: int) -> None:
        user = users[n]
        kb = fake.keyboards.get(user.id)
        buttons = [(b["text"], b["callback_data"]) for b in kb.buttons()] if kb else []
        kind, value = scripts[n].next(buttons)
        waiter: asyncio.Future[float] = loop.create_future()
        fake.waiters[user.id] = waiter
        t0 = time.perf_counter()
        if kind == "text":
            fake.send_text(user, value)
        elif kind == "command":
            fake.send_text(user, f"/{value}")
        else:
            assert kb is not None
            update = fake.press_data(user, kb, value)
            fake.press_of[update["callback_query"]["id"]] = user.id
        try:
            at = await asyncio.wait_for(waiter, REPLY_TIMEOUT)
        except TimeoutError:
            res.timeouts += 1
            return
        replies[0] += 1
        if record[0]:
            res.latencies.append(at - t0)
        fake.calls.clear()  # the fake's call log would grow for the whole run

    t0 = time.perf_counter()
    res.closed_turns = await closed_loop(
        turn, args.users, args.concurrency, args.throughput_seconds
    )
    res.closed_seconds = time.perf_counter() - t0
    res.closed_replies = replies[0]
    await asyncio.sleep(2.0)  # let the outbox finish the closed loop's last replies
    record[0] = True
    await open_loop(turn, args.users, args.rate, args.seconds, res)
    conn.send(asdict(res))
    await loop.run_in_executor(None, conn.recv)  # "bye": the bot has stopped polling
    await fake.close()


# ---------------------------------------------------------------------------- processes


def run_processes(args: argparse.Namespace, url: str, rss: list[tuple[float, float]]) -> Results:
    """``--processes N``: N bot processes on one database, each with its own slice of the
    users, a share of the concurrency and the rate, and its own dispatcher; the figures
    are their sums (CPU: of all bot processes; RSS: their total)."""
    n = args.processes
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    per_users, per_conc = args.users // n, max(1, args.concurrency // n)
    pipes = []
    children = []
    for k in range(n):
        ours, theirs = ctx.Pipe()
        options = {
            **vars(args),
            "users": per_users,
            "concurrency": per_conc,
            "rate": args.rate / n,
        }
        child = ctx.Process(
            target=memory_process, args=(theirs, options, url, k * per_users, barrier)
        )
        child.start()
        pipes.append(ours)
        children.append(child)
    parts: list[tuple[dict[str, Any], list[tuple[float, float]]]] = [p.recv() for p in pipes]
    for child in children:
        child.join()
    results = [Results(**r) for r, _ in parts]
    total = Results(
        closed_turns=sum(r.closed_turns for r in results),
        closed_seconds=max(r.closed_seconds for r in results),
        closed_replies=sum(r.closed_replies for r in results),
        backlog_after_closed=sum(r.backlog_after_closed for r in results),
        drain_seconds=max(r.drain_seconds for r in results),
        offered=sum(r.offered for r in results),
        skipped=sum(r.skipped for r in results),
        open_seconds=max(r.open_seconds for r in results),
        latencies=[x for r in results for x in r.latencies],
        lags=[x for r in results for x in r.lags],
        timeouts=sum(r.timeouts for r in results),
        refused=sum(r.refused for r in results),
        bot_cpu_seconds=sum(r.bot_cpu_seconds for r in results),
        closed_cpu_seconds=sum(r.closed_cpu_seconds for r in results),
    )
    samples = min(len(series) for _, series in parts)
    rss.extend(
        (parts[0][1][i][0], sum(series[i][1] for _, series in parts)) for i in range(samples)
    )
    return total


def memory_process(
    conn: Connection, options: dict[str, Any], url: str, first_user: int, barrier: Any
) -> None:
    """One bot process of ``--processes``: both phases for its users; sends its results."""
    rss: list[tuple[float, float]] = []
    res = asyncio.run(
        run_memory(
            argparse.Namespace(**options), url, rss, first_user=first_user, sync=barrier.wait
        )
    )
    conn.send((asdict(res), rss))


# ---------------------------------------------------------------------------- main


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
        url = f"sqlite:///{folder / 'load.db'}"
    elif url.startswith("postgresql"):
        await _reset_pg(url)
    rss: list[tuple[float, float]] = []
    args.load_at_start = os.getloadavg()[0]
    if args.processes > 1:
        db = Database(url)
        await db.upgrade()  # once, before the processes start
        await db.dispose()
        loop = asyncio.get_running_loop()
        res = await loop.run_in_executor(None, run_processes, args, url, rss)
    else:
        runner = run_telegram if args.channel == "telegram" else run_memory
        res = await runner(args, url, rss)
    report(args, url, res, rss)


def report(
    args: argparse.Namespace, url: str, res: Results, rss: list[tuple[float, float]]
) -> None:
    """Print the figures of a run."""
    print(
        f"channel: {args.channel}  database: {url.split('://')[0]}  users: {args.users}  "
        f"bot processes: {args.processes}  "
        f"cpus: {os.cpu_count()}  load average (1 min) at the start {args.load_at_start:.2f}, "
        f"at the end {os.getloadavg()[0]:.2f}"
    )
    rate = res.closed_turns / res.closed_seconds if res.closed_seconds else 0.0
    procs = "bot process" if args.processes == 1 else f"{args.processes} bot processes together"
    line = (
        f"throughput (closed loop, {args.concurrency} at a time, {res.closed_seconds:.0f} s): "
        f"{rate:.0f} dialog turns/s ({res.closed_turns} turns, "
        f"{res.closed_replies / max(res.closed_seconds, 1e-9):.0f} replies/s delivered)"
    )
    if args.channel == "memory":
        line += (
            f"; outbox backlog at the end {res.backlog_after_closed} rows, "
            f"drained in {res.drain_seconds:.1f} s"
        )
    print(line)
    turns = len(res.latencies)
    print(
        f"open loop at {args.rate:g}/s for {res.open_seconds:.0f} s: {turns} turns measured "
        f"({res.offered} offered, {res.skipped} skipped with every user busy, "
        f"{res.timeouts} without an answer in {REPLY_TIMEOUT:.0f} s, {res.refused} refused); "
        f"turn p50 {1000 * pct(res.latencies, 0.5):.1f} ms, "
        f"p99 {1000 * pct(res.latencies, 0.99):.1f} ms, "
        f"max {1000 * max(res.latencies, default=0):.0f} ms"
    )
    total = res.closed_turns + res.offered - res.skipped
    if res.bot_cpu_seconds and total:
        per_turn = res.bot_cpu_seconds / total
        closed = ""
        if res.closed_cpu_seconds and res.closed_turns:
            closed = (
                f"; {1000 * res.closed_cpu_seconds / res.closed_turns:.2f} ms in the closed loop"
            )
        print(
            f"{procs} CPU: {1000 * per_turn:.2f} ms per turn over both phases "
            f"({res.bot_cpu_seconds:.0f} s for {total} turns){closed}"
        )
    if res.lags:
        print(
            f"outbox lag (commit to delivery): p50 {1000 * pct(res.lags, 0.5):.1f} ms, "
            f"p99 {1000 * pct(res.lags, 0.99):.1f} ms, max {1000 * max(res.lags):.0f} ms"
        )
    if rss:
        tenth = max(1, len(rss) // 10)
        early = statistics.mean(m for _, m in rss[:tenth])
        late = statistics.mean(m for _, m in rss[-tenth:])
        print(
            f"{procs} RSS: {early:.0f} MB in the first tenth of the run, {late:.0f} MB in "
            f"the last, growth {100 * (late - early) / early:.1f}% "
            f"(peak {max(m for _, m in rss):.0f} MB)"
        )


def main() -> None:
    """Command-line entry."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--channel", choices=("memory", "telegram"), default="memory")
    p.add_argument("--db", help="database URL (default: a new SQLite file, sqlite:///)")
    p.add_argument("--users", type=int, default=2000, help="simulated users")
    p.add_argument("--concurrency", type=int, default=64, help="users at a time, closed loop")
    p.add_argument("--throughput-seconds", type=float, default=60, help="closed-loop phase")
    p.add_argument("--seconds", type=float, default=240, help="fixed-rate (soak) phase")
    p.add_argument("--rate", type=float, default=100, help="offered turns per second")
    p.add_argument("--quick", action="store_true", help="10 s + 20 s: a smoke run")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="bot processes on the one database, users split between them (memory channel)",
    )
    args = p.parse_args()
    if args.processes > 1 and args.channel != "memory":
        p.error("--processes needs --channel memory")
    if args.quick:
        args.throughput_seconds, args.seconds = 10.0, 20.0
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
