"""The whole loop over HTTP: DM -> KB -> checklist -> ticket card -> L2 thread -> CSAT."""

from __future__ import annotations

from sqlalchemy import select

from bot.storage.models import Ticket, TicketMessage
from tests.slack.conftest import ANN, BOB, L2, Slack, blocks_text


async def escalate(slack: Slack, user: str = ANN, first: str = "I forgot my password") -> Ticket:
    """Drive ``user`` from a DM through the KB and the checklist to a ticket."""
    status, _ = await slack.dm(user, first)
    assert status == 200
    assert "Did this solve" in slack.last_dm(user)
    await slack.press(user, "Didn't help")
    for _ in range(12):
        if "Done" in slack.api.message("D" + user, slack.dm_calls(user)[-1].response["ts"]).get(
            "blocks", [{}]
        )[-1].get("elements", [{}])[0].get("text", {}).get("text", ""):
            break
        if any("Press «Done»" in t for t in slack.dm_texts(user)[-1:]):
            break
        await slack.press_last_option(user)
    await slack.dm(user, "Error 0x42 when I log in since this morning")
    await slack.press(user, "Done")
    await slack.press(user, "Blocks my work")
    async with slack.app.db.transaction() as s:
        ticket = (await s.execute(select(Ticket).order_by(Ticket.id.desc()))).scalars().first()
    assert ticket is not None
    return ticket


async def test_dm_to_resolution_and_csat(slack: Slack) -> None:
    ticket = await escalate(slack)
    number = f"FL-{ticket.number}"
    assert ticket.destination == f"slack:{L2}"
    assert number in slack.last_dm(ANN)
    # The card is the parent message in the L2 channel, with its controls.
    card = slack.card()
    text = blocks_text(card["blocks"])
    assert number in text and "I forgot my password" in text and "0x42" in text
    assert "Take" in str(card["blocks"])
    # Pressed DM buttons are gone (replaced by the choice).
    pressed = [c for c in slack.api.calls_to("chat.update") if c.params["channel"] == "D" + ANN]
    assert pressed and all(b["type"] != "actions" for c in pressed for b in c.params["blocks"])

    await slack.card_action(BOB, "Take")
    assert "Bob Agent" in slack.last_dm(ANN)
    assert "Bob Agent" in blocks_text(slack.card()["blocks"])  # chat.update: owner shown
    assert "Ask customer" in str(slack.card()["blocks"])

    await slack.reply(BOB, "Clear the cookies, please")
    assert "Bob Agent: Clear the cookies, please" in slack.last_dm(ANN)
    before = len(slack.dm_calls(ANN))
    await slack.reply(BOB, "//check the auth logs first")
    assert len(slack.dm_calls(ANN)) == before, "an internal note reached the user"

    await slack.dm(ANN, "Done, still the same")
    assert any("Done, still the same" in t for t in slack.thread_texts())

    await slack.card_action(BOB, "Resolve")
    assert "rate" in slack.last_dm(ANN)
    await slack.press(ANN, "5")
    assert "Thank you" in slack.last_dm(ANN)
    assert "5/5" in blocks_text(slack.card()["blocks"])
    assert "Reopen" in str(slack.card()["blocks"])
    async with slack.app.db.transaction() as s:
        tk = await s.get(Ticket, ticket.id)
        notes = (
            (await s.execute(select(TicketMessage).where(TicketMessage.direction == "note")))
            .scalars()
            .all()
        )
    assert tk is not None and tk.status == "resolved" and tk.csat == 5
    assert [n.text for n in notes] == ["check the auth logs first"]
