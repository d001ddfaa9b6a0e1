"""Webhook mode: the secret is checked on every request; 200 only after the commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from sqlalchemy import select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import ProcessedEvent
from handlers.telegram import WEBHOOK_PATH, TelegramChannel
from handlers.telegram_sender import RateLimits
from tests.conftest import free_port
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.telegram.conftest import L2, serve_webhook, tg_settings

Hooked = tuple[TelegramChannel, App]


@pytest.fixture
async def hooked(
    fake: FakeTelegramAPI, database_url: str, clock: FakeClock
) -> AsyncIterator[tuple[TelegramChannel, App]]:
    port = free_port()
    fake.add_group(L2)
    settings = tg_settings(
        fake,
        database_url,
        webhook_url=f"http://127.0.0.1:{port}{WEBHOOK_PATH}",
        webhook_secret="s3cret-token",
    )
    app = await App.create(settings, clock, migrate=False)
    channel = TelegramChannel(app, limits=RateLimits.unlimited(), album_window=0.1)
    runner = await serve_webhook(channel, port)
    await channel.start()
    await fake.wait_for(lambda: fake.webhook, what="setWebhook")
    try:
        yield channel, app
    finally:
        await channel.stop()
        await runner.cleanup()
        await channel.close()
        await app.close()


async def test_webhook_secret_is_checked(hooked: Hooked, fake: FakeTelegramAPI) -> None:
    channel, app = hooked
    assert fake.webhook is not None and fake.webhook["secret_token"] == "s3cret-token"
    assert "callback_query" in fake.webhook["allowed_updates"]
    ann = fake.user(5001, "Ann")
    fake.send_text(ann, "/start")
    update = fake.updates.pop()
    assert await fake.push(update, secret="wrong") == 401
    assert await fake.push(update, secret="") == 401
    async with aiohttp.ClientSession() as s, s.post(fake.webhook["url"], json=update) as r:
        assert r.status == 401
    assert app.dispatchers == [] and fake.sent(ann.id) == []
    dispatcher = app.dispatcher({"telegram": channel.sender})
    assert await fake.push(update) == 200  # committed before this answer
    assert await fake.push(update) == 200  # a re-delivery: processed once
    await dispatcher.drain()
    assert len(fake.texts(ann.id)) == 1
    # Polling is off while the webhook is set.
    assert not fake.called("getUpdates")


async def test_webhook_album_parts_wait_for_each_other(
    hooked: Hooked, fake: FakeTelegramAPI
) -> None:
    channel, app = hooked
    dispatcher = app.dispatcher({"telegram": channel.sender})
    ann = fake.user(5001, "Ann")
    fake.send_text(ann, "/start")
    assert await fake.push(fake.updates.pop()) == 200
    fake.send_album(ann, 3, caption="three screenshots")
    parts = [fake.updates.pop(0) for _ in range(len(fake.updates))]
    statuses = await asyncio.gather(*(fake.push(u) for u in parts))
    assert statuses == [200, 200, 200]
    await dispatcher.drain()
    # One event for the three parts.
    async with app.db.transaction() as s:
        ids = list((await s.execute(select(ProcessedEvent.event_id))).scalars())
    assert len(ids) == 2 and sum(i.startswith("g") for i in ids) == 1, ids


async def test_bad_body_is_400(hooked: Hooked, fake: FakeTelegramAPI) -> None:
    assert fake.webhook is not None
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            fake.webhook["url"],
            data=b"not json",
            headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-token"},
        ) as r,
    ):
        assert r.status == 400


async def test_after_stop_updates_get_503_and_telegrams_retry_is_handled(
    hooked: Hooked, fake: FakeTelegramAPI
) -> None:
    """During shutdown nothing new is taken in: Telegram hears 503 and re-sends the update
    to the next process, which handles it once."""
    channel, app = hooked
    ann = fake.user(5001, "Ann")
    fake.send_text(ann, "/start")
    update = fake.updates.pop()
    await channel.stop()
    assert await fake.push(update) == 503
    async with app.db.transaction() as s:
        assert list((await s.execute(select(ProcessedEvent))).scalars()) == []
    channel._stopping.clear()  # the next process
    assert await fake.push(update) == 200
    async with app.db.transaction() as s:
        assert len(list((await s.execute(select(ProcessedEvent))).scalars())) == 1
