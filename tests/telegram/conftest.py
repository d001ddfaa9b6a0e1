"""The Telegram adapter against the fake Bot API server: fixtures and a small driver.

Tests run the real app on the test's fresh database, the real :class:`TelegramChannel`
(aiogram, real HTTP to 127.0.0.1), and step it deterministically: ``poll_once`` fetches and commits
what the fake has queued, ``drain`` delivers the outbox — no sleeping on real time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from bot.app import App
from bot.clock import FakeClock
from bot.outbox import Dispatcher
from config.settings import DatabaseSettings, EscalationSettings, Settings, TelegramSettings
from handlers.telegram import TelegramChannel
from handlers.telegram_sender import RateLimits
from tests.fakes.telegram_api import FakeMessage, FakeTelegramAPI, FakeUser

L2 = -1001234567890
FOREIGN = -1009999


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegramAPI]:
    """A started fake Bot API server."""
    api = FakeTelegramAPI()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


def tg_settings(fake: FakeTelegramAPI, database_url: str, **telegram: Any) -> Settings:
    """Settings that route tickets to ``telegram:<L2>`` through the fake."""
    esc = telegram.pop("escalation", None) or EscalationSettings()
    return Settings(
        database=DatabaseSettings(url=database_url),
        telegram=TelegramSettings(
            bot_token=SecretStr(fake.token),
            api_url=fake.url,
            l2_chat_id=telegram.pop("l2_chat_id", L2),
            **telegram,
        ),
        escalation=esc,
    )


@dataclass
class Tg:
    """Drives users and consultants through the fake, the channel and the real app."""

    fake: FakeTelegramAPI
    app: App
    channel: TelegramChannel
    dispatcher: Dispatcher
    clock: FakeClock
    users: dict[str, FakeUser] = field(default_factory=dict)

    async def step(self) -> None:
        """Fetch and commit everything queued, then deliver what is due."""
        for _ in range(5):
            n = await self.channel.poll_once()
            await self.dispatcher.drain()
            if n == 0:
                break
        await self.channel.poll_once()  # confirm the offset

    def user(self, name: str, uid: int, lang: str = "en", **kw: Any) -> FakeUser:
        u = self.fake.user(uid, name, language_code=lang, **kw)
        self.users[name] = u
        return u

    async def say(self, user: FakeUser, text: str) -> FakeMessage:
        msg = self.fake.send_text(user, text)
        await self.step()
        return msg

    async def press(self, user: FakeUser, label: str, chat_id: int | None = None) -> None:
        msg = self.fake.with_buttons(chat_id if chat_id is not None else user.id)
        self.fake.press(user, msg, label)
        await self.step()

    def texts(self, user: FakeUser) -> list[str]:
        return self.fake.texts(user.id)

    def last(self, user: FakeUser) -> str:
        return self.fake.last(user.id).text

    def transcript(self, user: FakeUser) -> str:
        return "\n---\n".join(self.texts(user))

    async def escalate(
        self, user: FakeUser, details: str = "Error 0x42 since this morning"
    ) -> None:
        """Question -> KB answer -> Didn't help -> checklist -> details -> urgency -> ticket."""
        await self.say(user, "/start")
        await self.say(user, "I forgot my password")
        await self.press(user, "Didn't help")
        for _ in range(12):
            last = self.fake.with_buttons(user.id)
            labels = [b["text"] for b in last.buttons()]
            if any("Done" in lbl for lbl in labels):
                break
            self.fake.press_data(user, last, last.buttons()[-1]["callback_data"])
            await self.step()
        await self.say(user, details)
        await self.press(user, "Done")
        await self.press(user, "Blocks my work")

    def card(self, chat_id: int = L2) -> FakeMessage:
        """The newest ticket card in the desk chat."""
        for m in reversed(self.fake.sent(chat_id)):
            if "Take" in str(m.buttons()) or "Resolve" in str(m.buttons()) or "🎫" in m.text:
                return m
            if m.text.split("\n")[0].count("FL-") and m.buttons():
                return m
        raise AssertionError(f"no card in {chat_id}: {self.fake.texts(chat_id)}")

    async def in_thread(
        self,
        agent: FakeUser,
        text: str,
        *,
        card: FakeMessage | None = None,
        chat_id: int = L2,
        reply_to: int | None = None,
    ) -> FakeMessage:
        """A consultant writes in the ticket's thread (its topic, or a reply to the card)."""
        card = card or self.card(chat_id)
        chat = self.fake.chats[chat_id]
        if chat.is_forum:
            msg = self.fake.send_text(
                agent, text, chat_id=chat_id, thread_id=card.thread_id, reply_to=reply_to
            )
        else:
            msg = self.fake.send_text(
                agent, text, chat_id=chat_id, reply_to=reply_to or card.message_id
            )
        await self.step()
        return msg


MakeTg = Callable[..., Awaitable[Tg]]


async def serve_webhook(channel: TelegramChannel, port: int) -> web.AppRunner:
    """The channel's webhook route on a local HTTP server at ``port`` (``cleanup()`` it)."""
    web_app = web.Application()
    channel.mount(web_app)
    runner = web.AppRunner(web_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def thread_of(msg: FakeMessage) -> int:
    """The forum topic a message is in (it must be in one)."""
    assert msg.thread_id is not None, "not in a topic"
    return msg.thread_id


@pytest.fixture
async def make_tg(
    fake: FakeTelegramAPI, database_url: str, clock: FakeClock
) -> AsyncIterator[MakeTg]:
    """Build a driver: ``await make_tg(forum=True, consultants=[...])``."""
    made: list[Tg] = []

    async def build(*, forum: bool = False, **telegram: Any) -> Tg:
        fake.add_group(L2, "L2 desk", forum=forum)
        fake.now = lambda: clock.now().timestamp()  # message dates follow the test's clock
        settings = tg_settings(fake, database_url, **telegram)
        app = await App.create(settings, clock, migrate=False)
        channel = TelegramChannel(app, limits=RateLimits.unlimited(), album_window=0.2)
        dispatcher = app.dispatcher({channel.name: channel.sender})
        await channel.setup()
        tg = Tg(fake, app, channel, dispatcher, clock)
        made.append(tg)
        return tg

    yield build
    for tg in made:
        await tg.channel.stop()
        await tg.channel.close()
        await tg.app.close()
