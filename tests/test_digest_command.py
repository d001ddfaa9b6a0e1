"""/digest on demand for managers; everyone else gets the normal help."""

from __future__ import annotations

from bot.app import App
from handlers.memory import MemoryChannel
from tests.test_engine_flow import _escalate


async def test_manager_gets_yesterdays_digest_on_demand(mem: MemoryChannel, app: App) -> None:
    app.settings.escalation.managers = ["memory:boss"]
    await _escalate(mem)
    await mem.command("boss", "digest")
    msgs = mem.messages("boss")
    assert len(msgs) == 1
    assert "Sun 11 Jan 2026" in msgs[0].text  # yesterday in the managers' time zone
    assert msgs[0].payload.get("image_png_b64")  # the 14-day chart goes with it
    res = await mem.command("boss", "digest")
    assert not res.duplicate  # a new request, a new answer
    assert len(mem.messages("boss")) == 2


async def test_non_manager_cannot_read_the_digest(mem: MemoryChannel, app: App) -> None:
    app.settings.escalation.managers = ["memory:boss"]
    await mem.command("ann", "digest")
    text = mem.last("ann")
    assert "/status" in text and "digest" not in text.lower()
