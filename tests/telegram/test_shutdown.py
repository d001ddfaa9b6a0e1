"""SIGTERM to `firstline run` while a reply is on its way to Telegram.

The process stops its intake, lets the call in flight finish and records it, delivers the
replies its finished events queued behind that call, and exits 0; the next start re-sends
nothing.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.storage.db import Database
from bot.storage.models import Outbox
from tests.conftest import free_port
from tests.fakes.telegram_api import FakeTelegramAPI
from tests.telegram.conftest import L2
from tests.telegram.test_restart import FIRSTLINE


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(FIRSTLINE), "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def _exit_code(proc: subprocess.Popen[bytes], within: float = 30) -> int:
    """Wait for the process without blocking the loop the fake Bot API runs on."""
    return await asyncio.to_thread(proc.wait, within)


@pytest.mark.skipif(not FIRSTLINE.exists(), reason="the firstline script is not installed")
async def test_sigterm_finishes_the_call_in_flight_and_the_replies_queued_behind_it(
    fake: FakeTelegramAPI, tmp_path: Path, process_env: dict[str, str]
) -> None:
    fake.add_group(L2, "L2 desk")
    env = {
        **process_env,
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_URL": fake.url,
        "TELEGRAM_L2_CHAT_ID": str(L2),
        "FIRSTLINE_HTTP_HOST": "127.0.0.1",
        "FIRSTLINE_HTTP_PORT": str(free_port()),
        "FIRSTLINE_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "firstline.log"
    ann = fake.user(5001, "Ann")
    greeting = fake.hold_next("sendMessage", chat_id=ann.id)

    proc = _start(env, log)
    try:
        await fake.wait_for(lambda: fake.called("getUpdates"), within=60, what="polling")
        fake.send_text(ann, "/start")
        await asyncio.wait_for(greeting.arrived.wait(), 30)  # the greeting is on its way
        fake.send_text(ann, "I forgot my password")
        question = fake.updates[-1]["update_id"]
        # Handled and committed (the answer queued behind the greeting) once confirmed.
        await fake.wait_for(lambda: fake.confirmed > question, within=30, what="the question")
        assert not fake.sent(ann.id)

        proc.send_signal(signal.SIGTERM)
        await fake.wait_for(lambda: "shutting down" in log.read_text(), what="the shutdown")
        assert proc.poll() is None, log.read_text()
        greeting.release.set()
        assert await _exit_code(proc) == 0, log.read_text()
    finally:
        greeting.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The greeting, then the KB answer and its "did this help?" prompt.
    first_run = fake.texts(ann.id)
    assert first_run[0].startswith("Hi, Ann!") and len(first_run) == 3, first_run
    assert "Didn't help" in str(fake.sent(ann.id)[-1].buttons()), first_run
    assert "Traceback" not in log.read_text()
    db = Database(env["DATABASE_URL"])
    try:
        async with db.transaction() as s:
            statuses = await s.execute(select(Outbox.status).where(Outbox.target == str(ann.id)))
            assert Counter(statuses.scalars()) == {"sent": 3}
    finally:
        await db.dispose()

    # The next start re-sends nothing: Ann's next message gets only its own reply.
    proc = _start(env, log)
    try:
        fake.send_text(ann, "/start")
        # A row left over for Ann would go first: her queue is sent oldest first.
        await fake.wait_for(
            lambda: len(fake.texts(ann.id)) > len(first_run), within=60, what="a reply"
        )
        proc.send_signal(signal.SIGTERM)
        assert await _exit_code(proc) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert fake.texts(ann.id) == [*first_run, first_run[0]]
