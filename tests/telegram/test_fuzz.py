"""Property-based tests of the Telegram adapter: random updates through the webhook and
through ``getUpdates`` never crash, hang, get a 5xx, or leak one user's words to another.

Every text an end user writes carries that user's marker; the bot's messages in a user's
private chat must never contain another user's marker. The webhook's answer is exact: 401 for
a wrong secret, 400 for a body that is not an update, 200 for anything that is one (known or
not, readable or not). As in ``tests/test_fuzz.py`` one app serves all examples of a test and
the event loop is driven by hand, because hypothesis calls the example synchronously.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import Outbox, ProcessedEvent
from handlers.telegram import WEBHOOK_PATH, TelegramChannel
from handlers.telegram_sender import RateLimits
from tests.conftest import free_port
from tests.fakes.telegram_api import FakeTelegramAPI, FakeUser
from tests.telegram.conftest import FOREIGN, L2, tg_settings
from tests.test_fuzz import (
    ErrorLog,
    any_text,
    button_data,
    json_values,
    markup_text,
    nasty_text,
)

SECRET = "fuzz-secret-token"
OP_TIMEOUT = 10.0  # seconds: anything slower is a hang
USERS = {5001: "ann", 5003: "cid", 5004: "dan"}
MARKERS = {uid: f"Mk{name.upper()}{uid}x" for uid, name in USERS.items()}
BOB = 9001  # a consultant (the desk group is the consultant list)
CHANNEL_CHAT = -100777
# What the fake Bot API refuses when *our* rendering is wrong (never the user's fault).
OUR_MISTAKES = ("parse entities", "too long", "BUTTON_DATA_INVALID", "is empty", "unallowed")

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# ---------------------------------------------------------------------- strategies

update_ids = st.integers(min_value=1, max_value=60)  # small: duplicates and disorder
texts = st.one_of(
    any_text,
    markup_text,
    nasty_text,
    st.sampled_from(["/start", "/help", "/new", "/status", "/cancel", "/forget", "/lang"]),
    st.sampled_from(["/take", "/resolve", "/note hi", "/priority critical", "/take@other_bot"]),
    st.just("I forgot my password"),
)
entity = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["bot_command", "bold", "text_link", "mention", "url", "custom_emoji", "zz"]
        ),
        "offset": st.integers(-3, 5000),
        "length": st.integers(-3, 5000),
    },
    optional={"url": st.sampled_from(["https://x.test", "javascript:1", ""])},
)


def user_json(uid: int, *, bot: bool = False) -> dict[str, Any]:
    """A ``User`` object; an end user's first name carries their marker."""
    name = MARKERS.get(uid, "Bob")
    return {"id": uid, "is_bot": bot, "first_name": name, "language_code": "en"}


def private_chat(uid: int) -> dict[str, Any]:
    return {"id": uid, "type": "private", "first_name": MARKERS.get(uid, "x")}


DESK_CHAT = {"id": L2, "type": "supergroup", "title": "L2 desk"}


@st.composite
def message(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A message object and whether it is a well-formed private message by a known user."""
    where = draw(st.sampled_from(["private", "private", "private", "desk", "foreign", "channel"]))
    uid = draw(st.sampled_from(sorted(USERS)))
    msg: dict[str, Any] = {
        "message_id": draw(st.integers(1, 10**6)),
        "date": draw(st.integers(0, 2**31 - 1)),
    }
    if where == "private":
        msg["chat"], msg["from"] = private_chat(uid), user_json(uid)
    elif where == "desk":
        msg["chat"], msg["from"] = DESK_CHAT, user_json(BOB)
        if draw(st.booleans()):  # a reply in a ticket's thread (a card or a relayed post)
            msg["reply_to_message"] = {
                "message_id": draw(st.integers(1, 40)),
                "date": 0,
                "chat": DESK_CHAT,
            }
    elif where == "foreign":
        msg["chat"] = {"id": FOREIGN, "type": "group", "title": "random"}
        msg["from"] = user_json(uid)
    else:
        msg["chat"] = {"id": CHANNEL_CHAT, "type": "channel", "title": "news"}
    text = draw(texts)
    if where in ("private", "foreign") and not text.startswith("/"):
        text = f"{MARKERS[uid]} {text}"
    content = draw(st.sampled_from(["text", "text", "caption", "sticker", "location", "none"]))
    readable = where == "private"
    if content == "text":
        msg["text"] = text
        readable = readable and bool(text)
    elif content == "caption":
        msg["caption"] = text
        msg["document"] = {"file_id": "document-file-1", "file_unique_id": "d1"}
    elif content == "sticker":
        msg["sticker"] = {"file_id": "s", "file_unique_id": "s"}  # missing fields: stripped
    elif content == "location":
        msg["location"] = {"latitude": 55.7, "longitude": 37.6}
    else:
        readable = False  # nothing a person wrote: a service message, ignored
    if draw(st.booleans()):
        msg["entities"] = draw(st.lists(entity, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        msg["media_group_id"] = draw(st.sampled_from(["g1", "g2"]))
        readable = False  # albums get an album event id
    if draw(st.integers(0, 9)) == 0:
        msg["message_thread_id"] = draw(st.integers(-1, 50))
        msg["is_topic_message"] = draw(st.booleans())
    if draw(st.integers(0, 14)) == 0:
        msg["from"] = {**msg.get("from", user_json(uid)), "is_bot": True}
        readable = False
    return msg, readable


@st.composite
def callback(draw: st.DrawFn) -> dict[str, Any]:
    """A button press: random data on a bot message in the presser's own chat or the desk."""
    desk = draw(st.booleans())
    uid = BOB if desk else draw(st.sampled_from(sorted(USERS)))
    cq: dict[str, Any] = {
        "id": str(draw(st.integers(1, 10**9))),
        "from": user_json(uid),
        "chat_instance": "ci",
        "data": draw(st.one_of(button_data, st.just("fl:xx:1:y:z"), st.text(max_size=64))),
    }
    if draw(st.integers(0, 9)):
        chat = DESK_CHAT if desk else private_chat(uid)
        cq["message"] = {
            "message_id": draw(st.integers(1, 40)),
            "date": 1,
            "chat": chat,
            "from": {"id": 777000111, "is_bot": True, "first_name": "Firstline"},
            "text": "buttons",
        }
    else:
        cq["inline_message_id"] = "inline-1"
    return cq


@st.composite
def update(draw: st.DrawFn) -> tuple[Any, bool]:
    """A webhook body and whether it is a readable private message by a known user."""
    kind = draw(
        st.sampled_from(
            [
                "message",
                "message",
                "message",
                "edited_message",
                "callback_query",
                "my_chat_member",
                "channel_post",
                "unknown",
                "garbage_part",
            ]
        )
    )
    uid = draw(update_ids)
    if kind in ("message", "edited_message", "channel_post"):
        msg, readable = draw(message())
        if kind == "message" and draw(st.integers(0, 9)) == 0:  # huge, with a marker
            author = msg.get("from", {}).get("id")
            msg["text"] = f"{MARKERS.get(author, '')} " + "лог 😀 " * 5000
        return {"update_id": uid, kind: msg}, readable and kind == "message"
    if kind == "callback_query":
        return {"update_id": uid, kind: draw(callback())}, False
    if kind == "my_chat_member":
        member: dict[str, Any] = {
            "status": draw(st.sampled_from(["member", "left", "kicked", "zz"])),
            "user": {"id": 777000111, "is_bot": True, "first_name": "Firstline"},
        }
        body = {
            "chat": draw(st.sampled_from([DESK_CHAT, {"id": FOREIGN, "type": "group"}])),
            "from": user_json(BOB),
            "date": 1,
            "old_chat_member": {"status": "left", "user": member["user"]},
            "new_chat_member": member,
        }
        return {"update_id": uid, kind: body}, False
    if kind == "unknown":  # a kind a newer Bot API may send
        name = draw(st.sampled_from(["message_reaction", "business_message", "zz_future"]))
        return {"update_id": uid, name: draw(json_values)}, False
    # A known kind whose object is garbage.
    name = draw(st.sampled_from(["message", "callback_query", "edited_message"]))
    return {"update_id": uid, name: draw(json_values)}, False


@dataclass
class Case:
    """One webhook body: its kind (``update``, ``json``, ``raw``), the value, and whether it is
    a readable private message by a known user. Shown shortened when hypothesis reports it."""

    kind: str
    value: Any
    readable: bool

    def __repr__(self) -> str:
        shown = repr(self.value)
        if len(shown) > 1500:
            shown = shown[:1500] + f"... ({len(shown)} characters)"
        return f"Case({self.kind!r}, {shown}, readable={self.readable})"


@st.composite
def user_writes(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """A plain private message from a known user: the engine must commit it."""
    uid = draw(st.sampled_from(sorted(USERS)))
    text = draw(st.one_of(texts, st.just("")))
    msg = {
        "message_id": draw(st.integers(1, 10**6)),
        "date": draw(st.integers(0, 2**31 - 1)),
        "chat": private_chat(uid),
        "from": user_json(uid),
        "text": text if text.startswith("/") else f"{MARKERS[uid]} {text}",
    }
    if draw(st.booleans()):
        msg["entities"] = draw(st.lists(entity, max_size=3))
    # A new update id (None: the test gives it the next unused one), or a possible re-delivery.
    uid_ = draw(st.one_of(st.none(), update_ids))
    return {"update_id": uid_, "message": msg}, True


bodies = st.one_of(
    user_writes().map(lambda u: Case("update", u[0], u[1])),
    user_writes().map(lambda u: Case("update", u[0], u[1])),
    update().map(lambda u: Case("update", u[0], u[1])),
    update().map(lambda u: Case("update", u[0], u[1])),
    update().map(lambda u: Case("update", u[0], u[1])),
    json_values.map(lambda v: Case("json", v, False)),
    st.text(max_size=100).map(lambda v: Case("raw", v, False)),
    st.fixed_dictionaries(
        {"update_id": st.one_of(st.text(max_size=5), st.floats(), st.booleans(), st.none())}
    ).map(lambda v: Case("json", v, False)),
)
secrets = st.sampled_from([SECRET, SECRET, SECRET, SECRET, "", "wrong"])


def expected_status(kind: str, body: Any, secret: str) -> int:
    """What the webhook must answer."""
    if secret != SECRET:
        return 401
    if kind == "raw":
        try:
            body = json.loads(body)
        except ValueError:
            return 400
    if not isinstance(body, dict):
        return 400
    uid = body.get("update_id")
    if isinstance(uid, bool) or not isinstance(uid, int):
        return 400
    return 200


# ---------------------------------------------------------------------- the world


class World:
    """The fake Bot API, the app, the channel on a webhook, and the users."""

    def __init__(self, fake: FakeTelegramAPI, app: App, channel: TelegramChannel) -> None:
        self.fake = fake
        self.app = app
        self.channel = channel
        self.dispatcher = app.dispatcher({"telegram": channel.sender})
        self.users: dict[int, FakeUser] = {}
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def deliver(self) -> None:
        await asyncio.wait_for(self.dispatcher.drain(), OP_TIMEOUT)

    async def processed(self, event_id: str) -> bool:
        async with self.app.db.transaction() as s:
            found = await s.execute(
                select(ProcessedEvent.event_id).where(
                    ProcessedEvent.channel == "telegram", ProcessedEvent.event_id == event_id
                )
            )
            return found.first() is not None

    async def our_mistakes(self) -> list[str]:
        async with self.app.db.transaction() as s:
            errors = (await s.execute(select(Outbox.last_error))).scalars().all()
        return [e for e in errors if e and any(m in e for m in OUR_MISTAKES)]

    def check_sensible(self, loop: asyncio.AbstractEventLoop, errors: ErrorLog) -> None:
        """After an example: no user saw another's data, nothing crashed, and the Bot API
        refused nothing because of how we called it."""
        self.check_no_leak()
        crashed = [r.getMessage() for r in errors.records]
        assert not crashed, crashed
        assert loop.run_until_complete(self.our_mistakes()) == []

    def check_no_leak(self) -> None:
        for uid in USERS:
            for m in self.fake.sent(uid):
                seen = f"{m.text} {m.html or ''}"
                for other, marker in MARKERS.items():
                    assert other == uid or marker not in seen, (uid, other, seen[:300])


async def _build(database_url: str, clock: FakeClock, *, webhook: bool) -> World:
    fake = FakeTelegramAPI()
    await fake.start()
    fake.add_group(L2, "L2 desk")
    fake.add_group(FOREIGN, "random")
    fake.chats[CHANNEL_CHAT] = fake.add_group(CHANNEL_CHAT, "news")
    port = free_port()
    extra: dict[str, Any] = {}
    if webhook:
        extra = {"webhook_url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}", "webhook_secret": SECRET}
    settings_ = tg_settings(fake, database_url, **extra)
    app = await App.create(settings_, clock, migrate=False)
    channel = TelegramChannel(app, limits=RateLimits.unlimited(), album_window=0.02)
    world = World(fake, app, channel)
    for uid in USERS:
        world.users[uid] = fake.user(uid, MARKERS[uid])
        fake._private(world.users[uid])  # the private chat exists, so replies can land
    world.users[BOB] = fake.user(BOB, "Bob")
    if webhook:
        web_app = web.Application()
        channel.mount(web_app)
        world.runner = web.AppRunner(web_app)
        await world.runner.setup()
        await web.TCPSite(world.runner, "127.0.0.1", port).start()
        world.url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
    await channel.setup()
    return world


async def _teardown(world: World) -> None:
    if world.runner is not None:
        await world.runner.cleanup()
    await world.channel.close()
    await world.app.close()
    await world.fake.close()


async def _escalated_ticket(world: World, post: Any) -> None:
    """Ann opens a ticket, so there are cards, threads and buttons to poke at."""
    ann = world.users[5001]
    for text in ("/start", "I forgot my password"):
        world.fake.send_text(ann, text)
        await post(world.fake.updates.pop())
    world.fake.press(ann, world.fake.with_buttons(ann.id), "Didn't help")
    await post(world.fake.updates.pop())


# ---------------------------------------------------------------------- the webhook


def test_webhook_survives_random_updates(database_url: str, clock: FakeClock) -> None:
    loop = asyncio.new_event_loop()
    world = loop.run_until_complete(_build(database_url, clock, webhook=True))
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    session = loop.run_until_complete(_session())  # created inside the loop it is used in

    async def post(body: Any, secret: str = SECRET, raw: bool = False) -> int:
        data = body.encode() if raw else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-Telegram-Bot-Api-Secret-Token"] = secret
        async with session.post(world.url, data=data, headers=headers) as resp:
            await resp.read()
            await world.deliver()
            return resp.status

    loop.run_until_complete(_escalated_ticket(world, post))
    seen_ids: set[int] = set()
    fresh = itertools.count(100_000)
    checked: list[int] = []  # readable messages whose commit was verified

    @FUZZ
    @given(body=bodies, secret=secrets, step=st.integers(0, 5000))
    def example(body: Case, secret: str, step: int) -> None:
        errors.records.clear()
        kind, value, readable = body.kind, body.value, body.readable
        if kind == "update":  # above the ids the setup used; duplicates among the examples
            uid = value["update_id"]
            value = {**value, "update_id": next(fresh) if uid is None else 1000 + uid}
        clock.advance(timedelta(milliseconds=step))
        want = expected_status(kind, value, secret)
        status = loop.run_until_complete(
            asyncio.wait_for(post(value, secret, raw=kind == "raw"), OP_TIMEOUT)
        )
        assert status == want, (status, want, kind, str(value)[:300])
        if want == 200 and readable and value["update_id"] not in seen_ids:
            # A new, readable private message reached the engine and was committed.
            processed = loop.run_until_complete(world.processed(f"u{value['update_id']}"))
            assert processed, str(value)[:300]
            checked.append(value["update_id"])
        if want == 200 and isinstance(value, dict):
            seen_ids.add(value["update_id"])
        world.check_sensible(loop, errors)

    try:
        example()
        assert len(checked) >= 5, checked  # the oracle was exercised, not skipped
    finally:
        logging.getLogger().removeHandler(errors)
        loop.run_until_complete(session.close())
        loop.run_until_complete(_teardown(world))
        loop.close()


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


# ---------------------------------------------------------------------- getUpdates


updates_batches = st.lists(
    st.one_of(user_writes(), update()).map(lambda u: Case("update", *u)),
    min_size=1,
    max_size=6,
)


def test_polling_survives_random_batches(database_url: str, clock: FakeClock) -> None:
    """Random, duplicate and out-of-order updates through ``getUpdates``: every batch is
    confirmed (nothing blocks intake), nothing crashes, nothing leaks."""
    loop = asyncio.new_event_loop()
    world = loop.run_until_complete(_build(database_url, clock, webhook=False))
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    base = itertools.count(1000, 100)
    checked: list[int] = []

    async def poll() -> None:
        for _ in range(3):
            await world.channel.poll_once()
            await world.deliver()
        await world.channel.poll_once()  # confirm the offset

    async def post(update_: dict[str, Any]) -> int:
        world.fake.updates.append(update_)
        await poll()
        return 200

    loop.run_until_complete(_escalated_ticket(world, post))

    @FUZZ
    @given(batch=updates_batches, order=st.randoms(use_true_random=False))
    def example(batch: list[Case], order: Any) -> None:
        errors.records.clear()
        start = next(base)  # ids above everything confirmed so far; duplicates within
        raw = [dict(c.value) for c in batch]
        for n, u in enumerate(raw):
            u["update_id"] = start + (50 + n if u["update_id"] is None else u["update_id"] % 50)
        raw_in_order = list(raw)
        order.shuffle(raw)
        world.fake.updates.extend(raw)
        loop.run_until_complete(asyncio.wait_for(poll(), OP_TIMEOUT))
        top = max(u["update_id"] for u in raw)
        assert world.fake.confirmed > top, (world.fake.confirmed, top)
        for case, sent in zip(batch, raw_in_order, strict=True):
            uid = sent["update_id"]
            if case.readable and sum(x["update_id"] == uid for x in raw) == 1:
                assert loop.run_until_complete(world.processed(f"u{uid}")), case
                checked.append(uid)
        world.check_sensible(loop, errors)

    try:
        example()
        assert len(checked) >= 5, checked
    finally:
        logging.getLogger().removeHandler(errors)
        loop.run_until_complete(_teardown(world))
        loop.close()
