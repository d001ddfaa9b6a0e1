"""Security: who may act, what buttons can reach, flood control, bans, escaping, secrets.

Everything runs through the in-memory channel and the real engine and desk.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from bot import flood
from bot.app import App
from bot.clock import FakeClock
from bot.domain import AgentAction
from bot.flood import flush_held
from bot.i18n import t
from bot.logs import setup_logging
from bot.storage.models import Conversation, Event, Ticket, TicketMessage, User
from config.settings import (
    DatabaseSettings,
    EscalationSettings,
    LogSettings,
    Settings,
    SlackSettings,
    TelegramSettings,
)
from escalation.card import build_card
from escalation.texts import lt
from handlers import slack_render
from handlers.memory import MemoryChannel
from tests.test_engine_flow import _escalate

LIVE_MENTION = re.compile(r"<[!@#]|(?<![\w\u200b])@(channel|here|everyone)\b", re.IGNORECASE)


async def escalate(mem: MemoryChannel, user: str = "ann") -> Ticket:
    """Drive ``user`` from a question to an open ticket."""
    return await _escalate(mem, user)


async def _events(app: App, kind: str) -> list[Event]:
    async with app.db.transaction() as s:
        return list((await s.execute(select(Event).where(Event.kind == kind))).scalars())


async def _ticket(app: App, ticket_id: int) -> Ticket:
    async with app.db.transaction() as s:
        tk = await s.get(Ticket, ticket_id)
    assert tk is not None
    return tk


# ---------------------------------------------------------------------- authorisation

# Every consultant action with the text/value it needs to do something real.
L2_ACTIONS: list[tuple[AgentAction, str, str]] = [
    ("claim", "", ""),
    ("reply", "hello from an impostor", ""),
    ("message", "hello from an impostor", ""),
    ("note", "impostor note", ""),
    ("wait", "tell me more", ""),
    ("resolve", "done", ""),
    ("l3", "hard one", ""),
    ("priority", "", "critical"),
    ("tier", "", "enterprise"),
    ("save_kb", "an answer", ""),
    ("release", "", ""),
    ("reassign", "", "memory:mallory|Mallory"),
    ("ban", "", ""),
    ("unban", "", ""),
    ("reopen", "", ""),
    ("l3_back", "", ""),
    ("edit", "changed", ""),
]


@pytest.mark.parametrize(("action", "text", "value"), L2_ACTIONS, ids=[a[0] for a in L2_ACTIONS])
async def test_every_l2_action_is_refused_for_a_non_consultant(
    mem: MemoryChannel, app: App, action: AgentAction, text: str, value: str
) -> None:
    ticket = await escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent1", "claim", number)  # owned, so release/reply have a target
    before = await _ticket(app, ticket.id)
    user_msgs = len(mem.messages("ann"))
    res = await mem.agent("mallory", action, number, text=text, value=value, member=False)
    assert res.refused and res.ack == lt("not_consultant", app.desk.l2_lang)
    # The impostor is told why, in the L2 room; the user hears nothing.
    notices = [d for d in mem.l2() if d.kind == "agent_notice"]
    assert notices and notices[-1].text == lt("not_consultant", app.desk.l2_lang)
    assert len(mem.messages("ann")) == user_msgs
    after = await _ticket(app, ticket.id)
    for col in ("status", "owner_key", "priority", "tier", "level", "version", "updated_at"):
        assert getattr(after, col) == getattr(before, col), col
    async with app.db.transaction() as s:
        user = (await s.execute(select(User).where(User.external_id == "ann"))).scalar_one()
        notes = (
            await s.execute(select(TicketMessage).where(TicketMessage.author_key.like("%mallory")))
        ).all()
    assert not user.banned and not notes
    refused = await _events(app, "agent_refused")
    assert refused[-1].actor == "memory:mallory" and refused[-1].data["action"] == action


async def test_digest_is_refused_for_a_non_manager(mem: MemoryChannel, app: App) -> None:
    app.settings.escalation.managers = ["memory:boss"]
    await mem.command("ann", "digest")
    # Refused without revealing the command: the help, and a refusal in the event log.
    assert mem.last("ann") == t("help", "en")
    assert not await _events(app, "digest_requested")
    refused = await _events(app, "command_refused")
    assert refused[-1].data["command"] == "digest" and refused[-1].actor == "memory:ann"
    await mem.command("ivan", "digest", lang="ru")
    assert mem.last("ivan") == t("help", "ru")
    assert len(await _events(app, "digest_requested")) == 0


# ---------------------------------------------------------------------- buttons


async def test_forged_and_stale_buttons_are_refused(mem: MemoryChannel, app: App) -> None:
    await mem.command("ann", "start")
    cat = next(
        b for b in mem.messages("ann")[-1].buttons() if b["data"].split("|")[1][:4] == "cat:"
    )
    nonce = int(cat["data"].split("|")[0])
    for forged in [
        f"{nonce + 1}|{cat['data'].split('|')[1]}",  # a nonce not issued yet
        f"{nonce - 1}|{cat['data'].split('|')[1]}",  # an older prompt
        "abc|cat:account",
        "|cat:account",
        f"{nonce}|",
        f"{nonce}|cat:no-such-category",
        f"{nonce}|urg:critical",  # valid action, wrong state
        "",
        "9" * 400,
        "²|cat:account",  # a Unicode digit that int() rejects
        f"{nonce}|tk:³",
    ]:
        res = await mem.press_data("ann", forged)
        assert res.refused, forged
        assert res.ack == t("stale_button", "en"), forged
    # A stale "forget" confirmation erases nothing.
    await mem.command("ann", "forget")
    yes = next(b for b in mem.messages("ann")[-1].buttons() if "Yes" in b["label"])
    await mem.command("ann", "help")  # does not change the prompt...
    await mem.command("ann", "start")  # ...but this does
    res = await mem.press_data("ann", yes["data"])
    assert res.refused
    async with app.db.transaction() as s:
        user = (await s.execute(select(User).where(User.external_id == "ann"))).scalar_one()
    assert user.erased_at is None and user.display_name == "Ann"
    # The genuine button of the current prompt still works.
    cat = next(b for b in mem.messages("ann")[-1].buttons() if "|cat:" in b["data"])
    assert not (await mem.press_data("ann", cat["data"])).refused


async def test_a_button_with_another_users_ticket_is_refused(mem: MemoryChannel, app: App) -> None:
    bob_ticket = await escalate(mem, "bob")
    await escalate(mem, "ann")
    await mem.command("ann", "new")
    nonce = mem.messages("ann")[-1].buttons()[0]["data"].split("|")[0]
    await mem.press_data("ann", f"{nonce}|tk:{bob_ticket.id}")
    assert mem.last("ann") == t("stale_button", "en")
    await mem.say("ann", "secret words for bob? no")
    # Nothing reached Bob's ticket.
    async with app.db.transaction() as s:
        msgs = (
            await s.execute(
                select(TicketMessage.text).where(TicketMessage.ticket_id == bob_ticket.id)
            )
        ).scalars()
        assert all("secret words" not in m for m in msgs)
    assert all("secret words" not in d.text for d in mem.messages("bob"))


# ---------------------------------------------------------------------- markup


async def test_user_markup_is_stored_verbatim_and_escaped_at_the_edge(
    mem: MemoryChannel, app: App
) -> None:
    hostile = "I forgot my password <b>now</b> & <!channel> @here <@U1>"
    await mem.command("ann", "start")
    await mem.say("ann", hostile)
    ticket = await escalate(mem)
    await mem.agent("agent1", "claim", f"FL-{ticket.number}")
    await mem.say("ann", "more: <i>x</i> &amp; @everyone")
    async with app.db.transaction() as s:
        conv = (await s.execute(select(Conversation).order_by(Conversation.id))).scalars().first()
        msgs = list(
            (
                await s.execute(
                    select(TicketMessage.text).where(TicketMessage.ticket_id == ticket.id)
                )
            ).scalars()
        )
        tk = await s.get(Ticket, ticket.id)
        assert tk is not None
        card = await build_card(s, app.desk, tk, app.clock.now())
    assert conv is not None and hostile in conv.problem  # verbatim: no escaping in the core
    assert "more: <i>x</i> &amp; @everyone" in msgs
    post = next(d for d in reversed(mem.l2()) if d.payload.get("role") == "user")
    assert post.payload["text"] == "more: <i>x</i> &amp; @everyone"
    # The Slack edge escapes it: no live tags, entities or broadcasts.
    out = slack_render.post_text(post.payload, "en", {})
    assert "&lt;i&gt;x&lt;/i&gt;" in out and "&amp;amp;" in out
    assert not LIVE_MENTION.search(out)
    blocks = json.dumps(slack_render.card_blocks(card, ["critical", "high"]), ensure_ascii=False)
    assert "&lt;i&gt;x&lt;/i&gt;" in blocks and "&amp;amp;" in blocks  # the details
    assert not LIVE_MENTION.search(blocks)
    assert "<i>" not in blocks


# ---------------------------------------------------------------------- flood control


async def test_a_hundred_messages_in_ten_seconds_are_kept_and_slowed_down(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await escalate(mem)
    await mem.agent("agent1", "claim", f"FL-{ticket.number}")
    clock.advance(timedelta(minutes=1))
    replies_before = len(mem.messages("ann"))
    posts_before = len([d for d in mem.l2() if d.payload.get("role") == "user"])
    texts = [f"flood message {i:03d} ✓" for i in range(100)]
    for text in texts:
        await mem.say("ann", text)
        clock.advance(timedelta(milliseconds=100))
    replies = mem.messages("ann")[replies_before:]
    posts = [d for d in mem.l2() if d.payload.get("role") == "user"][posts_before:]
    assert [r.text for r in replies] == [t("too_fast", "en")]  # once per window
    assert len(posts) == flood.LIMIT  # the rest is held, not relayed one by one
    # The window is over: one coalesced post carries the other 90.
    clock.advance(timedelta(seconds=1))
    assert await flush_held(app.db, app.desk, app.clock) == 100 - flood.LIMIT
    await mem.deliver()
    posts = [d for d in mem.l2() if d.payload.get("role") == "user"][posts_before:]
    assert len(posts) == flood.LIMIT + 1
    assert posts[-1].text.startswith(f"+{100 - flood.LIMIT} more message(s):")
    assert texts[flood.LIMIT] in posts[-1].text and len(posts[-1].text) <= flood.POST_CHARS + 50
    assert await flush_held(app.db, app.desk, app.clock) == 0  # safe to run again
    async with app.db.transaction() as s:
        stored = list(
            (
                await s.execute(
                    select(TicketMessage.text).where(
                        TicketMessage.ticket_id == ticket.id, TicketMessage.direction == "in"
                    )
                )
            ).scalars()
        )
    for text in texts:
        assert text in stored, text
    assert len(await _events(app, "flood_limited")) == 1
    # The next window is served normally again.
    await mem.say("ann", "calm again")
    assert [d for d in mem.l2() if d.payload.get("role") == "user"][-1].text == "calm again"


async def test_held_messages_go_out_with_the_next_window_and_survive_a_restart(
    settings: Settings, clock: FakeClock
) -> None:
    app = await App.create(settings, clock)
    try:
        mem = MemoryChannel(app)
        ticket = await escalate(mem)
        clock.advance(timedelta(minutes=1))
        for i in range(flood.LIMIT + 5):
            await mem.say("ann", f"burst {i}")
    finally:
        await app.close()
    # A new process: the window and the held messages come from the database.
    app = await App.create(settings, clock)
    try:
        mem = MemoryChannel(app)
        await mem.say("ann", "still in the window")
        assert mem.messages("ann") == []  # limited: no answer, no second warning
        clock.advance(flood.WINDOW)
        await mem.say("ann", "a new window")
        posts = [d for d in mem.l2() if d.payload.get("role") == "user"]
        assert posts[0].text.startswith("+6 more message(s):")
        assert "still in the window" in posts[0].text and posts[1].text == "a new window"
        async with app.db.transaction() as s:
            held = (
                await s.execute(
                    select(TicketMessage).where(
                        TicketMessage.ticket_id == ticket.id, TicketMessage.held.is_(True)
                    )
                )
            ).all()
        assert not held
    finally:
        await app.close()


def test_only_a_window_that_went_over_the_limit_has_held_messages_to_look_for() -> None:
    user = User(flood_window_start=None, flood_count=0, flood_warned=False)
    start = datetime(2026, 3, 1, 9, tzinfo=UTC)
    first = flood.count_event(user, start)
    assert first.new_window and not first.held_before  # a new user: nothing held
    for i in range(flood.LIMIT - 1):
        assert not flood.count_event(user, start + timedelta(seconds=i)).over
    calm = flood.count_event(user, start + flood.WINDOW)
    assert calm.new_window and not calm.held_before  # the limit was reached, not passed
    for _ in range(flood.LIMIT):
        flood.count_event(user, start + flood.WINDOW)
    assert user.flood_count == flood.LIMIT + 1
    after_flood = flood.count_event(user, start + 2 * flood.WINDOW)
    assert after_flood.new_window and after_flood.held_before
    assert user.flood_count == 1 and not user.flood_warned


async def test_flood_in_the_dialog_keeps_every_text_and_answers_once(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    texts = [f"vpn does not connect, attempt {i}" for i in range(60)]
    for text in texts:
        await mem.say("zed", text)
        clock.advance(timedelta(milliseconds=150))
    replies = mem.messages("zed")
    # At most a KB answer, a question and a "too fast" per handled message.
    assert len(replies) <= 3 * flood.LIMIT + 1
    assert sum(r.text == t("too_fast", "en") for r in replies) == 1
    async with app.db.transaction() as s:
        convs = list((await s.execute(select(Conversation))).scalars())
    kept = "\n".join(c.problem + "\n" + c.details for c in convs)
    for text in texts:
        assert text in kept, text
    assert not [d for d in mem.l2() if d.kind == "ticket_post"]


async def test_buttons_and_commands_beyond_the_limit_are_refused(
    mem: MemoryChannel, clock: FakeClock
) -> None:
    results = [await mem.command("ann", "help") for _ in range(flood.LIMIT + 3)]
    assert all(not r.refused for r in results[: flood.LIMIT])
    assert all(r.refused and r.ack == t("too_fast", "en") for r in results[flood.LIMIT :])
    assert len(mem.messages("ann")) == flood.LIMIT + 1
    clock.advance(flood.WINDOW)
    assert not (await mem.command("ann", "help")).refused


# ---------------------------------------------------------------------- ban


async def test_ban_keeps_messages_away_from_l2_and_unban_restores(
    mem: MemoryChannel, app: App, clock: FakeClock
) -> None:
    ticket = await escalate(mem)
    number = f"FL-{ticket.number}"
    await mem.agent("agent1", "claim", number)
    res = await mem.agent("agent1", "ban", number)
    assert not res.refused and "banned" in (res.ack or "")
    assert mem.l2()[-2].text == lt("banned_by", "en", agent="Agent1", number=number)
    again = await mem.agent("agent1", "ban", number)
    assert again.ack == lt("already_banned", "en", number=number)
    posts = len([d for d in mem.l2() if d.kind == "ticket_post"])
    clock.advance(timedelta(seconds=1))
    await mem.say("ann", "let me in, banned words 7f3a")
    assert mem.last("ann") == t("banned", "en")
    assert len([d for d in mem.l2() if d.kind == "ticket_post"]) == posts
    async with app.db.transaction() as s:
        conv = await s.get(Conversation, ticket.conversation_id)
        user = (await s.execute(select(User).where(User.external_id == "ann"))).scalar_one()
    assert conv is not None and "banned words 7f3a" in conv.details  # kept
    assert user.banned
    assert [e.actor for e in await _events(app, "user_banned")] == ["memory:agent1"]
    assert await _events(app, "banned_refused")
    # Unban: messages reach L2 again.
    await mem.agent("agent1", "unban", number)
    assert (await _events(app, "user_unbanned"))[-1].ticket_id == ticket.id
    await mem.say("ann", "thank you")
    assert [d for d in mem.l2() if d.kind == "ticket_post"][-1].text == "thank you"


# ---------------------------------------------------------------------- secrets in logs

SECRETS = {
    "telegram_token": "123456:AAFAKE-telegram-token-value",
    "telegram_webhook": "telegram-webhook-secret-value",
    "slack_bot": "xoxb-fake-slack-token-value",
    "slack_app": "xapp-fake-slack-app-token-value",
    "slack_signing": "slack-signing-secret-value",
}


async def test_no_secret_reaches_the_logs_of_a_full_session(
    database_url: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database=DatabaseSettings(url=database_url),
        escalation=EscalationSettings(default_destination="memory:l2"),
        log=LogSettings(level="DEBUG"),
        telegram=TelegramSettings(
            bot_token=SecretStr(SECRETS["telegram_token"]),
            webhook_secret=SecretStr(SECRETS["telegram_webhook"]),
            l2_chat_id=-100123,
        ),
        slack=SlackSettings(
            bot_token=SecretStr(SECRETS["slack_bot"]),
            app_token=SecretStr(SECRETS["slack_app"]),
            signing_secret=SecretStr(SECRETS["slack_signing"]),
            l2_channel="C0L2",
        ),
    )
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging(settings, stream)
    root.addHandler(caplog.handler)  # after ours: it sees the redacted records
    caplog.set_level(logging.DEBUG)
    try:
        app = await App.create(settings, clock)
        try:
            mem = MemoryChannel(app)
            logging.getLogger("firstline.test").debug("settings: %r", settings)
            ticket = await escalate(mem)
            number = f"FL-{ticket.number}"
            await mem.agent("agent1", "claim", number)
            await mem.agent("agent1", "reply", number, text="try again please")
            await mem.say("ann", "works now")
            await mem.agent("agent1", "resolve", number)

            async def boom(*_a: Any, **_k: Any) -> Any:
                # A library error that quotes the request URL with the token in it.
                token = SECRETS["telegram_token"]
                raise RuntimeError(
                    f"POST https://api.telegram.org/bot{token}/sendMessage failed; "
                    f"auth={SECRETS['slack_bot']} sig={SECRETS['slack_signing']}"
                )

            app.engine.handle = boom  # type: ignore[method-assign]
            res = await mem.say("ann", "one more")
            assert res.refused
        finally:
            await app.close()
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
    logged = stream.getvalue() + "\n" + caplog.text
    assert "failed to handle" in logged and "Traceback" in logged  # the error path ran
    assert "sendMessage failed" in logged
    for name, secret in SECRETS.items():
        assert secret not in logged, name
        assert secret.split(":")[-1][-12:] not in logged, name
