"""Operations: /healthz, /metrics, JSON logs with ids, export."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.app import App
from bot.export import export_lines
from bot.logs import setup_logging
from handlers.memory import MemoryChannel
from handlers.server import build_web
from tests.test_engine_flow import _escalate


async def test_healthz_and_metrics(mem: MemoryChannel, app: App) -> None:
    ticket = await _escalate(mem)
    await mem.agent("agent_bob", "claim", f"FL-{ticket.number}")
    async with TestClient(TestServer(build_web(app))) as client:
        health = await client.get("/healthz")
        assert health.status == 200
        body = await health.json()
        assert body["status"] == "ok" and body["outbox"] == {"counts": {}, "lag_seconds": 0.0}
        resp = await client.get("/metrics")
        assert resp.status == 200
        text = await resp.text()
    assert 'firstline_open_tickets{status="in_progress"} 1.0' in text
    assert (
        'firstline_inbound_events_total{channel="memory",kind="message",outcome="handled"}' in text
    )
    assert "firstline_dialog_turns_total" in text
    assert 'firstline_deliveries_total{channel="memory",outcome="sent"}' in text
    assert "firstline_outbox_lag_seconds 0.0" in text
    assert 'firstline_sla_notifications{kind="sla_breach"} 0.0' in text


async def test_json_logs_carry_the_event_ids(
    mem: MemoryChannel, app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    app.settings.log.format = "json"
    setup_logging(app.settings, stream)

    def boom(*_a: object, **_k: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.kb, "search", boom)
    try:
        await mem.say("ann", "hello", event_id="evt-42")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    failure = next(line for line in lines if "failed to handle" in line["msg"])
    assert failure["event_id"] == "evt-42" and failure["channel"] == "memory"
    assert isinstance(failure["conversation"], int)
    assert failure["level"] == "ERROR" and "RuntimeError: boom" in failure["exc"]


async def test_export_writes_tickets_and_events_as_json_lines(mem: MemoryChannel, app: App) -> None:
    ticket = await _escalate(mem)
    lines = [json.loads(line) async for line in export_lines(app.db)]
    tickets = [x for x in lines if x["type"] == "ticket"]
    events = [x for x in lines if x["type"] == "event"]
    assert [t["number"] for t in tickets] == [f"FL-{ticket.number}"]
    assert tickets[0]["status"] == "open" and tickets[0]["tier"] == "free"
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "conversation_started" and "ticket_opened" in kinds
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


async def test_healthz_says_stopping_during_shutdown(app: App) -> None:
    stopping = asyncio.Event()
    async with TestClient(TestServer(build_web(app, stopping=stopping))) as client:
        assert (await client.get("/healthz")).status == 200
        stopping.set()
        resp = await client.get("/healthz")
        assert resp.status == 503 and (await resp.json())["status"] == "stopping"
