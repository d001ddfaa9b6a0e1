"""Property-based tests: bad input never crashes, hangs or leaks another user's data.

Each test builds one application and lets hypothesis drive many examples through it, so the
database accumulates state across examples (a richer search than a fresh database each time).
The event loop is run by hand because hypothesis calls the example function synchronously.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import string
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, get_args
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.app import App
from bot.clock import FakeClock
from bot.domain import AgentAction, AgentEvent, Attachment, UserEvent, UserRef
from bot.storage.models import Event
from config.settings import DatabaseSettings, EscalationSettings, Settings
from handlers.memory import CHANNEL, MemoryChannel
from tests.fakes.slack_api import FakeSlackApi, SlackRequests, dm_event
from tests.slack.conftest import ANN, BOB, EVE, L2, make_slack, slack_settings

USERS = ("ann", "bob", "cid")
MARKERS = {u: f"Mk{u.upper()}{i}x" for i, u in enumerate(USERS)}
OP_TIMEOUT = 10.0  # seconds: anything slower is a hang

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)

# ---------------------------------------------------------------------- strategies

CONTROL = "".join(chr(c) for c in [*range(0, 32), 127, *range(0x80, 0xA0)])
SPECIAL = "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\ufeff\ufffd"
MARKUP = [
    "<b>bold</b>",
    "&amp; & &lt;",
    "<!channel>",
    "@here",
    "@everyone",
    "<@U123|x>",
    "*bold* _it_ `code` ```block```",
    "[link](javascript:alert(1))",
    "<script>alert(1)</script>",
    "{text} {0} %s %(x)s",
    "FL-1001",
    "/start",
    "\\",
]

unicode_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]),  # no lone surrogates
    max_size=200,
)
nasty_text = st.text(alphabet=st.sampled_from(CONTROL + SPECIAL + "ab ё😀👩‍💻\n"), max_size=60)
markup_text = st.lists(st.sampled_from(MARKUP), min_size=1, max_size=4).map(" ".join)
huge_text = st.integers(min_value=10_000, max_value=100_000).map(lambda n: ("лог 😀 " * n)[:n])
any_text = st.one_of(
    st.just(""),
    st.just("   \n\t "),
    unicode_text,
    nasty_text,
    markup_text,
    st.sampled_from(["I forgot my password", "vpn does not connect", "printer jam"]),
    huge_text,
)
commands = st.one_of(
    st.sampled_from(
        ["start", "help", "new", "status", "cancel", "lang", "resume", "forget", "digest", "HELP"]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "_@", max_size=40),
)
button_data = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda n, kind, value: f"{n}|{kind}:{value}",
        st.integers(min_value=-2, max_value=10**12),
        st.sampled_from(
            [
                "cat",
                "kb",
                "kbp",
                "kbn",
                "cl",
                "det",
                "urg",
                "csat",
                "cancel",
                "tk",
                "lang",
                "forget",
            ]
        ),
        st.one_of(st.text(max_size=20), st.integers(-5, 10**6).map(str)),
    ),
)
agent_actions: list[AgentAction] = list(get_args(AgentAction))


@st.composite
def user_op(draw: st.DrawFn) -> tuple[Any, ...]:
    """One thing a user or a consultant does."""
    who = draw(st.sampled_from(USERS))
    kind = draw(
        st.sampled_from(
            [
                "message",
                "message",
                "message",
                "button",
                "real_button",
                "command",
                "edit",
                "unsupported",
                "agent",
            ]
        )
    )
    text = draw(any_text)
    if kind == "command":
        return (who, kind, draw(commands), draw(st.one_of(st.just(""), any_text)))
    if kind == "button":
        return (who, kind, draw(button_data), "")
    if kind == "real_button":
        return (who, kind, draw(st.integers(0, 20)), draw(st.integers(-1, 1)))
    if kind == "agent":
        action = draw(st.sampled_from(agent_actions))
        ticket = draw(
            st.one_of(
                st.none(), st.integers(990, 1010).map(lambda n: f"FL-{n}"), st.text(max_size=12)
            )
        )
        value = draw(
            st.one_of(
                st.just(""),
                st.sampled_from(["critical", "low", "gold", "x|y"]),
                st.text(max_size=20),
            )
        )
        member = draw(st.booleans())
        return (
            who,
            kind,
            (action, ticket, value, member),
            draw(st.one_of(unicode_text, markup_text)),
        )
    return (who, kind, text, draw(st.one_of(st.none(), st.text(max_size=10))))


event_ids = st.one_of(st.none(), st.sampled_from(["dup-1", "dup-2", "dup-3"]), st.text(max_size=30))
scripts = st.lists(st.tuples(user_op(), event_ids, st.integers(0, 3000)), min_size=1, max_size=12)


# ---------------------------------------------------------------------- the engine


class ErrorLog(logging.Handler):
    """Collects ERROR records and any record carrying an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the bad ones."""
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture
def errors() -> Iterator[ErrorLog]:
    """Errors logged anywhere during the test."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _marked(who: str, text: str) -> str:
    """Every user text carries its author's marker, so a leak is visible."""
    return f"{MARKERS[who]} {text}"


async def _run_script(
    mem: MemoryChannel, clock: FakeClock, script: list[Any], ids: Iterator[int]
) -> None:
    app = mem.app
    for (who, kind, a, b), event_id, step_ms in script:
        clock.advance(timedelta(milliseconds=step_ms))
        eid = event_id if event_id is not None else f"auto-{next(ids)}"
        ref = UserRef(CHANNEL, who, display_name=f"{who} {MARKERS[who]}", language_code="en")
        before = len(mem.messages(who))
        if kind == "agent":
            action, ticket, value, member = a
            agent = AgentEvent(
                CHANNEL,
                f"agent-{eid}",
                UserRef(CHANNEL, "agent1" if member else "mallory", display_name="Agent"),
                "memory:l2",
                action,
                ticket=ticket,
                text=b,  # consultants' words carry no user marker
                value=value,
                is_member=member,
            )
            res = await asyncio.wait_for(app.handle_agent(agent), OP_TIMEOUT)
            await asyncio.wait_for(mem.deliver(), OP_TIMEOUT)
            continue
        if kind == "real_button":
            offered = [btn for d in mem.messages(who) for btn in d.buttons()]
            if not offered:
                continue
            data = offered[-1 - a % len(offered)]["data"]
            nonce, _, action = data.partition("|")
            data = f"{int(nonce) + b}|{action}" if nonce.isdigit() else data
            ev = UserEvent(CHANNEL, eid, ref, who, "button", data=data)
        elif kind == "button":
            ev = UserEvent(CHANNEL, eid, ref, who, "button", data=a)
        elif kind == "command":
            ev = UserEvent(CHANNEL, eid, ref, who, "command", command=a, args=_marked(who, b))
        elif kind == "unsupported":
            ev = UserEvent(CHANNEL, eid, ref, who, "unsupported", unsupported=b)
        else:
            attachments = (Attachment("photo", f"file-{MARKERS[who]}"),) if b == "" else ()
            ev = UserEvent(
                CHANNEL,
                eid,
                ref,
                who,
                kind,
                text=_marked(who, a) if a else a,
                message_id=b,
                attachments=attachments,
            )
        async with app.db.transaction() as s:
            logged = (
                await s.execute(
                    select(func.count()).select_from(Event).where(Event.actor == ref.key)
                )
            ).scalar_one()
        res = await asyncio.wait_for(app.handle_user(ev), OP_TIMEOUT)
        await asyncio.wait_for(mem.deliver(), OP_TIMEOUT)
        async with app.db.transaction() as s:
            logged_after = (
                await s.execute(
                    select(func.count()).select_from(Event).where(Event.actor == ref.key)
                )
            ).scalar_one()
        answered = len(mem.messages(who)) > before
        # A sensible reply, a (logged) refusal, a duplicate, or something recorded for L2.
        silent_ok = kind == "edit" or (kind == "command" and a == "resume")
        assert (
            answered
            or res.refused
            or res.duplicate
            or res.ack
            or logged_after > logged
            or silent_ok
        ), (
            kind,
            a,
            res,
        )


def _check_no_leak(mem: MemoryChannel) -> None:
    for d in mem.sender.delivered:
        text = json.dumps(d.payload, ensure_ascii=False)
        if d.target in USERS:
            for other in USERS:
                if other != d.target:
                    assert MARKERS[other] not in text, (d.target, other, text[:300])


def test_engine_survives_random_input_from_several_users(
    database_url: str, clock: FakeClock, errors: ErrorLog
) -> None:
    cfg = Settings(
        database=DatabaseSettings(url=database_url),
        escalation=EscalationSettings(default_destination="memory:l2", l3_destination="memory:l3"),
    )
    loop = asyncio.new_event_loop()
    app = loop.run_until_complete(App.create(cfg, clock))
    mem = MemoryChannel(app)
    ids = itertools.count()

    @FUZZ
    @given(script=scripts)
    def example(script: list[Any]) -> None:
        errors.records.clear()
        loop.run_until_complete(_run_script(mem, clock, script, ids))
        _check_no_leak(mem)
        assert not errors.records, [r.getMessage() for r in errors.records]

    try:
        example()

        # Everything the fuzzing produced is consistent enough to report on.
        async def failed() -> int:
            async with app.db.transaction() as s:
                return int(
                    (
                        await s.execute(
                            select(func.count())
                            .select_from(Event)
                            .where(Event.kind == "intake_failed")
                        )
                    ).scalar_one()
                )

        assert loop.run_until_complete(failed()) == 0
    finally:
        loop.run_until_complete(app.close())
        loop.close()


# ---------------------------------------------------------------------- the Slack endpoint

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), unicode_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
slack_event = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["message", "app_mention", "app_home_opened", "reaction_added", "zzz"]
        ),
    },
    optional={
        "user": st.sampled_from([ANN, BOB, EVE, "UBOT", "", "U???"]),
        "channel": st.sampled_from(["D" + ANN, "D" + EVE, L2, "C0OTHER", ""]),
        "channel_type": st.sampled_from(["im", "channel", "group", "mpim"]),
        "text": st.one_of(unicode_text, markup_text, nasty_text),
        "ts": st.sampled_from(["1.000001", "x", "", "1700000000.000100"]),
        "thread_ts": st.sampled_from(["1.000001", "bad", ""]),
        "subtype": st.sampled_from(
            ["message_changed", "message_deleted", "bot_message", "file_share", "zz"]
        ),
        "bot_id": st.just("B1"),
        "files": st.lists(
            st.dictionaries(st.sampled_from(["id", "name", "mimetype", "size"]), json_values),
            max_size=2,
        ),
        "message": st.dictionaries(
            st.sampled_from(["text", "ts", "user"]), json_values, max_size=3
        ),
        "previous_message": st.dictionaries(
            st.sampled_from(["text", "ts"]), json_values, max_size=2
        ),
        "tab": st.sampled_from(["home", "messages"]),
    },
)
interaction = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "block_actions",
                "view_submission",
                "shortcut",
                "message_action",
                "block_suggestion",
                "?",
            ]
        )
    },
    optional={
        "user": st.fixed_dictionaries({"id": st.sampled_from([ANN, BOB, EVE, ""])}),
        "channel": st.fixed_dictionaries({"id": st.sampled_from(["D" + ANN, L2, ""])}),
        "container": st.dictionaries(
            st.sampled_from(["channel_id", "message_ts", "type"]), json_values, max_size=3
        ),
        "message": st.dictionaries(
            st.sampled_from(["ts", "text", "blocks", "thread_ts"]), json_values, max_size=3
        ),
        "actions": st.lists(
            st.fixed_dictionaries(
                {
                    "action_id": st.one_of(
                        st.sampled_from(
                            [
                                "fl_user:0",
                                "fl_card:claim",
                                "fl_card:resolve",
                                "fl_card:priority",
                                "x",
                            ]
                        ),
                        st.text(max_size=20),
                    ),
                },
                optional={
                    "value": st.one_of(unicode_text, st.sampled_from(["FL-1001", "1|cat:account"])),
                    "block_id": st.text(max_size=10),
                    "selected_option": st.fixed_dictionaries({"value": unicode_text}),
                },
            ),
            max_size=3,
        ),
        "response_url": st.just("http://127.0.0.1:9/never"),
        "trigger_id": st.text(max_size=10),
        "view": json_values,
    },
)
slash = st.fixed_dictionaries(
    {"command": st.sampled_from(["/support", "/digest", "/x", ""])},
    optional={
        "text": st.one_of(unicode_text, markup_text),
        "user_id": st.sampled_from([ANN, BOB, EVE, ""]),
        "channel_id": st.sampled_from(["D" + ANN, L2, ""]),
        "response_url": st.just("http://127.0.0.1:9/never"),
        "trigger_id": st.text(max_size=8),
    },
)
slack_requests = st.one_of(
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("event"), slack_event),
    st.tuples(st.just("form"), interaction),
    st.tuples(st.just("raw_form"), st.text(max_size=200)),
    st.tuples(st.just("payload_text"), unicode_text),
    st.tuples(st.just("command"), slash),
)


def _slack_request(
    requests: SlackRequests, kind: str, body: Any, n: int
) -> tuple[str, dict[str, str]]:
    if kind == "json":
        raw, ctype = json.dumps(body), "application/json"
    elif kind == "event":
        envelope = {
            "type": "event_callback",
            "team_id": "T0001",
            "api_app_id": "A0001",
            "event_id": f"EvFuzz{n % 7}",  # duplicates on purpose
            "event_time": 1,
            "event": body,
            "authorizations": [{"team_id": "T0001", "user_id": "UBOT", "is_bot": True}],
        }
        raw, ctype = json.dumps(envelope), "application/json"
    elif kind == "form":
        raw, ctype = urlencode({"payload": json.dumps(body)}), "application/x-www-form-urlencoded"
    elif kind == "payload_text":
        raw, ctype = urlencode({"payload": body}), "application/x-www-form-urlencoded"
    elif kind == "command":
        raw, ctype = urlencode(body), "application/x-www-form-urlencoded"
    else:
        raw, ctype = body, "application/x-www-form-urlencoded"
    signed = requests.sign(raw, ctype)
    return signed.body, signed.headers


def test_slack_endpoint_survives_random_signed_requests(
    database_url: str, clock: FakeClock, errors: ErrorLog
) -> None:
    loop = asyncio.new_event_loop()

    async def setup() -> tuple[Any, ...]:
        api = await FakeSlackApi().start()
        api.add_user(ANN, "ann", real_name="Ann Lee")
        api.add_user(BOB, "bob", real_name="Bob Agent")
        api.add_user(EVE, "eve", real_name="Eve Outsider")
        api.members[L2] = ["UBOT", BOB]
        app = await App.create(slack_settings(api, database_url), clock)
        gen = make_slack(app, api)
        slack = await gen.__anext__()
        # A real conversation first, so buttons and cards exist to be poked at.
        await slack.post(slack.requests.event(dm_event(ANN, "I forgot my password")))
        return api, app, gen, slack

    api, app, gen, slack = loop.run_until_complete(setup())
    counter = itertools.count()

    @FUZZ
    @given(req=slack_requests)
    def example(req: tuple[str, Any]) -> None:
        errors.records.clear()  # judge each example by its own errors
        body, headers = _slack_request(slack.requests, req[0], req[1], next(counter))

        async def go() -> int:
            resp = await slack.http.post("/slack/events", data=body.encode(), headers=headers)
            await resp.read()
            await asyncio.wait_for(slack.settle(), OP_TIMEOUT)
            return int(resp.status)

        status = loop.run_until_complete(asyncio.wait_for(go(), OP_TIMEOUT))
        assert status < 500, (status, req)
        crashed = [r for r in errors.records if r.exc_info]
        assert not crashed, [r.getMessage() for r in crashed]

    try:
        example()
        # A badly signed request is refused, whatever it carries.
        bad = SlackRequests("not-the-secret").event(dm_event(ANN, "hi"))

        async def forged() -> int:
            resp = await slack.http.post(
                "/slack/events", data=bad.body.encode(), headers=bad.headers
            )
            return int(resp.status)

        assert loop.run_until_complete(forged()) == 401
    finally:

        async def teardown() -> None:
            await gen.aclose()
            await app.close()
            await api.close()

        loop.run_until_complete(teardown())
        loop.close()
