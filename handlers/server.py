"""The long-running bot process: platform channels, one HTTP server, timers, the outbox.

``firstline run`` with a platform token lands here. Every platform channel plugs in the
same way (:class:`PlatformChannel`): it may mount routes on the one aiohttp server, it
starts its intake (long polling, Socket Mode...), and it gives the outbox a sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.app import App, freeze_startup_heap
from bot.clock import Clock
from bot.metrics import CONTENT_TYPE
from bot.outbox import Dispatcher, Sender, outbox_stats
from config.settings import Settings

log = logging.getLogger(__name__)

# At shutdown, what is already due in the outbox goes out first, for at most this long.
SHUTDOWN_DELIVERY_SECONDS = 10.0


class PlatformChannel(Protocol):
    """A platform adapter as the server sees it."""

    name: str

    @property
    def sender(self) -> Sender:
        """Delivers this platform's outbox rows."""
        ...

    def mount(self, web_app: web.Application) -> None:
        """Add HTTP routes (webhooks) to the shared server, if the channel uses any."""
        ...

    async def start(self) -> None:
        """Begin intake (polling, sockets); must return once started."""
        ...

    async def stop(self) -> None:
        """Stop intake; in-flight updates finish first."""
        ...


def build_channels(app: App) -> list[PlatformChannel]:
    """The channels the settings ask for (imported lazily: the SDKs stay optional to load)."""
    channels: list[PlatformChannel] = []
    settings = app.settings
    if settings.telegram.bot_token is not None:
        from handlers.telegram import TelegramChannel

        channels.append(TelegramChannel(app))
    if settings.slack.bot_token is not None:
        from handlers.slack import SlackChannel

        channels.append(SlackChannel(app))
    return channels


def build_web(app: App, stopping: asyncio.Event | None = None) -> web.Application:
    """The HTTP server with the health endpoint; channels add their routes.

    Once ``stopping`` is set (shutdown began) ``/healthz`` answers 503, so a load balancer
    sends nothing more here while the last replies go out.
    """
    web_app = web.Application(client_max_size=8 * 1024 * 1024)

    async def healthz(_request: web.Request) -> web.Response:
        if stopping is not None and stopping.is_set():
            return web.json_response({"status": "stopping"}, status=503)
        try:
            stats = await outbox_stats(app.db, app.clock.now())
        except Exception as exc:  # the database is down: say so, with 503
            return web.json_response({"status": "error", "error": type(exc).__name__}, status=503)
        return web.json_response({"status": "ok", "outbox": stats})

    async def metrics(_request: web.Request) -> web.Response:
        try:
            await app.metrics.refresh(app.db, app.clock.now())
        except Exception:  # still serve the process counters when the database is down
            log.exception("metrics: database figures unavailable")
        return web.Response(body=app.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    web_app.router.add_get("/healthz", healthz)
    web_app.router.add_get("/metrics", metrics)
    return web_app


async def run_digest(app: App, wake: Callable[[], None]) -> int:
    """Send the latest due digest once (idempotent across calls and processes)."""
    from escalation.digest import send_due

    try:
        sent = await send_due(app, app.clock.now())
    except Exception:
        log.exception("digest failed; the next run retries")
        return 0
    if sent:
        wake()
    return sent


def schedule_digest(app: App, scheduler: AsyncIOScheduler, wake: Callable[[], None]) -> None:
    """A cron job at the managers' local time, plus a safety net every 10 minutes.

    APScheduler's cron trigger keeps the local wall-clock time across DST changes; the
    digest itself is claimed per day and chat, so the two jobs never send twice.
    """
    hour, minute = (int(x) for x in app.settings.digest.time.split(":"))
    scheduler.add_job(
        run_digest,
        CronTrigger(hour=hour, minute=minute, timezone=app.settings.digest.timezone),
        args=[app, wake],
        id="digest:daily",
        replace_existing=True,
        misfire_grace_time=3600,
        coalesce=True,
    )
    scheduler.add_job(
        run_digest,
        "interval",
        minutes=10,
        args=[app, wake],
        id="digest:catch-up",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
    )


def _every(
    scheduler: AsyncIOScheduler,
    job_id: str,
    what: str,
    job: Callable[[], Awaitable[None]],
    *,
    at_start: bool = False,
    **interval: int,
) -> None:
    """Run ``job`` at ``interval`` (first at start with ``at_start``); a failure is logged
    and the next run retries."""

    async def run() -> None:
        try:
            await job()
        except Exception:
            log.exception("%s failed; the next run retries", what)

    extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if at_start else {}
    scheduler.add_job(run, "interval", id=job_id, replace_existing=True, coalesce=True,
                      max_instances=1, **interval, **extra)


def schedule_flood_flush(app: App, scheduler: AsyncIOScheduler, wake: Callable[[], None]) -> None:
    """Every 10 s, post messages held back by flood control to L2 as one summary."""
    from bot.flood import flush_held

    async def flush() -> None:
        if await flush_held(app.db, app.desk, app.clock):
            wake()

    _every(scheduler, "flood:flush", "flood flush", flush, seconds=10)


def schedule_outbox_pruning(app: App, scheduler: AsyncIOScheduler) -> None:
    """Hourly, delete delivered outbox rows older than ``database.outbox_keep``."""
    from bot.maintenance import prune_outbox

    async def prune() -> None:
        n = await prune_outbox(app.db, app.clock.now() - app.settings.database.outbox_keep)
        if n:
            log.info("deleted %d delivered outbox rows", n)

    _every(scheduler, "outbox:prune", "outbox pruning", prune, at_start=True, hours=1)


def schedule_retention(app: App, scheduler: AsyncIOScheduler) -> None:
    """Daily (first run at start), anonymise what ended before ``privacy.retention`` —
    the running bot's form of ``firstline retention``. Nothing when the period is unset."""
    period = app.settings.privacy.retention
    if period is None:
        return
    from bot.privacy import apply_retention

    async def run() -> None:
        counts = await apply_retention(app.db, app.clock, period)
        done = {k: v for k, v in counts.items() if v}
        if done:
            log.info("retention (%s): %s", period, ", ".join(f"{k}: {v}" for k, v in done.items()))

    _every(scheduler, "privacy:retention", "retention", run, at_start=True, days=1)


async def deliver_due(dispatcher: Dispatcher, seconds: float) -> int:
    """Outbox passes until nothing is due or ``seconds`` have passed; the rows sent.

    A pass is never cut short, so every call that was made is also recorded (rows that wait
    for a retry, or are left when time runs out, go out after the next start).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    total = 0
    while loop.time() < deadline:
        try:
            sent = await dispatcher.run_once()
        except Exception:
            log.exception("outbox pass failed at shutdown")
            break
        if not sent:
            break
        total += sent
    return total


async def serve(
    settings: Settings,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop``); shut down gracefully.

    Shutdown: intake stops (an event being handled finishes and commits), the outbox pass
    in flight finishes and is recorded, then what is due — replies to those last events
    included — is delivered within :data:`SHUTDOWN_DELIVERY_SECONDS`.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    app = await App.create(settings, clock)
    channels = build_channels(app)
    web_app = build_web(app, stopping=stop)
    for ch in channels:
        ch.mount(web_app)
    dispatcher = app.dispatcher({ch.name: ch.sender for ch in channels})
    scheduler = AsyncIOScheduler(timezone=UTC)
    app.timers.attach(scheduler)
    app.timers.after_fire = dispatcher.wake
    runner = web.AppRunner(web_app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http.host, settings.http.port)
    await site.start()
    log.info("HTTP server on %s:%s", settings.http.host, settings.http.port)
    if settings.digest.enabled and settings.digest.recipients:
        schedule_digest(app, scheduler, dispatcher.wake)
        await run_digest(app, dispatcher.wake)  # a digest missed while we were down
    schedule_flood_flush(app, scheduler, dispatcher.wake)
    schedule_outbox_pruning(app, scheduler)
    schedule_retention(app, scheduler)
    scheduler.start()
    await app.timers.sweep()  # whatever came due while we were down
    # Delivery outlives intake at shutdown, so it has a stop event of its own.
    delivering = asyncio.Event()
    delivery = asyncio.create_task(dispatcher.run_forever(delivering), name="outbox")
    try:
        for ch in channels:
            await ch.start()
            log.info("%s channel started", ch.name)
        freeze_startup_heap()
        await stop.wait()
    finally:
        log.info("shutting down")
        for ch in channels:
            with contextlib.suppress(Exception):
                await ch.stop()
        stop.set()
        delivering.set()
        with contextlib.suppress(Exception):
            await delivery
        await deliver_due(dispatcher, SHUTDOWN_DELIVERY_SECONDS)
        scheduler.shutdown(wait=False)
        await runner.cleanup()
        await app.close()
