"""Socket Mode: the same intake over the fake WebSocket, no public URL, no signatures."""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy import func, select

from bot.app import App
from bot.clock import FakeClock
from bot.storage.models import ProcessedEvent
from handlers.server import build_web
from handlers.slack import SlackChannel
from tests.fakes.slack_api import FakeSlackApi, block_actions, dm_event, find_element, slash_command
from tests.slack.conftest import ANN, slack_settings


async def test_intake_over_socket_mode(
    database_url: str, slack_api: FakeSlackApi, clock: FakeClock
) -> None:
    settings = slack_settings(
        slack_api, database_url, app_token=SecretStr("xapp-1-test"), signing_secret=None
    )
    app = await App.create(settings, clock)
    channel = SlackChannel(app)
    web_app = build_web(app)
    channel.mount(web_app)
    assert not [r for r in web_app.router.routes() if "slack" in str(r.resource)]
    dispatcher = app.dispatcher({"slack": channel.sender})
    api = slack_api
    try:
        await channel.start()
        await api.wait_for(lambda: api.sockets, what="the socket")
        opened = api.calls_to("apps.connections.open")
        assert opened and opened[0].token == "xapp-1-test"

        async def processed() -> int:
            async with app.db.transaction() as s:
                q = select(func.count()).select_from(ProcessedEvent)
                return int((await s.execute(q)).scalar_one())

        env = await api.push_event(dm_event(ANN, "I forgot my password"), event_id="EvSOCK1")
        await api.wait_for(lambda: api.acked(env), what="the ack")
        assert await processed() == 1  # committed before the ack
        again = await api.push_event(
            dm_event(ANN, "I forgot my password"), event_id="EvSOCK1", retry_attempt=1
        )
        await api.wait_for(lambda: api.acked(again), what="the retry's ack")
        await channel.wait_idle()
        await dispatcher.drain()
        assert await processed() == 1
        posts = api.posts("D" + ANN)
        assert any("Did this solve" in str(c.params["blocks"]) for c in posts)

        msg = api.message("D" + ANN, posts[-1].response["ts"])
        block_id, el = find_element(msg, "Yes, solved")
        press = block_actions(
            user=ANN, channel="D" + ANN, message=msg, block_id=block_id, element=el
        )
        env = await api.push_interaction(press)
        await api.wait_for(lambda: api.acked(env), what="the button ack")
        env = await api.push_command(slash_command(ANN, "status"))
        await api.wait_for(lambda: api.acked(env), what="the command ack")
        await api.wait_for(lambda: api.calls_to("chat.update"), what="buttons removed")
        await channel.wait_idle()
        await dispatcher.drain()
        texts = [str(c.params["blocks"]) for c in api.posts("D" + ANN)]
        assert any("glad" in t for t in texts) and "no open tickets" in texts[-1]
        env = await api.push_event({"type": "reaction_added", "user": ANN, "item": {}})
        await api.wait_for(lambda: api.acked(env), what="an unused event's ack")
    finally:
        await channel.stop()
        await app.close()
    assert not api.sockets or all(ws.closed for ws in api.sockets)
